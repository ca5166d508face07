"""The learner's commands: `llmlab progress`, `check`, `hint` and `watch`.

All of them run the *public* suites in this process (grader/harness/runner.py), so a run costs one
`import torch` and no heavy library, whatever the number of modules.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from grader.harness.course import MODULES, Module, get_module
from grader.harness.files import atomic_write
from grader.harness.runner import SuiteResult, TestResult, run_suite

NOT_IMPLEMENTED = "is not implemented yet"


@dataclass
class Progress:
    module: Module
    status: str  # "missing", "not started", "failing", "passing" (the public tests; hidden ones may still fail)
    passed: int
    total: int
    next_step: str


def course_root(start: Path | None = None) -> Path:
    """The folder holding `exercises/`: the working directory or one of its parents."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "exercises").is_dir():
            return folder
    raise SystemExit("llmlab: no exercises/ folder here or above: run this inside the course folder")


def run_public(module: Module, root: Path) -> SuiteResult:
    """The module's public suite against the learner's files, run from the course folder (paths read `exercises/...`)."""
    here = Path.cwd()
    os.chdir(root)
    try:
        return run_suite([Path("exercises") / module.name], Path("exercises"))
    finally:
        os.chdir(here)


def module_progress(module: Module, root: Path) -> Progress:
    suite = root / "exercises" / module.name
    if not (suite / module.file).is_file():
        return Progress(module, "missing", 0, 0, f"exercises/{module.name}/{module.file} is missing")
    result = run_public(module, root)
    tests = [r for r in result.results if "::" in r.nodeid]
    passed = len(result.passed)
    failing = result.not_passed
    if tests and passed == len(tests):
        # The public tests are a subset: the hidden suite can still find mistakes they cannot see.
        return Progress(module, "passing", passed, len(tests), "public tests pass; the grader's hidden tests check more")
    if failing and all(NOT_IMPLEMENTED in r.message for r in failing) and passed == 0:
        return Progress(module, "not started", 0, len(tests), f"read {module.chapter}, then `llmlab check {module.name}`")
    first = failing[0] if failing else None
    step = f"fix: {first.name}" if first else "see `pytest`"
    if first and NOT_IMPLEMENTED in first.message:
        step = "write: " + first.message.split(" in ", 1)[0]
    return Progress(module, "failing", passed, len(tests), step)


def progress(root: Path | None = None) -> list[Progress]:
    root = course_root(root)
    return [module_progress(module, root) for module in MODULES if (root / "exercises" / module.name).is_dir()]


def format_progress(rows: list[Progress]) -> str:
    marks = {"passing": "✔", "failing": "✘", "not started": "·", "missing": "?"}
    lines = [f"{'':2}{'module':<24}{'status':<22}next step"]
    for row in rows:
        status = row.status if row.status != "failing" else f"failing {row.total - row.passed} of {row.total}"
        if row.status == "passing":
            status = f"passing {row.passed}/{row.total}"
        lines.append(f"{marks[row.status]:2}{row.module.name:<24}{status:<22}{row.next_step}")
    done = sum(row.status == "passing" for row in rows)
    lines.append(f"\n{done} of {len(rows)} modules pass their public tests.")
    return "\n".join(lines)


def teaching_message(result: TestResult) -> str:
    """The message a learner needs: the plugin's teaching text, without pytest's traceback lines."""
    text = result.message.strip()
    if NOT_IMPLEMENTED in text or text.startswith("Your code could not be loaded"):
        return text
    if not any(line.startswith("E ") for line in text.splitlines()):  # already a teaching message (a failed check)
        return text
    errors = [line[4:] if line.startswith("E   ") else line for line in text.splitlines() if line.startswith("E ") or line.startswith("E\t")]
    tail = text.split("This test checks:", 1)
    explanation = "\n".join(errors) or text.splitlines()[-1]
    if len(tail) == 2:
        explanation += "\nThis test checks:" + tail[1]
    return explanation


def format_check(module: Module, result: SuiteResult) -> str:
    lines = []
    for r in result.results:
        mark = "✔" if r.outcome == "passed" else "✘"
        lines.append(f"{mark} {r.name}")
        if r.outcome != "passed":
            lines.extend("    " + line for line in teaching_message(r).splitlines())
    passed, total = len(result.passed), len(result.results)
    if passed == total and total:
        ending = f" The public tests pass; the grader's hidden tests check more (the pitfalls of {module.chapter})."
    else:
        ending = f" Read {module.chapter}."
    lines.append(f"\n{module.name}: {passed} of {total} tests pass." + ending)
    return "\n".join(lines)


def check(name: str, root: Path | None = None) -> tuple[int, str]:
    root = course_root(root)
    module = get_module(name)
    result = run_public(module, root)
    ok = bool(result.results) and not result.not_passed
    return (0 if ok else 1), format_check(module, result)


# -------------------------------------------------------------------------------------------------
# Hints: exercises/NN_name/hints.md, sections "## Hint 1", "## Hint 2", ... from gentle to nearly the answer


def hints_of(module: Module, root: Path) -> list[str]:
    path = root / "exercises" / module.name / "hints.md"
    if not path.is_file():
        return []
    parts = re.split(r"^## Hint \d+.*$", path.read_text(), flags=re.MULTILINE)
    return [part.strip() for part in parts[1:] if part.strip()]


def hint(name: str, level: int | None, root: Path | None = None) -> str:
    root = course_root(root)
    module = get_module(name)
    hints = hints_of(module, root)
    if not hints:
        return f"No hints for {module.name} yet: read {module.chapter}."
    if level is not None and not 1 <= level <= len(hints):
        return (f"{module.name} has {len(hints)} hints: ask for one with --level 1 to {len(hints)} "
                f"(or `llmlab hint {module.name}` for the next one).")
    state = _load_state(root)
    seen = state.setdefault("hints", {}).get(module.name, 0)
    level = level or min(seen + 1, len(hints))  # each call without --level goes one step further
    state["hints"][module.name] = max(seen, level)
    _save_state(root, state)
    more = f"\n\n(hint {level} of {len(hints)}; `llmlab hint {module.name}` again for the next)" if level < len(hints) else f"\n\n(hint {level} of {len(hints)}: the last one)"
    return f"Hint {level} for {module.name}:\n\n{hints[level - 1]}{more}"


# -------------------------------------------------------------------------------------------------
# Watch: re-run a module's public suite on every save; the state lives in .llmlab/state.json


def _state_path(root: Path) -> Path:
    return root / ".llmlab" / "state.json"


def _load_state(root: Path) -> dict:
    try:
        return json.loads(_state_path(root).read_text())
    except (OSError, ValueError):
        return {}


def _save_state(root: Path, state: dict) -> None:
    atomic_write(_state_path(root), json.dumps(state, indent=2))


def watch(name: str | None, root: Path | None = None, interval: float = 0.5, max_runs: int | None = None) -> int:
    """Re-run the public suite of `name` (or the module watched last) each time its file changes."""
    root = course_root(root)
    state = _load_state(root)
    name = name or state.get("watch", {}).get("module")
    if name is None:
        raise SystemExit("llmlab watch: name a module, e.g. `llmlab watch 01_rmsnorm`")
    module = get_module(name)
    path = root / "exercises" / module.name / module.file
    last = state.get("watch", {})
    if last.get("module") == module.name and "passed" in last:
        print(f"Last time: {last['passed']} of {last['total']} tests of {module.name} passed.")
    print(f"Watching {path.relative_to(root)}: save it to re-run the tests (Ctrl-C to stop).")
    seen_mtime, runs = None, 0
    try:
        while max_runs is None or runs < max_runs:
            mtime = path.stat().st_mtime_ns if path.exists() else None
            if mtime != seen_mtime:
                seen_mtime = mtime
                result = run_public(module, root)
                runs += 1
                print("\n" + time.strftime("%H:%M:%S ") + "-" * 60)
                print(format_check(module, result))
                state["watch"] = {"module": module.name, "passed": len(result.passed), "total": len(result.results)}
                _save_state(root, state)
            else:
                time.sleep(interval)
    except KeyboardInterrupt:
        print("\nStopped watching.")
    return 0
