"""`llmlab nbgrader OUT`: an nbgrader course built from the same sources as the pytest course.

    OUT/nbgrader_config.py
    OUT/source/NN_name/NN_name.ipynb      one notebook per module in existing_modules()

Each notebook, top to bottom:
- the chapter (docs/NN_name.md) as read-only markdown cells, one per `## ` section;
- a read-only setup cell: `%load_ext grader.harness.notebook` (the in-kernel test runner, see grader/harness/notebook.py);
- the reference file as an autograded-answer cell: its `### BEGIN SOLUTION` / `### END SOLUTION` regions
  (the very regions `llmlab stubs` uses) become nbgrader's `raise NotImplementedError()` on release.
  A region outside any function (an import or helper only the reference needs) is wrapped in
  `try: ... except NotImplementedError: pass` so that its stub does not stop the cell;
- the public tests, one visible autograder-test cell per public test file, worth 0 points (the learner's
  check, as `pytest exercises/NN_name`);
- the hidden tests, one autograder-test cell per hidden test function, its source between
  `### BEGIN HIDDEN TESTS` / `### END HIDDEN TESTS`, worth the function's `points` marker (its
  parametrized cases share the points; a cell where some cases fail gets partial credit).

A test cell holds the test file's module-level code that its tests use (imports, constants, helpers)
and its tests, and starts with `%%llmlab_tests NN_name/<file>`: the cell runs under real pytest in the
kernel, with `impl` bound to the notebook's globals. The kernel is a plain Python 3 (ipykernel) kernel
with `llmlab` installed; nothing needs a GPU or the network (CUDA cases run only where CUDA is present).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from grader.harness.course import REPO_ROOT, Module, existing_modules
from grader.publish.stubs import BEGIN, END, _enclosing_functions, solution_path

HIDDEN_BEGIN = "### BEGIN HIDDEN TESTS"
HIDDEN_END = "### END HIDDEN TESTS"
MAGIC = "%%llmlab_tests"

CONFIG = '''"""nbgrader configuration of the LLM Lab course, written by `llmlab nbgrader`."""

c = get_config()  # noqa: F821

c.CourseDirectory.course_id = "llmlab"
# One assignment per module: source/NN_name/NN_name.ipynb
# Hidden tests import the libraries they check against (transformers, peft, ...): allow a slow first import.
c.ExecutePreprocessor.timeout = 900
c.Execute.timeout = 900
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\\nraise NotImplementedError()"}
'''


class NotebookError(RuntimeError):
    pass


def _meta(grade_id: str, *, grade=False, solution=False, locked=False, points=None) -> dict:
    meta = {"grade": grade, "grade_id": grade_id, "locked": locked, "schema_version": 3, "solution": solution, "task": False}
    if points is not None:
        meta["points"] = points
    return {"nbgrader": meta}


# --------------------------------------------------------------------------------------------------
# The reference as an answer cell


def solution_source(source: str, filename: str = "<solution>") -> str:
    """The reference with module-level regions wrapped so that nbgrader's stub cannot stop the cell."""
    tree = ast.parse(source, filename)
    functions = _enclosing_functions(tree)
    out: list[str] = []
    wrapping = None
    for number, line in enumerate(source.splitlines(), start=1):
        marker = line.strip()
        indent = line[: len(line) - len(line.lstrip())]
        if marker == BEGIN and not any(f[0] < number <= f[1] for f in functions):
            wrapping = indent
            out.append(f"{indent}try:  # the reference's own helpers; yours may go here")
            out.append("    " + line)
            continue
        if wrapping is not None:
            out.append("    " + line if line.strip() else line)
            if marker == END:
                out.append(f"{wrapping}except NotImplementedError:  # nbgrader's stub of this region")
                out.append(f"{wrapping}    pass")
                wrapping = None
            continue
        out.append(line)
    return "\n".join(out).rstrip() + "\n"


# --------------------------------------------------------------------------------------------------
# Test files as cells


def _names_used(node: ast.AST) -> set[str]:
    names = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        names |= {a.arg for a in node.args.args + node.args.kwonlyargs}  # fixtures by name
    return names


def _defined(node: ast.stmt) -> set[str]:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {node.name}
    if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        return {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    return set()


def _is_test(node: ast.stmt) -> bool:
    return (isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test")) or (
        isinstance(node, ast.ClassDef) and node.name.startswith("Test")
    )


def _points(node: ast.stmt) -> float | None:
    for decorator in getattr(node, "decorator_list", []):
        if isinstance(decorator, ast.Call) and ast.unparse(decorator.func).endswith("mark.points"):
            value = decorator.args[0] if decorator.args else decorator.keywords[0].value
            return float(ast.literal_eval(value))
    return None


def _segment(lines: list[str], node: ast.stmt) -> str:
    start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    return "\n".join(lines[start - 1 : node.end_lineno])


def split_tests(source: str, filename: str = "<tests>") -> list[tuple[str, str, float | None]]:
    """(test name, self-contained source, points) per test function or class of a test file.

    Each source holds the file's imports and other module-level statements, the definitions the test
    uses (transitively), and the test itself."""
    tree = ast.parse(source, filename)
    lines = source.splitlines()
    body = [node for node in tree.body if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))]
    definitions = [node for node in body if _defined(node) and not _is_test(node)]
    tests = []
    for test in (node for node in body if _is_test(node)):
        needed, todo, keep = set(), set(_names_used(test)), set()
        while todo:
            name = todo.pop()
            needed.add(name)
            for node in definitions:
                if name in _defined(node) and id(node) not in keep:
                    keep.add(id(node))
                    todo |= _names_used(node) - needed
        parts = [
            _segment(lines, node)
            for node in body
            if node is test or id(node) in keep or (not _defined(node) and not _is_test(node)) or "pytestmark" in _defined(node)
        ]
        tests.append((test.name, "\n\n".join(parts) + "\n", _points(test)))
    return tests


# --------------------------------------------------------------------------------------------------
# The chapter as markdown cells


def chapter_cells(text: str, module: Module) -> list[str]:
    """The chapter in sections (one cell per `## ` heading), reworded where it names the exercise files."""
    text = text.replace(f"`exercises/{module.name}/{module.file}`", "the solution cell of this notebook")
    text = re.sub(rf"`pytest exercises/{module.name}[^`]*`", "the public test cell", text)
    text = _admonitions(text)
    sections = re.split(r"(?m)^(?=## )", text)
    return [section.strip() + "\n" for section in sections if section.strip()]


def _admonitions(text: str) -> str:
    """mkdocs' `!!! kind "Title"` blocks as Markdown quotes, which Jupyter renders."""
    out, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        match = re.match(r'^!!! *(\w+)(?: +"([^"]*)")?\s*$', lines[i])
        if not match:
            out.append(lines[i])
            i += 1
            continue
        out.append(f"> **{match.group(2) or match.group(1).title()}**")
        out.append(">")
        i += 1
        while i < len(lines) and (lines[i].startswith("    ") or not lines[i].strip()):
            if not lines[i].strip() and (i + 1 >= len(lines) or not lines[i + 1].startswith("    ")):
                break
            out.append(("> " + lines[i][4:]).rstrip())
            i += 1
    return "\n".join(out)


# --------------------------------------------------------------------------------------------------
# The notebook and the course


def module_notebook(module: Module, root: Path = REPO_ROOT) -> nbformat.NotebookNode:
    cells = []
    key = module.name
    intro = (
        f"# {module.name}: {module.title}\n\n"
        f"Write the code marked `# YOUR CODE HERE` in the solution cell below (the file `{module.file}` of the "
        f"pytest course), run it, then run the public test cell: it says what is still wrong. The grader "
        f"runs further, hidden tests on the same code. Keep the names and signatures. Run the cells from the top."
    )
    cells.append(new_markdown_cell(intro, metadata=_meta(f"{key}_intro", locked=True)))
    chapter = root / "docs" / f"{module.name}.md"
    if chapter.is_file():
        for i, text in enumerate(chapter_cells(chapter.read_text(), module)):
            cells.append(new_markdown_cell(text, metadata=_meta(f"{key}_chapter_{i}", locked=True)))
    cells.append(new_code_cell(
        "# The course's test runner (needs the llmlab package in this kernel: see the course's instructions).\n"
        "%load_ext grader.harness.notebook",
        metadata=_meta(f"{key}_setup", locked=True),
    ))
    reference = solution_path(module, root)
    cells.append(new_markdown_cell(f"## Your code: `{module.file}`", metadata=_meta(f"{key}_solution_title", locked=True)))
    cells.append(new_code_cell(solution_source(reference.read_text(), str(reference)), metadata=_meta(f"{key}_solution", solution=True)))

    public = sorted((root / "exercises" / module.name).glob("test_*.py"))
    if public:
        cells.append(new_markdown_cell("## Public tests\n\nRun this cell after the solution cell: every failure says what to fix.",
                                       metadata=_meta(f"{key}_public_title", locked=True)))
    for path in public:
        cells.append(new_code_cell(f"{MAGIC} {module.name}/{path.name}\n{path.read_text()}",
                                   metadata=_meta(f"{key}_public_{path.stem}", grade=True, locked=True, points=0)))

    hidden = sorted((root / "grader" / "hidden" / module.name).glob("test_*.py"))
    if hidden:
        cells.append(new_markdown_cell("## The grader's tests\n\nHidden until grading: the cells below are empty in your copy.",
                                       metadata=_meta(f"{key}_hidden_title", locked=True)))
    for path in hidden:
        for name, source, points in split_tests(path.read_text(), str(path)):
            if points is None:
                raise NotebookError(f"{path}: {name} has no @pytest.mark.points(n): every hidden test needs its points")
            text = f"{MAGIC} {module.name}/{path.name}\n{HIDDEN_BEGIN}\n{source.rstrip()}\n{HIDDEN_END}\n"
            cells.append(new_code_cell(text, metadata=_meta(f"{key}_hidden_{name}", grade=True, locked=True, points=points)))

    notebook = new_notebook(cells=cells)
    notebook.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    notebook.metadata["language_info"] = {"name": "python"}
    return notebook


def hidden_points(module: Module, root: Path = REPO_ROOT) -> float:
    """The module's total: the sum of its hidden tests' `points` markers."""
    total = 0.0
    for path in sorted((root / "grader" / "hidden" / module.name).glob("test_*.py")):
        total += sum(points or 0.0 for _, _, points in split_tests(path.read_text(), str(path)))
    return total


# Modules that cannot be taught in a notebook, and why (they are graded with `llmlab grade` only).
NOT_IN_NOTEBOOKS = {
    "08_distributed_launch": (
        "its workers are fresh processes that import the learner's functions by module name, and a "
        "notebook's functions live in the kernel's __main__, which no fresh process can import"
    ),
}


def notebook_modules(root: Path = REPO_ROOT) -> list[Module]:
    """The modules that `llmlab nbgrader` turns into notebooks: every existing one that a kernel can run."""
    return [m for m in existing_modules(root / "solutions") if m.name not in NOT_IN_NOTEBOOKS]


def build_course(out: Path, root: Path = REPO_ROOT, modules: list[Module] | None = None) -> Path:
    """Write the nbgrader course folder `out` (new or empty) and return it."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise NotebookError(f"{out} exists and is not empty: give a new folder")
    modules = notebook_modules(root) if modules is None else modules
    out.mkdir(parents=True, exist_ok=True)
    (out / "nbgrader_config.py").write_text(CONFIG)
    for module in modules:
        folder = out / "source" / module.name
        folder.mkdir(parents=True)
        notebook = module_notebook(module, root)
        nbformat.validate(notebook)
        nbformat.write(notebook, folder / f"{module.name}.ipynb")
    return out
