"""Fixtures of the project's own suite: suite runs are cached per (suite, implementation root)."""

from __future__ import annotations

from pathlib import Path

import pytest

from grader.harness.course import REPO_ROOT, Module
from grader.harness.runner import SuiteResult, run_suite

pytest_plugins = ["pytester"]


def suite_dir(module: Module, kind: str) -> Path:
    return REPO_ROOT / ("exercises" if kind == "public" else "grader/hidden") / module.name


class SuiteRuns:
    """Runs a module's public or hidden suite against a root, once per session for the fixed roots."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str, str], SuiteResult] = {}

    def run(self, module: Module, kind: str, root: Path | str, *extra: str, cache: bool = True) -> SuiteResult:
        key = (module.name, kind, str(root))
        if cache and key in self._cache and not extra:
            return self._cache[key]
        result = run_suite([suite_dir(module, kind)], root, extra)
        if cache and not extra:
            self._cache[key] = result
        return result


@pytest.fixture(scope="session")
def suites() -> SuiteRuns:
    return SuiteRuns()
