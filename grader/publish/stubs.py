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

`llmlab stubs` never overwrites a learner's work. It keeps a record of what it wrote (the SHA-256 of each
stub, in `.llmlab/stubs.json`, next to `exercises/`) and replaces a file only when it is byte for byte the
stub it last wrote, or, with no record (a fresh clone), when the file is still a stub: every function the
new stub asks for still raises `NotImplementedYet` in it. Anything else is refused, by name; `--force`
overrides.
"""

from __future__ import annotations

import ast
import hashlib
import json
from pathlib import Path

from grader.harness.course import MODULES, REPO_ROOT, Module
from grader.harness.files import atomic_write
from grader.harness.loader import functions_still_to_write

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


def existing_modules_of(root: Path) -> list[Module]:
    return [m for m in MODULES if solution_path(m, root).is_file()]


def record_path(root: Path = REPO_ROOT) -> Path:
    """Where `llmlab stubs` records the SHA-256 of every stub it wrote (git ignores `.llmlab/`)."""
    return root / ".llmlab" / "stubs.json"


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _load_record(root: Path) -> dict[str, str]:
    try:
        return dict(json.loads(record_path(root).read_text()))
    except (OSError, ValueError, TypeError):
        return {}


def is_untouched(path: Path, new_stub: str, record: dict[str, str], key: str) -> bool:
    """True when overwriting `path` loses nothing: it is the stub last written, or (no record) still a stub."""
    if not path.is_file():
        return True
    text = path.read_text()
    if key in record:
        return record[key] == _sha256(text)
    return set(functions_still_to_write(new_stub)) <= set(functions_still_to_write(text))


class StubsWouldOverwrite(RuntimeError):
    """A stale stub was edited since `llmlab stubs` wrote it (a learner's work?): refused without --force."""

    def __init__(self, paths: list[Path]):
        self.paths = paths
        names = ", ".join(str(p) for p in paths)
        super().__init__(f"not overwritten, edited since `llmlab stubs` wrote them: {names} (use --force to replace them)")


def write_stubs(root: Path = REPO_ROOT, force: bool = False) -> list[Path]:
    """Regenerate the stale stubs; refuse (StubsWouldOverwrite, nothing written) if one holds edits, unless `force`."""
    record = _load_record(root)
    plan: list[tuple[Path, str, str]] = []
    refused: list[Path] = []
    stale = stale_stubs(root)
    for module in existing_modules_of(root):
        if module not in stale:  # up to date: what the generator writes, so recorded as written by it
            stub = stub_path(module, root)
            record[stub.relative_to(root).as_posix()] = _sha256(stub.read_text())
    for module in stale:
        stub = stub_path(module, root)
        key = stub.relative_to(root).as_posix()
        text = make_stub(solution_path(module, root).read_text(), str(solution_path(module, root)))
        if not force and not is_untouched(stub, text, record, key):
            refused.append(stub)
        plan.append((stub, key, text))
    if refused:
        raise StubsWouldOverwrite(refused)
    for stub, key, text in plan:
        atomic_write(stub, text)
        record[key] = _sha256(text)
    if record != _load_record(root):
        atomic_write(record_path(root), json.dumps(record, indent=1, sort_keys=True) + "\n")
    return [stub for stub, _, _ in plan]
