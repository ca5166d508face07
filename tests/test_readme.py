"""The README's demo: the command it shows is the command that prints the table it shows.

The demo class (`examples/submissions/`) handed in module 01 only. The fast test parses the README's
command with the CLI's own parser and checks that it grades exactly the README table's modules and
learners; the end-to-end test runs the command as written and compares the table it prints.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

import pytest

from grader.cli import build_parser
from grader.harness.course import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()


def demo_command() -> list[str]:
    """The README's `llmlab grade examples/submissions ...` line, as argv (comment dropped)."""
    match = re.search(r"^llmlab (grade examples/submissions[^#\n]*)", README, flags=re.MULTILINE)
    assert match, "the README shows no `llmlab grade examples/submissions` command"
    return shlex.split(match.group(1))


def demo_table() -> list[list[str]]:
    """The rows of the table the README says the demo prints (header first, the dashes left out)."""
    block = re.search(r"^```\n(learner .*?)\n\n", README, flags=re.MULTILINE | re.DOTALL)
    assert block, "the README shows no output of the demo"
    rows = [line.split() for line in block.group(1).splitlines()]
    return [row for row in rows if not set("".join(row)) <= {"-"}]


def test_the_readme_demo_grades_the_modules_and_learners_of_its_table():
    from grader.judge.grade import graded_modules
    from grader.judge.submission import find_submissions

    args = build_parser().parse_args(demo_command())
    modules = graded_modules([m for m in args.modules.split(",") if m] if args.modules else None)
    header, *rows = demo_table()
    assert header[: len(modules) + 1] == ["learner", *(m.name for m in modules)], (
        f"the README's command grades {[m.name for m in modules]}, its table shows {header}"
    )
    found, _ = find_submissions(REPO_ROOT / args.path)
    assert sorted(learner for learner, _ in found) == [row[0] for row in rows]


@pytest.mark.slow
def test_the_readme_demo_prints_the_readme_table(tmp_path):
    """Run as written (the grades go to a temporary folder): same columns, learners and maxima as the README.

    Scores are compared where they cannot depend on the machine's load: the syntax error and the endless
    loop score 0, the others score points (a loaded machine can stop one test of alice's at its timeout).
    """
    argv = demo_command()
    argv[argv.index("--out") + 1] = str(tmp_path / "grades")
    run = subprocess.run([sys.executable, "-m", "grader.cli", *argv, "--quiet"], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    printed = [line.split() for line in run.stdout.split("\n\n")[0].splitlines()]
    printed = [row for row in printed if not set("".join(row)) <= {"-"}]
    expected = demo_table()
    assert printed[0] == expected[0]
    assert [row[0] for row in printed] == [row[0] for row in expected]
    maxima = lambda rows: [[cell.split("/")[1] for cell in row[1:] if "/" in cell] for row in rows[1:]]  # noqa: E731
    assert maxima(printed) == maxima(expected), "the README's maximum points differ from the hidden suite's"
    score = {row[0]: float(row[-2].split("/")[0]) for row in printed[1:]}
    assert score["carol"] == score["dave"] == 0
    assert min(score["alice"], score["bob"], score["erin"]) > 0
    assert all(line in run.stdout for line in ("learners: 5", "not full marks, by module: 01_rmsnorm:"))
