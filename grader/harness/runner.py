"""Run test suites in this process and collect one result per test (the meta-suite, `progress`, the grader).

In-process runs pay for `import torch` and the libraries once, however many suites and mutants follow.
"""

from __future__ import annotations

import contextlib
import gc
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from grader.harness.loader import clear_cache


@dataclass
class TestResult:
    __test__ = False  # not a pytest test class, whatever its name
    nodeid: str
    outcome: str  # "passed", "failed", "error" (setup/teardown/collection), "skipped"
    points: float | None = None
    message: str = ""
    duration: float = 0.0

    @property
    def name(self) -> str:
        return self.nodeid.split("::", 1)[-1]


@dataclass
class SuiteResult:
    exit_code: int
    results: list[TestResult] = field(default_factory=list)
    output: str = ""

    def with_outcome(self, *outcomes: str) -> list[TestResult]:
        return [r for r in self.results if r.outcome in outcomes]

    @property
    def passed(self) -> list[TestResult]:
        return self.with_outcome("passed")

    @property
    def not_passed(self) -> list[TestResult]:
        return self.with_outcome("failed", "error")


class _Collector:
    def __init__(self) -> None:
        self.results: dict[str, TestResult] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        points = dict(report.user_properties).get("points")
        result = self.results.setdefault(report.nodeid, TestResult(report.nodeid, "passed", points))
        result.duration += report.duration
        if report.failed:
            if result.outcome == "passed":  # the first failure wins: a teardown error after a failure stays a failure
                result.outcome = "failed" if report.when == "call" else "error"
                result.message = report.longreprtext
            for title, content in report.sections:
                if title == "next step":
                    result.message += f"\n{content}"
        elif report.skipped and result.outcome == "passed":
            result.outcome = "skipped"
            result.message = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self.results[report.nodeid] = TestResult(report.nodeid, "error", None, report.longreprtext)


@contextlib.contextmanager
def older_objects_frozen():
    """Keep the objects that exist before a run out of the garbage collector's sight while it runs.

    pytest calls `gc.collect()` as each session ends (to report exceptions raised in finalizers). After
    torch and transformers are imported, a full collection walks millions of objects: seconds per session,
    paid again by every mutant the meta-suite runs. Frozen, the older objects are skipped and the session's
    own garbage is still collected; unfrozen afterwards, they are collected as usual later. Left alone when
    the caller has frozen objects itself (its freeze is not ours to undo).
    """
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def run_suite(
    paths: Sequence[str | Path], impl: str | Path, extra_args: Sequence[str] = (), quiet: bool = True
) -> SuiteResult:
    """Run pytest on `paths` against the implementation root `impl`, in this process."""
    clear_cache()
    collector = _Collector()
    args = [*map(str, paths), "--impl", str(impl), "-p", "no:cacheprovider", "--tb=short", *extra_args]
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer) if quiet else contextlib.nullcontext(), older_objects_frozen():
        exit_code = pytest.main(args, plugins=[collector])
    return SuiteResult(int(exit_code), list(collector.results.values()), buffer.getvalue())
