"""One source for each module: the reference in `solutions/` carries marked regions, the stub is made from it.

    def rms_norm(x, weight=None, eps=1e-6):
        \"\"\"...docstring with shapes and the formula...\"\"\"
        ### BEGIN SOLUTION
        ...the reference code...
        ### END SOLUTION

In the stub (`exercises/`), a region inside a function becomes `raise NotImplementedYet("rms_norm")`;
a region at module level (an import or helper only the solution needs) disappears. The markers are
nbgrader's own, so the same file feeds nbgrader's release. Signatures and docstrings live outside the
regions, so the stub and the reference can never disagree on them: `llmlab stubs --check` (and the
meta-suite) fail when a committed stub is not what its reference generates.
"""

from __future__ import annotations

import ast
from pathlib import Path

from grader.harness.course import MODULES, REPO_ROOT, Module

BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
IMPORT_LINE = "from grader import NotImplementedYet"


class MarkerError(ValueError):
    pass


def _enclosing_functions(tree: ast.Module) -> list[tuple[int, int, str]]:
    """(first line, last line, qualified name) of every function, classes included in the name."""
    found: list[tuple[int, int, str]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = prefix + child.name
                found.append((child.lineno, child.end_lineno or child.lineno, name))
                visit(child, name + ".")
            elif isinstance(child, ast.ClassDef):
                visit(child, prefix + child.name + ".")

    visit(tree, "")
    return found


def make_stub(source: str, filename: str = "<solution>") -> str:
    """The learner's stub for a reference `source`."""
    tree = ast.parse(source, filename)
    functions = _enclosing_functions(tree)
    lines = source.splitlines()
    out: list[str] = []
    region_start: int | None = None
    for number, line in enumerate(lines, start=1):
        marker = line.strip()
        if marker == BEGIN:
            if region_start is not None:
                raise MarkerError(f"{filename}:{number}: {BEGIN} inside another region")
            region_start = number
            indent = line[: len(line) - len(line.lstrip())]
            inside = [f for f in functions if f[0] < number <= f[1]]
            if inside:
                name = max(inside, key=lambda f: f[0])[2]  # the innermost function
                out.append(f'{indent}raise NotImplementedYet("{name}")')
        elif marker == END:
            if region_start is None:
                raise MarkerError(f"{filename}:{number}: {END} without {BEGIN}")
            region_start = None
        elif region_start is None:
            out.append(line)
    if region_start is not None:
        raise MarkerError(f"{filename}:{region_start}: {BEGIN} is never closed")
    return _add_import("\n".join(out) + "\n", filename)


def _add_import(stub: str, filename: str) -> str:
    """Put `from grader import NotImplementedYet` after the last top-level import."""
    tree = ast.parse(stub, filename)
    imports = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    lines = stub.splitlines()
    if imports:
        at = max(node.end_lineno or node.lineno for node in imports)
    else:  # after the module docstring, if any
        first = tree.body[0] if tree.body else None
        is_doc = isinstance(first, ast.Expr) and isinstance(getattr(first, "value", None), ast.Constant)
        at = (first.end_lineno or 0) if is_doc else 0
    lines.insert(at, IMPORT_LINE)
    return "\n".join(lines) + "\n"


def stub_path(module: Module, root: Path = REPO_ROOT) -> Path:
    return root / "exercises" / module.name / module.file


def solution_path(module: Module, root: Path = REPO_ROOT) -> Path:
    return root / "solutions" / module.name / module.file


def stale_stubs(root: Path = REPO_ROOT) -> list[Module]:
    """Modules whose committed stub differs from what their reference generates."""
    stale = []
    for module in MODULES:
        solution = solution_path(module, root)
        if not solution.is_file():
            continue
        stub = stub_path(module, root)
        expected = make_stub(solution.read_text(), str(solution))
        if not stub.is_file() or stub.read_text() != expected:
            stale.append(module)
    return stale


def write_stubs(root: Path = REPO_ROOT) -> list[Path]:
    written = []
    for module in stale_stubs(root):
        stub = stub_path(module, root)
        stub.parent.mkdir(parents=True, exist_ok=True)
        stub.write_text(make_stub(solution_path(module, root).read_text(), str(solution_path(module, root))))
        written.append(stub)
    return written
