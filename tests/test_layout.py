"""The package's three wings keep to their imports: harness (learners), judge (grading), publish (artefacts)."""

from __future__ import annotations

import pytest
from layout import grader_imports

from grader.harness.course import REPO_ROOT

GRADER = REPO_ROOT / "grader"
# What each wing may import from `grader`: itself, the harness, and the package's top (`grader`, for
# NotImplementedYet). The CLI at the top imports every wing, lazily, inside its commands.
ALLOWED = {
    "harness": ("grader.harness",),
    "judge": ("grader.harness", "grader.judge"),
    "publish": ("grader.harness", "grader.publish"),
}


def _wing_files(wing: str) -> list:
    return sorted((GRADER / wing).glob("*.py"))


@pytest.mark.parametrize("wing", sorted(ALLOWED))
def test_a_wing_imports_only_the_harness_and_itself(wing):
    """harness imports nothing of judge or publish; judge and publish import the harness and themselves only."""
    files = _wing_files(wing)
    assert files, f"grader/{wing}/ holds no file"
    for path in files:
        foreign = {name for name in grader_imports(path)
                   if name != "grader" and not name.startswith(ALLOWED[wing])}
        assert not foreign, f"grader/{wing}/{path.name} imports {sorted(foreign)}"


def test_the_package_top_holds_only_the_cli_and_the_wings():
    """grader/ is `__init__.py`, `cli.py`, the three wings and the hidden suites: nothing else at the top."""
    top = {p.name for p in GRADER.iterdir() if p.name != "__pycache__"}
    assert top == {"__init__.py", "cli.py", "harness", "judge", "publish", "hidden"}, top


def test_the_cli_imports_the_wings_lazily():
    """`llmlab check` must not import the judge: cli.py imports no wing at module level."""
    import ast

    tree = ast.parse((GRADER / "cli.py").read_text())
    top_level = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    names = {getattr(node, "module", None) or node.names[0].name for node in top_level}
    assert not [n for n in names if n and n.startswith("grader")], names


def test_a_learner_command_loads_no_judge_or_publish_module():
    """Running `llmlab progress`'s code path imports the harness only (checked in a fresh interpreter)."""
    import subprocess
    import sys

    code = ("import sys, grader.cli, grader.harness.learner, grader.harness.plugin; "
            "print(sorted(m for m in sys.modules if m.startswith(('grader.judge', 'grader.publish'))))")
    out = subprocess.check_output([sys.executable, "-c", code], cwd=REPO_ROOT, text=True)
    assert out.strip() == "[]", out
