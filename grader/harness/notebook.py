"""Run the course's pytest-style tests inside a Jupyter kernel, against the code the notebook defines.

The nbgrader course (`llmlab nbgrader`) puts each module's tests in notebook cells. Those tests are the
same files as in the repository: they take the `impl` and `device` fixtures, are parametrized, carry
`points` markers and use `grader.harness.checks`. Rather than re-implement pytest, a test cell runs real pytest
in the kernel's process, with `impl` bound to the notebook's globals:

    %load_ext grader.harness.notebook                       # once, in the notebook's setup cell

    %%llmlab_tests 01_rmsnorm/test_rmsnorm.py       # a test cell: the rest is the test file's source
    import torch
    from grader.harness.checks import assert_close
    def test_rows_have_unit_rms(impl): ...

The cell's source is written to a temporary `01_rmsnorm/test_rmsnorm.py` (same names as in the
repository, so the plugin's per-test seeds, devices and points are those of `pytest grader/hidden/...`)
next to a conftest whose `impl` fixture returns the notebook's namespace. Each cell's tests live in their
own module, so a test helper never overwrites a learner's name.

What the cell shows, for nbgrader's autograder:
- every test passes: a one-line summary on stdout (full credit);
- none passes: `TestsFailed` (an AssertionError) whose text is the teaching messages (no credit);
- some pass (hidden tests with points): the messages on stdout and, as the cell's value, the points
  earned, which nbgrader reads as partial credit. Points of a test function are shared by its
  parametrized cases, as in the pytest grader.
Nothing is written to stderr: nbgrader gives 0 to a test cell with stderr output.

The kernel needs the `llmlab` package importable (the learner's handout from `llmlab release`, or the
repository, installed with pip); hidden tests also need the libraries they check against.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import shutil
import tempfile
from pathlib import Path

_NAMESPACE: dict | None = None

_CONFTEST = '''\
"""Written by grader.harness.notebook: the code under test is the notebook's namespace."""
import pytest

from grader.harness import notebook


@pytest.fixture
def impl():
    return notebook.current_implementation()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    error = call.excinfo.value if call.excinfo is not None else None
    if report.failed and isinstance(error, NotImplementedError):
        name = notebook.unwritten_function(call.excinfo)
        doc = " ".join((getattr(getattr(item, "function", None), "__doc__", None) or item.name).strip().split("\\n\\n")[0].split())
        report.longrepr = (
            f"{name} is not implemented yet.\\n"
            f"  This test checks: {doc}\\n"
            f"  Next step: write {name} in the solution cell (replace `raise NotImplementedError()`), run that cell, then this one."
        )
'''


class NotebookImplementation:
    """The notebook's globals seen as the learner's module: `impl.rms_norm` is the notebook's `rms_norm`."""

    __name__ = "notebook"

    def __init__(self, namespace: dict):
        object.__setattr__(self, "_namespace", namespace)

    def __getattr__(self, name: str):
        try:
            return self._namespace[name]
        except KeyError:
            raise AttributeError(
                f"the notebook defines no `{name}`: run the solution cell (the one that defines it) before the tests"
            ) from None

    def __dir__(self):
        return sorted(self._namespace)


def current_implementation() -> NotebookImplementation:
    if _NAMESPACE is None:
        raise RuntimeError("grader.harness.notebook: no notebook namespace is set (run the tests through run_tests)")
    return NotebookImplementation(_NAMESPACE)


def unwritten_function(excinfo) -> str:
    """The qualified name of the function whose body raised NotImplementedError (nbgrader's stub)."""
    entry = excinfo.traceback[-1]
    code = entry.frame.code.raw
    return getattr(code, "co_qualname", code.co_name)


class TestsFailed(AssertionError):
    """Raised by a test cell where no test passed; IPython shows only the message, not our frames."""

    __test__ = False  # not a pytest test class

    def _render_traceback_(self) -> list[str]:
        return str(self).splitlines()


def _plugin_args() -> list[str]:
    """`-p grader.harness.plugin` unless the plugin is already registered through the installed entry point."""
    installed = any(ep.value == "grader.harness.plugin" for ep in importlib.metadata.entry_points(group="pytest11"))
    return [] if installed else ["-p", "grader.harness.plugin"]


def run_tests(source: str, namespace: dict, test_file: str, *, extra_args: list[str] | None = None) -> float | None:
    """Run the tests in `source` (a test file's text, saved as `test_file`, e.g. "01_rmsnorm/test_x.py")
    against `namespace`. Returns None when all pass, the points earned when only some do; raises
    TestsFailed when none passes (or collection fails)."""
    from grader.harness.learner import teaching_message
    from grader.harness.runner import _Collector

    global _NAMESPACE
    if not source.strip() or "def test" not in source:
        print("No tests in this cell yet: the grader adds its hidden tests when it grades.")
        return None
    folder = Path(tempfile.mkdtemp(prefix="llmlab_nb_"))
    try:
        path = folder / test_file
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
        (folder / "conftest.py").write_text(_CONFTEST)
        (folder / "pytest.ini").write_text("[pytest]\n")
        collector = _Collector()
        args = [str(path), "-c", str(folder / "pytest.ini"), "--rootdir", str(folder), "-p", "no:cacheprovider",
                "--import-mode=importlib", "--capture=sys", "--tb=short", "-q", *_plugin_args(), *(extra_args or [])]
        _NAMESPACE = namespace
        buffer = io.StringIO()
        try:
            with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
                exit_code = pytest_main(args, collector)
        finally:
            _NAMESPACE = None
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    results = list(collector.results.values())
    failed = [r for r in results if r.outcome in ("failed", "error")]
    passed = [r for r in results if r.outcome == "passed"]
    if not results:
        raise TestsFailed(f"no test ran (pytest exit code {int(exit_code)}):\n{buffer.getvalue()[-3000:]}")
    lines = []
    for r in failed:
        lines.append(f"✘ {r.name}")
        lines.extend("    " + line for line in teaching_message(r).splitlines())
    if not failed:
        print(f"✔ {len(passed)} of {len(results)} tests pass.")
        return None
    summary = f"{len(passed)} of {len(results)} tests pass."
    earned = sum(r.points or 0.0 for r in passed)
    if not passed or earned <= 0:
        raise TestsFailed("\n".join(lines + [summary]))
    print("\n".join(lines + [summary, f"Points: {earned:g} of {earned + sum(r.points or 0.0 for r in failed):g}"]))
    return round(earned, 6)


def pytest_main(args: list[str], collector) -> int:
    import pytest

    from grader.harness.loader import clear_cache
    from grader.harness.runner import older_objects_frozen

    clear_cache()
    with older_objects_frozen():  # a cell's pytest session ends with gc.collect(): skip the kernel's torch heap
        return pytest.main(args, plugins=[collector])


def load_ipython_extension(ipython) -> None:
    """`%load_ext grader.harness.notebook` registers the `%%llmlab_tests MODULE/test_file.py` cell magic."""

    def llmlab_tests(line: str, cell: str):
        test_file = line.strip()
        if not test_file:
            raise TestsFailed("%%llmlab_tests needs the test file, e.g. %%llmlab_tests 01_rmsnorm/test_rmsnorm.py")
        return run_tests(cell, ipython.user_ns, test_file)

    ipython.register_magic_function(llmlab_tests, magic_kind="cell", magic_name="llmlab_tests")
