"""`llmlab nbgrader`: the nbgrader course, its in-kernel test runner, and a real nbgrader round trip.

Works for every module in `notebook_modules()` (every existing one but those that start processes). The end-to-end test (marked slow; it runs by default)
uses the real nbgrader command line and its sqlite gradebook in a temporary course folder.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from grader.harness.course import REPO_ROOT
from grader.publish.nbgrader_course import (
    HIDDEN_BEGIN,
    HIDDEN_END,
    build_course,
    hidden_points,
    notebook_modules,
    solution_source,
    split_tests,
)
from grader.harness.notebook import TestsFailed, run_tests
from grader.publish.stubs import BEGIN, END

MODULES = notebook_modules()  # module 08 starts processes: not in notebooks (see NOT_IN_NOTEBOOKS)


def nbgrader_stub(source: str) -> str:
    """What nbgrader's own ClearSolutions makes of an answer cell."""
    from nbgrader.preprocessors import ClearSolutions

    cell = nbformat.v4.new_code_cell(source, metadata={"nbgrader": {"solution": True, "grade": False, "grade_id": "x", "locked": False, "schema_version": 3}})
    ClearSolutions().preprocess_cell(cell, {"language": "python"}, 0)
    return cell.source


def marker_points(path: Path) -> float:
    return sum(float(n) for n in re.findall(r"@pytest\.mark\.points\(([0-9.]+)\)", path.read_text()))


@pytest.fixture(scope="module")
def course(tmp_path_factory) -> Path:
    return build_course(tmp_path_factory.mktemp("nbgrader") / "course")


def notebook_of(course: Path, module) -> nbformat.NotebookNode:
    return nbformat.read(course / "source" / module.name / f"{module.name}.ipynb", as_version=4)


def cells_of(notebook, kind: str):
    return [c for c in notebook.cells if c.cell_type == "code" and f"_{kind}" in c.metadata["nbgrader"]["grade_id"]]


# --------------------------------------------------------------------------------------------------
# The notebooks


def test_course_layout(course):
    """nbgrader_config.py and source/NN_name/NN_name.ipynb for every existing module, valid nbformat."""
    assert MODULES
    assert (course / "nbgrader_config.py").is_file()
    for module in MODULES:
        notebook = notebook_of(course, module)
        nbformat.validate(notebook)
        assert notebook.metadata.kernelspec.name == "python3"


def test_notebook_cells(course):
    """Chapter as markdown, the reference in one answer cell, public tests at 0 points, hidden tests at their markers' points."""
    for module in MODULES:
        notebook = notebook_of(course, module)
        meta = [c.metadata["nbgrader"] for c in notebook.cells]
        assert len({m["grade_id"] for m in meta}) == len(meta), "grade ids must be unique"
        markdown = "\n".join(c.source for c in notebook.cells if c.cell_type == "markdown")
        chapter_heading = (REPO_ROOT / module.chapter).read_text().splitlines()[0]
        assert chapter_heading in markdown
        answers = [c for c in notebook.cells if c.metadata["nbgrader"]["solution"]]
        assert len(answers) == 1 and BEGIN in answers[0].source and END in answers[0].source
        public = cells_of(notebook, "public_")
        assert public and all(c.metadata["nbgrader"]["points"] == 0 and HIDDEN_BEGIN not in c.source for c in public)
        hidden = cells_of(notebook, "hidden_test")
        assert all(c.source.count(HIDDEN_BEGIN) == 1 and c.source.count(HIDDEN_END) == 1 for c in hidden)
        expected = sum(marker_points(p) for p in (REPO_ROOT / "grader" / "hidden" / module.name).glob("test_*.py"))
        assert sum(c.metadata["nbgrader"]["points"] for c in hidden) == expected == hidden_points(module)
        assert all(c.metadata["nbgrader"]["grade"] and c.metadata["nbgrader"]["locked"] for c in public + hidden)


def test_answer_cell_released_by_nbgrader_still_defines_everything():
    """nbgrader's stub of the answer cell runs (module-level regions are wrapped) and defines every name."""
    source = f'''import math
{BEGIN}
import cmath
HELPER = 3
{END}


def area(r):
    """Area of a circle."""
    {BEGIN}
    return math.pi * r * r
    {END}


class Box:
    {BEGIN}
    size = 2
    {END}

    def double(self, x):
        {BEGIN}
        return 2 * x
        {END}
'''
    wrapped = solution_source(source)
    reference, stubbed = {}, {}
    exec(wrapped, reference)
    assert reference["area"](1.0) == pytest.approx(3.14159, abs=1e-5) and reference["HELPER"] == 3
    released = nbgrader_stub(wrapped)
    assert "math.pi" not in released and "HELPER" not in released and "2 * x" not in released
    exec(released, stubbed)  # must not raise: the module-level stub is caught
    with pytest.raises(NotImplementedError):
        stubbed["area"](1.0)
    with pytest.raises(NotImplementedError):
        stubbed["Box"]().double(1)


def test_hidden_test_cells_are_self_contained():
    """Each hidden test, with the module-level code it uses, compiles on its own and holds one test."""
    for module in MODULES:
        for path in (REPO_ROOT / "grader" / "hidden" / module.name).glob("test_*.py"):
            parts = split_tests(path.read_text())
            assert parts
            for name, source, points in parts:
                compile(source, name, "exec")
                assert len(re.findall(r"^(def|class) (test|Test)", source, flags=re.MULTILINE)) == 1
                assert points is not None


# --------------------------------------------------------------------------------------------------
# The in-kernel runner, run in this process against namespaces like a notebook's


def namespace_of(source: str) -> dict:
    namespace: dict = {"__name__": "__main__"}
    exec(compile(source, "<notebook>", "exec"), namespace)
    return namespace


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.name)
def test_runner_public_tests(module):
    """Public tests: pass on the reference's namespace; on nbgrader's stub they fail with 'not implemented yet'."""
    reference = (REPO_ROOT / "solutions" / module.name / module.file).read_text()
    for path in (REPO_ROOT / "exercises" / module.name).glob("test_*.py"):
        test_file = f"{module.name}/{path.name}"
        assert run_tests(path.read_text(), namespace_of(solution_source(reference)), test_file) is None
        stub = namespace_of(nbgrader_stub(solution_source(reference)))
        with pytest.raises(TestsFailed) as failure:
            run_tests(path.read_text(), stub, test_file)
        assert "is not implemented yet" in str(failure.value) and "solution cell" in str(failure.value)


def test_runner_gives_partial_credit_and_shares_points():
    """A parametrized hidden test with some failing cases returns the points of the passing ones."""
    module = MODULES[0]
    source = '''import pytest

@pytest.mark.points(3)
@pytest.mark.parametrize("n", [1, 2, 3])
def test_small(impl, n):
    """impl.limit is at least n."""
    assert impl.limit >= n, f"limit {impl.limit} < {n}"
'''
    assert run_tests(source, {"limit": 2}, f"{module.name}/test_partial.py") == pytest.approx(2.0)
    assert run_tests(source, {"limit": 3}, f"{module.name}/test_partial.py") is None
    with pytest.raises(TestsFailed, match="limit 0 < 1"):
        run_tests(source, {"limit": 0}, f"{module.name}/test_partial.py")
    with pytest.raises(TestsFailed, match="the notebook defines no `limit`"):
        run_tests(source, {}, f"{module.name}/test_partial.py")


def test_runner_with_an_empty_hidden_cell():
    """In the learner's copy a hidden cell is empty: it runs and says so, without failing."""
    assert run_tests("\n", {}, f"{MODULES[0].name}/test_x_hidden.py") is None


# --------------------------------------------------------------------------------------------------
# End to end with the nbgrader command line


def nbgrader(course: Path, *args: str) -> float:
    env = dict(os.environ)
    # The kernel (`python -m ipykernel_launcher`) must import this checkout's grader: the instructor's
    # "pip install llmlab" in the kernel's environment; here, the course venv first on PATH plus PYTHONPATH.
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    started = time.perf_counter()
    result = subprocess.run([str(Path(sys.executable).parent / "nbgrader"), *args], cwd=course, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"nbgrader {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return time.perf_counter() - started


@pytest.mark.slow
def test_nbgrader_round_trip(course, tmp_path, record_property, capsys):
    """generate_assignment; alice submits the source notebook (full marks), bob the released one (zero); export."""
    course = shutil.copytree(course, tmp_path / "course")
    # One nbgrader command per step for every assignment at once (nbgrader globs assignment ids): each start of
    # the nbgrader command line costs seconds, and the per-module checks below are the same.
    generate = nbgrader(course, "generate_assignment", "*", "--force")
    for module in MODULES:
        name = module.name
        released = (course / "release" / name / f"{name}.ipynb").read_text()
        solution_lines = [
            line.strip() for line in solution_source((REPO_ROOT / "solutions" / name / module.file).read_text()).splitlines()
        ]
        inside, secret = False, []
        for line in solution_lines:
            inside = (inside or line == BEGIN) and line != END
            if inside and line != BEGIN and len(line) > 12:
                secret.append(line)
        # A line of the solution that the learner also sees elsewhere (a public test, given code) is no secret.
        source_nb = nbformat.read(course / "source" / name / f"{name}.ipynb", as_version=4)
        visible = set()
        for cell in source_nb.cells:
            hidden = False
            for line in cell.source.splitlines():
                line = line.strip()
                if line in (BEGIN, HIDDEN_BEGIN):
                    hidden = True
                elif line in (END, HIDDEN_END):
                    hidden = False
                elif not hidden:
                    visible.add(line)
        secret = [line for line in secret if line not in visible]
        released_nb = nbformat.reads(released, as_version=4)
        released_code = "\n".join(c.source for c in released_nb.cells)
        released_lines = {line.strip() for line in released_code.splitlines()}
        assert secret, "no solution line to look for"
        leaked = [line for line in secret if line in released_lines]
        assert not leaked, f"solution code in the released notebook: {leaked[:5]}"
        assert BEGIN not in released_code and HIDDEN_BEGIN not in released_code and "def test_" in released_code
        for student, source in (("alice", course / "source"), ("bob", course / "release")):
            folder = course / "submitted" / student / name
            folder.mkdir(parents=True)
            shutil.copyfile(source / name / f"{name}.ipynb", folder / f"{name}.ipynb")
    autograde = nbgrader(course, "autograde", "*", "--create")
    export = nbgrader(course, "export")

    rows = list(csv.DictReader((course / "grades.csv").open()))
    scores = {(r["assignment"], r["student_id"]): (float(r["score"]), float(r["max_score"])) for r in rows}
    for module in MODULES:
        total = hidden_points(module)
        assert scores[(module.name, "alice")] == (total, total), scores
        assert scores[(module.name, "bob")] == (0.0, total), scores
    with capsys.disabled():
        line = (f"nbgrader round trip, {len(MODULES)} modules: generate_assignment {generate:.1f}s, "
                f"autograde (alice + bob) {autograde:.1f}s, export {export:.1f}s")
        print("\n" + line)
        record_property("nbgrader round trip", line)
