"""The learner's command line: progress, check, hint and watch, on a temporary copy of the course."""

from __future__ import annotations

import re
import shutil

import pytest

from grader.cli import main
from grader.harness.course import REPO_ROOT, existing_modules
from grader.harness.learner import check, format_progress, hint, hints_of, progress, watch


@pytest.fixture
def course(tmp_path):
    """A learner's course folder holding module 01 as handed out (the stub and its public tests)."""
    shutil.copytree(REPO_ROOT / "exercises" / "01_rmsnorm", tmp_path / "exercises" / "01_rmsnorm")
    (tmp_path / "pytest.ini").write_text("[pytest]\naddopts = --import-mode=importlib -p no:cacheprovider\n")
    return tmp_path


def write_learner_file(course, source: str) -> None:
    (course / "exercises" / "01_rmsnorm" / "rmsnorm.py").write_text(source)


def reference() -> str:
    return (REPO_ROOT / "solutions" / "01_rmsnorm" / "rmsnorm.py").read_text()


def test_progress_goes_from_not_started_to_failing_to_passing(course):
    [row] = progress(course)
    assert (row.status, row.passed) == ("not started", 0)
    assert "docs/01_rmsnorm.md" in row.next_step

    write_learner_file(course, reference().replace("x32.pow(2).mean(", "x32.pow(2).sum("))
    [row] = progress(course)
    assert row.status == "failing" and 0 < row.passed < row.total

    write_learner_file(course, reference())
    [row] = progress(course)
    assert (row.status, row.passed) == ("passing", row.total)
    assert "public tests pass" in row.next_step and "done" not in row.next_step  # the hidden suite checks more
    assert "1 of 1 modules pass their public tests" in format_progress([row])


def test_check_shows_teaching_messages_not_tracebacks(course):
    code, text = check("01_rmsnorm", course)
    assert code == 1
    assert "rms_norm in exercises/01_rmsnorm/rmsnorm.py is not implemented yet." in text
    assert "Traceback" not in text

    write_learner_file(course, reference().replace("x32 = x.to(torch.float32)", "x32 = x.to(torch.float32)\n    x32 = x32 - x32.mean(-1, keepdim=True)"))
    code, text = check("01_rmsnorm", course)
    assert code == 1
    assert "Likely mistake: you subtracted the mean" in text
    assert "test_rmsnorm.py:" not in text  # no traceback lines, only the messages

    write_learner_file(course, reference())
    code, text = check("01_rmsnorm", course)
    assert code == 0 and "The public tests pass; the grader's hidden tests check more" in text


def test_hints_go_one_level_further_each_time_and_remember_it(course):
    first = hint("01_rmsnorm", None, course)
    assert first.startswith("Hint 1 for 01_rmsnorm") and "hint 1 of 3" in first
    assert hint("01_rmsnorm", None, course).startswith("Hint 2")
    assert hint("01_rmsnorm", 1, course).startswith("Hint 1")
    assert hint("01_rmsnorm", None, course).startswith("Hint 3")  # the state survived the explicit level
    assert "the last one" in hint("01_rmsnorm", None, course)


def test_a_level_beyond_the_hints_says_how_many_there_are(course):
    assert hint("01_rmsnorm", 9, course) == (
        "01_rmsnorm has 3 hints: ask for one with --level 1 to 3 (or `llmlab hint 01_rmsnorm` for the next one)."
    )
    assert "has 3 hints" in hint("01_rmsnorm", 0, course)


@pytest.mark.parametrize("name", ["01", "1", "rmsnorm", "01_rmsnorm", "1_rmsnorm", "RMSNorm"])
def test_the_commands_accept_every_short_name_of_a_module(course, monkeypatch, capsys, name):
    monkeypatch.chdir(course)
    assert main(["hint", name]) == 0
    assert capsys.readouterr().out.startswith("Hint 1 for 01_rmsnorm")


def test_an_unknown_module_is_one_line_naming_the_closest(course, monkeypatch, capsys):
    monkeypatch.chdir(course)
    for command in (["check", "rmsnrom"], ["hint", "rmsnrom"], ["watch", "rmsnrom"]):
        assert main(command) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err == "llmlab: no module 'rmsnrom': did you mean 01_rmsnorm? (`llmlab progress` lists the modules)\n"


def test_check_accepts_a_module_number(course, monkeypatch, capsys):
    monkeypatch.chdir(course)
    assert main(["check", "01"]) == 1
    assert "rms_norm in exercises/01_rmsnorm/rmsnorm.py is not implemented yet." in capsys.readouterr().out


CODE_SPAN = re.compile(r"`([^`]+)`")


@pytest.mark.parametrize("module", existing_modules(), ids=lambda m: m.name)
def test_the_last_hint_is_a_nudge_not_the_solution(module):
    """No code span of the last hint is a statement of the reference's solution regions (hint 3 once gave
    `trainable_parameters` verbatim)."""
    reference = (REPO_ROOT / "solutions" / module.name / module.file).read_text()
    regions = re.findall(r"### BEGIN SOLUTION\n(.*?)### END SOLUTION", reference, flags=re.S)
    solution = {" ".join(line.split()) for region in regions for line in region.splitlines()}
    solution = {line.removeprefix("return ") for line in solution if len(line) >= 16 and not line.startswith("#")}
    last = hints_of(module, REPO_ROOT)[-1]
    given = [span for span in CODE_SPAN.findall(last) if " ".join(span.split()).removeprefix("return ") in solution]
    assert not given, f"the last hint of {module.name} gives solution code: {given}"


def test_watch_runs_on_start_and_remembers_the_module(course, capsys):
    assert watch("01_rmsnorm", course, max_runs=1) == 0
    total = int(re.search(r"01_rmsnorm: 0 of (\d+) tests pass", capsys.readouterr().out).group(1))
    write_learner_file(course, reference())
    watch(None, course, max_runs=1)  # a restart: no module named, the last one is watched again
    out = capsys.readouterr().out
    assert f"Last time: 0 of {total} tests of 01_rmsnorm passed." in out
    assert f"{total} of {total} tests pass" in out
