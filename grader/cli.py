"""`llmlab`: the course's command line."""

from __future__ import annotations

import argparse
import sys


def _stubs(args: argparse.Namespace) -> int:
    from grader.stubs import stale_stubs, write_stubs

    if args.check:
        stale = stale_stubs()
        for module in stale:
            print(f"stale: exercises/{module.name}/{module.file} (run `llmlab stubs`)")
        return 1 if stale else 0
    for path in write_stubs():
        print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmlab", description="LLM Lab: build the pieces of an LLM, graded by pytest.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    stubs = commands.add_parser("stubs", help="regenerate exercises/ stubs from solutions/ (maintainers)")
    stubs.add_argument("--check", action="store_true", help="only report stubs that are out of date; exit 1 if any")
    stubs.set_defaults(run=_stubs)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
