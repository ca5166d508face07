"""The `grader.*` modules a file imports, read from its syntax tree (tests of the package's layout)."""

from __future__ import annotations

import ast
from pathlib import Path


def grader_imports(path: Path) -> set[str]:
    """Every `grader...` module name a file imports, anywhere in it (function bodies included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(Path(path).read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "grader"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.split(".")[0] == "grader":
            found.add(node.module)
            # `from grader.judge import grade` imports the module grader.judge.grade
            found |= {f"{node.module}.{alias.name}" for alias in node.names if _is_module(f"{node.module}.{alias.name}")}
    return found


def _is_module(name: str) -> bool:
    root = Path(__file__).resolve().parents[1]
    path = root.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()
