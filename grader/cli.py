"""`llmlab`: the course's command line."""

from __future__ import annotations

import argparse
import sys


def _stubs(args: argparse.Namespace) -> int:
    from grader.publish.stubs import StubsWouldOverwrite, stale_stubs, write_stubs

    if args.check:
        stale = stale_stubs()
        for module in stale:
            print(f"stale: exercises/{module.name}/{module.file} (run `llmlab stubs`)")
        return 1 if stale else 0
    try:
        written = write_stubs(force=args.force)
    except StubsWouldOverwrite as error:
        print("llmlab stubs: nothing written. These files differ from the stub `llmlab stubs` last wrote "
              "(someone's work?):", file=sys.stderr)
        for path in error.paths:
            print(f"  {path}", file=sys.stderr)
        print("Move them aside, or run `llmlab stubs --force` to replace them with the stubs.", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path}")
    return 0


def _module_or_exit(name: str):
    """The module `name` designates (03, 3, lora, 03_lora, ...), or None after one line on stderr."""
    from grader.harness.course import UnknownModule, resolve_module

    try:
        return resolve_module(name)
    except UnknownModule as error:
        print(f"llmlab: {error}", file=sys.stderr)
        return None


def _progress(args: argparse.Namespace) -> int:
    from grader.harness.learner import format_progress, progress

    print(format_progress(progress()))
    return 0


def _check(args: argparse.Namespace) -> int:
    from grader.harness.learner import check

    module = _module_or_exit(args.module)
    if module is None:
        return 2
    code, text = check(module.name)
    print(text)
    return code


def _hint(args: argparse.Namespace) -> int:
    from grader.harness.learner import hint

    module = _module_or_exit(args.module)
    if module is None:
        return 2
    print(hint(module.name, args.level))
    return 0


def _watch(args: argparse.Namespace) -> int:
    from grader.harness.learner import watch

    module = _module_or_exit(args.module) if args.module else None
    if args.module and module is None:
        return 2
    return watch(module.name if module else None)


def _release(args: argparse.Namespace) -> int:
    from grader.publish.release import release

    for path in release(args.out, make_zip=args.zip):
        print(f"wrote {path}")
    return 0


def _nbgrader(args: argparse.Namespace) -> int:
    from grader.publish.nbgrader_course import build_course

    print(f"wrote {build_course(args.out)}")
    return 0


def _grade(args: argparse.Namespace) -> int:
    from pathlib import Path

    from grader.judge.grade import Options, class_seed, grade_class, graded_modules
    from grader.judge.report import summary_table

    modules = graded_modules([m for m in args.modules.split(",") if m] if args.modules else None)
    if not modules:
        print("no module has a hidden suite (grader/hidden/NN_name/) to grade with", file=sys.stderr)
        return 2
    out = Path(args.out)
    options = Options(out=out, modules=modules, jobs=args.jobs, lanes=args.lanes, timeout=args.timeout, memory_mb=args.memory,
                      force=args.force, seed=class_seed(out, args.seed), scheduler=args.scheduler or "")
    records = grade_class(Path(args.path), options, progress=not args.quiet)
    print(summary_table(records, modules))
    print(f"\nwrote {out}/gradebook.csv, {out}/grades.json and {out}/<learner>/{{results.json,feedback.md}}")
    return 0


def _gradescope(args: argparse.Namespace) -> int:
    from pathlib import Path

    from grader.judge import gradescope

    if args.action == "build":
        path = gradescope.build(Path(args.target), timeout=args.timeout, memory_mb=args.memory)
        print(f"wrote {path}: upload it as the assignment's autograder (Gradescope runs setup.sh, then run_autograder)")
        return 0
    return gradescope.run(Path(args.target) if args.target else None)


# The commands by audience; the help lists them in these groups. The learner's handout ships only the
# harness wing, so there the instructors' and maintainers' commands are not offered at all.
LEARNER_COMMANDS = ("progress", "check", "hint", "watch")
INSTRUCTOR_COMMANDS = ("grade", "gradescope", "release", "nbgrader")
MAINTAINER_COMMANDS = ("stubs",)


def _has_wing(wing: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(f"grader.{wing}") is not None


def build_parser() -> argparse.ArgumentParser:
    instructors = _has_wing("judge") and _has_wing("publish")
    groups = [("learner commands", LEARNER_COMMANDS)]
    if instructors:
        groups += [("instructor commands", INSTRUCTOR_COMMANDS), ("maintainer commands", MAINTAINER_COMMANDS)]
    parser = argparse.ArgumentParser(prog="llmlab", description="LLM Lab: build the pieces of an LLM, graded by pytest.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     help="one of the commands below; `llmlab COMMAND -h` for its options")
    helps: dict[str, str] = {}

    def add(name: str, text: str) -> argparse.ArgumentParser:
        helps[name] = text
        return commands.add_parser(name, description=text)

    progress = add("progress", "where you stand: every module's public tests, in one quick run")
    progress.set_defaults(run=_progress)

    check = add("check", "run one module's public tests, showing only what to fix")
    check.add_argument("module", help="03_lora, 03, 3 or lora")
    check.set_defaults(run=_check)

    hint = add("hint", "a hint for a module, gentle first; repeat for the next one")
    hint.add_argument("module", help="03_lora, 03, 3 or lora")
    hint.add_argument("--level", type=int, help="show hint number LEVEL (1 = gentlest)")
    hint.set_defaults(run=_hint)

    watch = add("watch", "re-run a module's public tests each time you save its file")
    watch.add_argument("module", nargs="?", help="03_lora, 03, 3 or lora (default: the module watched last)")
    watch.set_defaults(run=_watch)

    if instructors:
        grade = add("grade", "grade submissions with the hidden suites, each in a sandbox")
        grade.add_argument("path", help="one submission (a folder laid out like exercises/, or a .zip of one) or a folder of them, named by learner id")
        grade.add_argument("--out", required=True, help="folder for gradebook.csv, grades.json and one folder per learner")
        grade.add_argument("--modules", default="", help="comma-separated modules to grade (default: every module with a hidden suite)")
        grade.add_argument("--jobs", type=int, default=1, help="submissions graded in parallel (default 1)")
        grade.add_argument("--lanes", type=int, default=0,
                           help="modules of one submission graded in parallel, each under its own uid (default: the cores divided by --jobs)")
        grade.add_argument("--timeout", type=float, default=10.0, help="seconds each test may take (default 10)")
        grade.add_argument("--memory", type=int, default=2048, help="MB of memory each test may allocate (default 2048)")
        grade.add_argument("--force", action="store_true", help="grade again learners already graded in --out")
        grade.add_argument("--seed", type=int, default=None, help="base seed of the hidden inputs (default: a secret one kept in OUT/.seed)")
        grade.add_argument("--quiet", action="store_true", help="no progress bar")
        grade.add_argument("--scheduler", metavar="ADDRESS", default=None,
                           help="grade on a Dask cluster (e.g. tcp://10.0.0.5:8786), one task per submission; needs the `cluster` extra")
        grade.set_defaults(run=_grade)

        scope = add("gradescope", "the Gradescope autograder bundle")
        scope.add_argument("action", choices=["build", "run"], help="build: write the bundle zip; run: what run_autograder calls")
        scope.add_argument("target", nargs="?", default=None, help="build: OUT.zip; run: the autograder root (default /autograder)")
        scope.add_argument("--timeout", type=float, default=30.0, help="build: seconds each test may take on Gradescope (default 30)")
        scope.add_argument("--memory", type=int, default=2048, help="build: MB each test may allocate (default 2048)")
        scope.set_defaults(run=_gradescope)

        release = add("release", "build the learner's handout: stubs, public tests, docs, harness")
        release.add_argument("out", help="a new folder")
        release.add_argument("--zip", action="store_true", help="also write OUT.zip")
        release.set_defaults(run=_release)

        nbgrader = add("nbgrader", "build an nbgrader course: one notebook per module")
        nbgrader.add_argument("out", help="a new folder: the nbgrader course root")
        nbgrader.set_defaults(run=_nbgrader)

        stubs = add("stubs", "regenerate exercises/ stubs from solutions/ (never over edited files)")
        stubs.add_argument("--check", action="store_true", help="only report stubs that are out of date; exit 1 if any")
        stubs.add_argument("--force", action="store_true", help="replace stubs even where they were edited since written")
        stubs.set_defaults(run=_stubs)

    width = max(len(name) for name in helps) + 2
    parser.epilog = "\n\n".join(
        f"{title}:\n" + "\n".join(f"  {name:<{width}}{helps[name]}" for name in names) for title, names in groups
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in INSTRUCTOR_COMMANDS + MAINTAINER_COMMANDS and not (_has_wing("judge") and _has_wing("publish")):
        print(f"llmlab {argv[0]}: not available here (an instructors' command; this copy of the course is the learner's)")
        return 2
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except ModuleNotFoundError as error:  # the learner's handout ships without the instructors' commands
        if (error.name or "").startswith("grader."):
            print(f"llmlab {args.command}: not available here (instructors' command; {error.name} is not in this copy)")
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
