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


def _progress(args: argparse.Namespace) -> int:
    from grader.learner import format_progress, progress

    print(format_progress(progress()))
    return 0


def _check(args: argparse.Namespace) -> int:
    from grader.learner import check

    code, text = check(args.module)
    print(text)
    return code


def _hint(args: argparse.Namespace) -> int:
    from grader.learner import hint

    print(hint(args.module, args.level))
    return 0


def _watch(args: argparse.Namespace) -> int:
    from grader.learner import watch

    return watch(args.module)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmlab", description="LLM Lab: build the pieces of an LLM, graded by pytest.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    stubs = commands.add_parser("stubs", help="regenerate exercises/ stubs from solutions/ (maintainers)")
    stubs.add_argument("--check", action="store_true", help="only report stubs that are out of date; exit 1 if any")
    stubs.set_defaults(run=_stubs)

    progress = commands.add_parser("progress", help="where you stand: every module's public tests, in one quick run")
    progress.set_defaults(run=_progress)

    check = commands.add_parser("check", help="run one module's public tests, showing only what to fix")
    check.add_argument("module", help="e.g. 01_rmsnorm")
    check.set_defaults(run=_check)

    hint = commands.add_parser("hint", help="a hint for a module, gentle first; repeat for the next one")
    hint.add_argument("module", help="e.g. 01_rmsnorm")
    hint.add_argument("--level", type=int, help="show hint number LEVEL (1 = gentlest)")
    hint.set_defaults(run=_hint)

    watch = commands.add_parser("watch", help="re-run a module's public tests each time you save its file")
    watch.add_argument("module", nargs="?", help="e.g. 01_rmsnorm (default: the module watched last)")
    watch.set_defaults(run=_watch)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
