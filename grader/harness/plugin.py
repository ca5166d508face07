"""The pytest plugin of LLM Lab (registered through the `pytest11` entry point, so learners get it too).

What it gives a test under a module folder (`exercises/01_rmsnorm/`, `grader/hidden/01_rmsnorm/`, ...):

- `--impl ROOT`: where the code under test comes from: `exercises` (default), `solutions`, or any
  folder laid out like `exercises/`. The `impl` fixture is the learner's module loaded from that root.
- `device`: tests that take it run once per device: CPU always, CUDA too where it is available.
- `@pytest.mark.points(n)`: the test function is worth `n` points, shared evenly by its parametrized
  cases (so CUDA cases do not change a module's total). Stored in each report's `user_properties`.
- a fixed seed per test, derived from `--llmlab-seed` and the test's name, so inputs are reproducible
  and a grader can draw hidden inputs from a seed that submissions never see.
- failures that teach: a stub's `NotImplementedYet` and a file that does not load become a short
  message (what to write, where, what the test checks); every failure names the chapter to read.
"""

from __future__ import annotations

import random
import re
import zlib
from pathlib import Path

import pytest

from grader.harness.course import Module, find_module
from grader.harness.errors import ImplementationLoadError, NotImplementedYet

POINTS_KEY = pytest.StashKey[float]()
MODULE_KEY = pytest.StashKey["Module | None"]()
_listing = False  # this run only lists the tests (`--collect-only`): set by pytest_configure


def collect_only() -> bool:
    """True while pytest only lists the tests (`--collect-only`, as the judge of `llmlab grade` lists the hidden
    suites). A hidden suite imports the libraries it checks against (transformers, peft, bitsandbytes: seconds
    of imports) only when it is False, and never needs them to name its tests, so that both runs list the same
    ids (tests/test_grade.py checks it)."""
    return _listing


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("llmlab", "LLM Lab")
    group.addoption(
        "--impl",
        default=None,
        metavar="ROOT",
        help="folder of the implementation under test: exercises (default), solutions, or a submission laid out like exercises/",
    )
    group.addoption(
        "--llmlab-seed",
        default=0,
        type=int,
        metavar="N",
        help="base seed of the random inputs (graders pass a secret one)",
    )
    group.addoption(
        "--llmlab-device",
        action="append",
        choices=["cpu", "cuda"],
        metavar="DEVICE",
        help="run device-parametrized tests on this device only (repeatable); default: cpu, and cuda if available",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "points(n): grading weight of a test function, shared by its parametrized cases"
    )
    config.addinivalue_line("markers", "cuda: needs a CUDA device")
    config.addinivalue_line(
        "markers", "timeout(seconds): the test legitimately needs this long (pytest-timeout's marker); "
        "llmlab grade allows it more than its --timeout"
    )
    if config.getoption("impl") is not None:
        impl_root(config)  # a wrong --impl stops the run at once, with a usage error
    global _listing
    _listing = bool(config.option.collectonly)


def pytest_unconfigure(config: pytest.Config) -> None:
    global _listing
    _listing = False  # the next run in this process (`pytest.main` again) decides for itself


# --------------------------------------------------------------------------------------------------
# Which implementation, which course module


def impl_root(config: pytest.Config) -> Path:
    """The folder given by --impl, looked up from the working directory, then from the rootdir."""
    value = Path(config.getoption("impl") or "exercises")
    for candidate in (value, config.rootpath / value):
        if candidate.is_dir():
            return candidate.resolve()
    raise pytest.UsageError(f"--impl {value}: no such folder (looked in {Path.cwd()} and {config.rootpath})")


def course_module_of(path: Path) -> Module | None:
    """The course module a test file belongs to: the nearest parent folder named like one."""
    for parent in Path(path).parents:
        module = find_module(parent.name)
        if module is not None:
            return module
    return None


def _module_of_item(item: pytest.Item) -> Module | None:
    if MODULE_KEY not in item.stash:
        item.stash[MODULE_KEY] = course_module_of(item.path)
    return item.stash[MODULE_KEY]


@pytest.fixture
def course_module(request: pytest.FixtureRequest) -> Module:
    """The course module (name, file, chapter) of the requesting test."""
    module = course_module_of(request.path)
    if module is None:
        raise pytest.UsageError(f"{request.path} is not inside a course module folder such as 01_rmsnorm/")
    return module


@pytest.fixture
def impl(request: pytest.FixtureRequest, course_module: Module):
    """The learner's module under test, loaded from the --impl root."""
    from grader.harness.loader import load_implementation

    return load_implementation(impl_root(request.config), course_module)


# --------------------------------------------------------------------------------------------------
# Devices, points, seeds


def available_devices(config: pytest.Config) -> list[str]:
    import torch

    wanted = config.getoption("llmlab_device") or ["cpu", "cuda"]
    devices = [d for d in ("cpu", "cuda") if d in wanted]
    if "cuda" in devices and not torch.cuda.is_available():
        devices.remove("cuda")
    return devices


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "device" in metafunc.fixturenames:
        import torch

        devices = [torch.device(d) for d in available_devices(metafunc.config)]
        metafunc.parametrize("device", devices, ids=[d.type for d in devices])


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Share each test function's points among its parametrized cases (before any deselection)."""
    cases: dict[tuple, list[pytest.Item]] = {}
    for item in items:
        if item.get_closest_marker("points") is not None:
            key = (item.path, getattr(item.cls, "__name__", None), getattr(item, "originalname", item.name))
            cases.setdefault(key, []).append(item)
    for group in cases.values():
        for item in group:
            marker = item.get_closest_marker("points")
            value = float(marker.args[0]) if marker.args else float(marker.kwargs.get("n", 1))
            item.stash[POINTS_KEY] = value / len(group)
            item.user_properties.append(("points", value / len(group)))


def timeout_for(item: pytest.Item, default: float) -> float:
    """Seconds the grader allows `item`: its `timeout` marker if that asks for more than `default`."""
    marker = item.get_closest_marker("timeout")
    if marker is None:
        return default
    seconds = marker.args[0] if marker.args else marker.kwargs.get("timeout", 0)
    return max(default, float(seconds))


def seed_for(base_seed: int, item: pytest.Item) -> int:
    """A seed for one test, stable across machines and folders: base seed, module, file and test name."""
    module = _module_of_item(item)
    key = f"{base_seed}:{module.name if module else ''}:{item.path.name}:{item.name}"
    return zlib.crc32(key.encode())


@pytest.fixture(autouse=True)
def _llmlab_seed(request: pytest.FixtureRequest) -> None:
    if _module_of_item(request.node) is None:
        return
    import torch

    seed = seed_for(request.config.getoption("llmlab_seed"), request.node)
    random.seed(seed)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------------------------------
# Reports that teach


def _where(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _what_it_checks(item: pytest.Item) -> str:
    doc = (getattr(getattr(item, "function", None), "__doc__", None) or "").strip()
    return " ".join(doc.split("\n\n")[0].split()) if doc else item.name


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    module = _module_of_item(item)
    if module is not None and "impl" in getattr(item, "fixturenames", ()):
        try:  # remember the learner file this test ran against, for the "still to write" summary
            item.config.stash.setdefault(_TESTED_KEY, set()).add((impl_root(item.config), module))
        except pytest.UsageError:  # no --impl folder (a notebook's kernel provides `impl` itself)
            pass
    if module is None or not report.failed or call.excinfo is None:
        return
    error = call.excinfo.value
    if isinstance(error, NotImplementedYet):
        file = _where(impl_root(item.config) / module.name / module.file)
        report.longrepr = (
            f"{error.name} in {file} is not implemented yet.\n"
            f"  This test checks: {_what_it_checks(item)}\n"
            f"  Next step: write {error.name} as its docstring says, then run the tests again.\n"
            f"  Read: {module.chapter}"
        )
    elif isinstance(error, ImplementationLoadError):
        report.longrepr = (
            f"Your code could not be loaded, so this test could not run:\n  {error}\n"
            f"  Next step: fix the file so that `python {module.name}/{module.file}` runs without error."
        )
    elif isinstance(error, AssertionError) and _assertion_text(error):
        # A check that failed: its message is the teaching text. No traceback of the test or the harness,
        # no pytest introspection of the expression (it shows internal objects, not the mistake).
        lines = [entry.lineno + 1 for entry in call.excinfo.traceback if Path(entry.path) == Path(item.path)]
        line = f" (line {lines[-1]})" if lines else ""
        report.longrepr = (
            f"{_assertion_text(error)}\n"
            f"  This test checks: {_what_it_checks(item)}\n"
            f"  Test: {_where(item.path)}{line}\n"
            f"  Read: {module.chapter}"
        )
    else:
        report.sections.append(
            ("next step", f"This test checks: {_what_it_checks(item)}\nRead: {module.chapter}")
        )
    if INTERNAL_NAME.search(report.longreprtext):
        report.longrepr = INTERNAL_NAME.sub(lambda m: m.group(1), report.longreprtext)


# The loader's unique module names (`llmlab_impl_d214e4d87d_lora`) mean nothing to a learner: `lora` does.
INTERNAL_NAME = re.compile(r"llmlab_impl_[0-9a-f]+_(\w+)")


def _assertion_text(error: AssertionError) -> str:
    """The message of a failed check, without pytest's introspection of a bare `assert` (the lines from `assert ...` on)."""
    lines = str(error).strip().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("assert "):
            lines = lines[:i]
            break
    return "\n".join(lines).strip()


_TESTED_KEY = pytest.StashKey[set]()


def pytest_report_header(config: pytest.Config) -> str | None:
    try:
        return f"llmlab: implementation under test from {impl_root(config)}"
    except pytest.UsageError:
        return None


def still_to_write(config: pytest.Config) -> dict[str, list[str]]:
    """For each learner file the run tested: every function whose body still raises NotImplementedYet."""
    from grader.harness.loader import functions_still_to_write, module_path

    todo = {}
    for root, module in sorted(config.stash.get(_TESTED_KEY, set()), key=lambda pair: (str(pair[0]), pair[1].name)):
        path = module_path(root, module)
        try:
            names = functions_still_to_write(path.read_text())
        except OSError:
            continue
        if names:
            todo[_where(path)] = names
    return todo


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    todo = still_to_write(config)
    if not todo:
        return
    terminalreporter.section("llmlab: still to write")
    for file, names in todo.items():
        terminalreporter.line(f"{file}: {', '.join(names)}")


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """Keep a learner's run as fast as `import torch`: drop Hypothesis's plugin when no test used Hypothesis.

    Hypothesis is installed for the hidden suites (property tests in 04). Its pytest plugin is meant to
    stay lazy, but its end-of-run summary (hypothesis 6.15x) imports the whole library, about a second,
    even when no test used it. The terminal summary runs after this hook, so unregistering here is enough.
    """
    import sys

    manager = session.config.pluginmanager
    if "hypothesis" not in sys.modules and manager.has_plugin("hypothesispytest"):
        manager.unregister(name="hypothesispytest")
