"""Packaging: what each part of the course imports, its install must bring; and a learner's install stays light.

`pip install .` is the learner's install: the public suites, the harness and the learner's commands (torch,
numpy, pytest). `pip install ".[grader]"` is Gradescope's image and a grading machine: the judge and the hidden
suites, with the libraries they check against. `[docs]` builds the site, `[nbgrader]` the nbgrader course,
`[dev]` is all of them. A file that imports a package declared only in a wider extra passes here, where
everything is installed, and fails on the machine that installed less. These tests read the imports themselves.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

from grader.harness.course import REPO_ROOT

# where a file's imports must come from: the learner's install (base), or an extra
LEARNER_PARTS = ("grader/__init__.py", "grader/cli.py", "grader/harness/", "exercises/")
EXTRA_OF = {"grader/publish/nbgrader_course.py": "nbgrader", "grader/judge/cluster.py": "cluster"}
LIGHT = {"torch", "numpy", "pytest"}  # the learner's install, exactly


def extra_for(relative: str) -> str | None:
    """None for what learners run, else the extra that must provide the file's imports."""
    if relative in EXTRA_OF:
        return EXTRA_OF[relative]
    return None if relative.startswith(LEARNER_PARTS) else "grader"


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _imported_top_names(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _local_names() -> set[str]:
    """Modules of the course itself: the grader package and the helpers that suites import by file name."""
    local = {"grader"}
    for path in [*(REPO_ROOT / "grader").rglob("*.py"), *(REPO_ROOT / "exercises").rglob("*.py")]:
        local.add(path.stem)
    return local


def test_every_grader_import_is_a_declared_dependency():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    base = {_name(r) for r in project["dependencies"]}
    extras = {extra: base | {_name(r) for r in reqs} for extra, reqs in project["optional-dependencies"].items()}
    provided_by = importlib.metadata.packages_distributions()
    local = _local_names()

    missing = []
    paths = [*(REPO_ROOT / "grader").rglob("*.py"), *(REPO_ROOT / "exercises").rglob("*.py")]
    for path in sorted(paths):
        relative = path.relative_to(REPO_ROOT).as_posix()
        extra = extra_for(relative)
        declared = base if extra is None else extras[extra]
        for name in sorted(_imported_top_names(path) - local - set(sys.stdlib_module_names)):
            distributions = {d.lower().replace("_", "-") for d in provided_by.get(name, [])}
            # imported directly, so declared directly (not left to another package's requirements)
            if distributions & declared:
                continue
            missing.append(f"{relative} imports {name} ({', '.join(sorted(distributions)) or 'not installed'})")
    assert not missing, "imports that the install of their part would not bring:\n" + "\n".join(missing)


def test_the_learners_install_is_light_and_dev_is_everything():
    """`pip install .` brings torch, numpy and pytest only; [dev] brings every other extra."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert {_name(r) for r in project["dependencies"]} == LIGHT
    extras = project["optional-dependencies"]
    assert {"grader", "docs", "nbgrader", "dev"} <= set(extras)
    assert {"transformers", "peft", "bitsandbytes", "deepspeed", "accelerate"} <= {_name(r) for r in extras["grader"]}
    dev = extras["dev"]
    assert len(dev) == 1 and _name(dev[0]) == "llmlab"
    assert set(re.search(r"\[(.*)\]", dev[0]).group(1).split(",")) == set(extras) - {"dev"}

