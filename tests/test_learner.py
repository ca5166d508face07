"""The learner's command line: progress, check, hint and watch, on a temporary copy of the course."""

from __future__ import annotations

import shutil

import pytest

from grader.harness.course import REPO_ROOT
from grader.harness.learner import check, format_progress, hint, progress, watch


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
    assert "1 of 1 modules done" in format_progress([row])


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
    assert code == 0 and "Well done" in text


def test_hints_go_one_level_further_each_time_and_remember_it(course):
    first = hint("01_rmsnorm", None, course)
    assert first.startswith("Hint 1 for 01_rmsnorm") and "hint 1 of 3" in first
    assert hint("01_rmsnorm", None, course).startswith("Hint 2")
    assert hint("01_rmsnorm", 1, course).startswith("Hint 1")
    assert hint("01_rmsnorm", None, course).startswith("Hint 3")  # the state survived the explicit level
    assert "the last one" in hint("01_rmsnorm", None, course)


def test_watch_runs_on_start_and_remembers_the_module(course, capsys):
    assert watch("01_rmsnorm", course, max_runs=1) == 0
    assert "0 of 6 tests pass" in capsys.readouterr().out
    write_learner_file(course, reference())
    watch(None, course, max_runs=1)  # a restart: no module named, the last one is watched again
    out = capsys.readouterr().out
    assert "Last time: 0 of 6 tests of 01_rmsnorm passed." in out
    assert "6 of 6 tests pass" in out
