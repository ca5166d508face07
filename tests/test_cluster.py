"""`llmlab grade --scheduler ADDRESS`: a class graded on a Dask cluster gets the grades of a local run.

A real `dask.distributed.LocalCluster` of two worker processes (one thread each, as the instructor guide starts
them) grades part of the demo class; the judge, in this process, writes the gradebook. Module 01 only.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from grader.harness.course import REPO_ROOT, get_module
from grader.judge import cluster
from grader.judge.grade import Options, collect_expected, grade_class

pytest.importorskip("distributed", reason="the `cluster` extra (dask[distributed]) is not installed")

MODULE = get_module("01_rmsnorm")
EXAMPLES = REPO_ROOT / "examples" / "submissions"
LEARNERS = ["alice", "bob", "carol"]  # the reference, a partly right one, a syntax error


def _grades(out) -> dict:
    """Every learner's outcome and points per test, as grades.json holds them (messages and times aside)."""
    rows = json.loads((out / "grades.json").read_text())
    return {(r["learner"], r["test"]): (r["outcome"], r["points"], r["max_points"]) for r in rows}


@pytest.fixture(scope="module")
def small_class(tmp_path_factory):
    folder = tmp_path_factory.mktemp("class") / "class"
    folder.mkdir()
    for name in LEARNERS:
        source = EXAMPLES / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, folder / name)
    return folder


@pytest.fixture(scope="module")
def local_cluster():
    from dask.distributed import LocalCluster

    # no dashboard: its fixed port would clash with any other cluster on the machine
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as local:
        yield local


def test_a_class_graded_on_a_cluster_gets_the_grades_of_a_local_run(small_class, local_cluster, tmp_path):
    """The same class, seed and limits: the cluster's gradebook equals the local one, test by test."""
    modules = [MODULE]
    here = grade_class(small_class, Options(out=tmp_path / "local", modules=modules, jobs=2, timeout=4, memory_mb=512,
                                            seed=1234), progress=False)
    there = grade_class(small_class, Options(out=tmp_path / "cluster", modules=modules, timeout=4, memory_mb=512, seed=1234,
                                             scheduler=local_cluster.scheduler_address), progress=False)
    assert [r.learner for r in there] == [r.learner for r in here] == ["alice", "bob", "carol"]
    assert {r.learner: r.total for r in there} == {r.learner: r.total for r in here}
    assert _grades(tmp_path / "cluster") == _grades(tmp_path / "local")
    assert 0 < here[1].total < here[0].total == here[0].max_total  # bob partly right, alice full marks
    assert (tmp_path / "cluster" / "gradebook.csv").read_text() == (tmp_path / "local" / "gradebook.csv").read_text()
    for learner in LEARNERS:
        assert (tmp_path / "cluster" / learner / "feedback.md").is_file()

    # resuming: a second cluster run finds every record current and sends no task
    before = {p.parent.name: p.stat().st_mtime_ns for p in (tmp_path / "cluster").glob("*/record.json")}
    again = grade_class(small_class, Options(out=tmp_path / "cluster", modules=modules, timeout=4, memory_mb=512, seed=1234,
                                             scheduler="tcp://127.0.0.1:1"), progress=False)  # unreachable: never contacted
    assert {r.learner: r.total for r in again} == {r.learner: r.total for r in here}
    assert {p.parent.name: p.stat().st_mtime_ns for p in (tmp_path / "cluster").glob("*/record.json")} == before


def test_a_worker_with_other_hidden_suites_refuses_to_grade(small_class, tmp_path):
    """A task checks that its worker's hidden suites are the judge's before grading (the fingerprint)."""
    from grader.judge.submission import read_submission

    options = Options(out=tmp_path, modules=[MODULE], seed=1)
    submission = read_submission("alice", small_class / "alice")
    with pytest.raises(RuntimeError, match="differ from the judge's"):
        cluster.grade_task(submission, collect_expected([MODULE]), options, "not-the-judges-fingerprint")
    assert cluster.suites_fingerprint(options) == cluster.suites_fingerprint(options)


def test_grading_without_a_scheduler_imports_no_dask():
    """`llmlab grade` without --scheduler never imports dask (checked in a fresh interpreter)."""
    code = ("import sys, grader.cli, grader.judge.grade; "
            "grader.cli.build_parser().parse_args(['grade', 'x', '--out', 'y']); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')))")
    out = subprocess.check_output([sys.executable, "-c", code], cwd=REPO_ROOT, text=True)
    assert out.strip() == "[]", out
