"""The harness itself: loading learner code, points, seeds, devices, teaching messages, stubs."""

from __future__ import annotations

import functools
import textwrap

import pytest
import torch

from grader.harness.checks import assert_close, assert_raises, assert_shape
from grader.harness.errors import NotImplementedYet
from grader.publish.stubs import MarkerError, make_stub

# ------------------------------------------------------------------------------------------------
# The plugin, seen from a learner's run (pytester runs pytest in a temporary folder)

PASSING_TEST = """
import pytest

@pytest.mark.points(3)
@pytest.mark.parametrize("n", [1, 2, 3])
def test_double(impl, n):
    '''double(n) is 2 n.'''
    assert impl.double(n) == 2 * n

@pytest.mark.points(1)
def test_single(impl):
    '''double(0) is 0.'''
    assert impl.double(0) == 0
"""


@pytest.fixture
def course(pytester):
    """A folder laid out like the course: impl/01_rmsnorm/rmsnorm.py and suite/01_rmsnorm/test_it.py."""
    pytester.makepyfile(**{"suite/01_rmsnorm/test_it": PASSING_TEST})
    pytester.makeini("[pytest]\naddopts = --import-mode=importlib -p no:cacheprovider\n")

    def write_impl(source: str, root: str = "impl") -> str:
        pytester.makepyfile(**{f"{root}/01_rmsnorm/rmsnorm": textwrap.dedent(source)})
        return root

    return write_impl


def test_impl_fixture_loads_the_chosen_root(pytester, course):
    course("def double(n):\n    return 2 * n\n")
    result = pytester.runpytest("suite", "--impl", "impl")
    result.assert_outcomes(passed=4)


def test_points_are_shared_among_parametrized_cases(pytester, course):
    course("def double(n):\n    return 2 * n\n")
    reports = pytester.inline_run("suite", "--impl", "impl").getreports("pytest_runtest_logreport")
    points = {r.nodeid.split("::")[-1]: dict(r.user_properties)["points"] for r in reports if r.when == "call"}
    assert points == {"test_double[1]": 1.0, "test_double[2]": 1.0, "test_double[3]": 1.0, "test_single": 1.0}


def test_a_stub_fails_with_a_teaching_message(pytester, course):
    course(
        """
        from grader import NotImplementedYet

        def double(n):
            raise NotImplementedYet("double")
        """
    )
    result = pytester.runpytest("suite", "--impl", "impl")
    result.assert_outcomes(failed=4)
    result.stdout.fnmatch_lines(
        [
            "*double in impl/01_rmsnorm/rmsnorm.py is not implemented yet.",
            "*This test checks: double(n) is 2 n.",
            "*Read: docs/01_rmsnorm.md",
            "*llmlab: still to write*",
        ]
    )
    assert "Traceback" not in result.stdout.str()


@pytest.mark.parametrize(
    "source, words",
    [
        ("def double(n) return 2 * n\n", "has a syntax error at line 1"),
        ("import no_such_package_anywhere\n", "raised ModuleNotFoundError while being imported (line 1)"),
        ("raise RuntimeError('boom')\n", "raised RuntimeError while being imported (line 1): boom"),
    ],
    ids=["syntax", "import", "raises"],
)
def test_a_broken_file_fails_each_test_with_the_reason(pytester, course, source, words):
    course(source)
    result = pytester.runpytest("suite", "--impl", "impl")
    result.assert_outcomes(errors=4)
    # Count in the reports only: in CI (the CI variable is set) pytest prints the
    # short summary untruncated, which repeats each message once more.
    reports = result.stdout.str().split("short test summary info")[0]
    assert reports.count(words) == 4, result.stdout.str()


def test_a_missing_file_is_named(pytester, course):
    pytester.mkdir("empty")
    result = pytester.runpytest("suite", "--impl", "empty")
    result.assert_outcomes(errors=4)
    result.stdout.fnmatch_lines(["*there is no file 01_rmsnorm/rmsnorm.py under*"])


def test_an_unknown_impl_root_is_a_usage_error(pytester, course):
    result = pytester.runpytest("suite", "--impl", "nowhere")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--impl nowhere: no such folder*"])


def test_seeds_are_fixed_per_test_and_follow_the_base_seed(pytester, course):
    course("def double(n):\n    return 2 * n\n")
    pytester.makepyfile(
        **{
            "suite/01_rmsnorm/test_seed": """
            import torch
            def test_draw(impl, record_property):
                record_property("draw", torch.rand(1).item())
            """
        }
    )

    def draw(*args):
        reports = pytester.inline_run("suite/01_rmsnorm/test_seed.py", "--impl", "impl", *args).getreports("pytest_runtest_logreport")
        return [dict(r.user_properties)["draw"] for r in reports if r.when == "call"][0]

    assert draw() == draw()
    assert draw("--llmlab-seed", "7") == draw("--llmlab-seed", "7") != draw()


def test_device_fixture_runs_on_every_available_device(pytester, course):
    course("def double(n):\n    return 2 * n\n")
    pytester.makepyfile(**{"suite/01_rmsnorm/test_dev": "def test_dev(device):\n    assert device.type in ('cpu', 'cuda')\n"})
    result = pytester.runpytest("suite/01_rmsnorm/test_dev.py", "--impl", "impl", "-v")
    expected = 2 if torch.cuda.is_available() else 1
    result.assert_outcomes(passed=expected)
    result.stdout.fnmatch_lines(["*test_dev[[]cpu[]] PASSED*"])


# ------------------------------------------------------------------------------------------------
# Assertions that teach


def test_assert_close_names_shape_dtype_and_the_largest_difference():
    expected = torch.zeros(2, 3, dtype=torch.float64)
    with pytest.raises(AssertionError, match=r"has shape \(2\) but should have shape \(2, 3\).*keepdim"):
        assert_close(torch.zeros(2), expected, what="out")
    with pytest.raises(AssertionError, match="has dtype torch.float32 but should have dtype torch.bfloat16.*Cast the result back"):
        assert_close(torch.zeros(2, 3), expected, what="out", dtype=torch.bfloat16)
    actual = torch.zeros(2, 3)
    actual[1, 2] = 0.5
    with pytest.raises(AssertionError, match=r"worst at index \(1, 2\): got 0.5, expected 0 \(difference 0.5, allowed 0\)"):
        assert_close(actual, expected, what="out", dtype=torch.float32)


def test_assert_close_names_a_known_mistake_and_non_finite_values():
    x = torch.randn(4, 8, dtype=torch.float64)
    wrong = x - x.mean(-1, keepdim=True)
    with pytest.raises(AssertionError, match="Likely mistake: centred"):
        assert_close(wrong.float(), x, dtype=torch.float32, mistakes={"scaled": x * 2, "centred": wrong})
    with pytest.raises(AssertionError, match="non-finite"):
        assert_close(torch.full((2,), float("nan")), torch.zeros(2, dtype=torch.float64), dtype=torch.float32)


def test_assert_close_accepts_rounding_of_the_dtype():
    truth = torch.randn(64, 64, dtype=torch.float64) * 5
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        assert_close(truth.to(dtype), truth, dtype=dtype)


def test_assert_shape_spots_a_transpose():
    with pytest.raises(AssertionError, match="transpose"):
        assert_shape(torch.zeros(3, 2), (2, 3))


def test_assert_raises_teaches_and_lets_not_implemented_through():
    def quiet(_):
        raise ValueError("")

    def stub(_):
        raise NotImplementedYet("f")

    with pytest.raises(AssertionError, match="nothing was raised"):
        assert_raises(ValueError, lambda _: None, 0, when="for 0")
    with pytest.raises(AssertionError, match="but TypeError was raised"):
        assert_raises(ValueError, lambda _: (_ + "a"), 0, when="for 0")
    with pytest.raises(AssertionError, match="empty message"):
        assert_raises(ValueError, quiet, 0, when="for 0")
    with pytest.raises(NotImplementedYet):
        assert_raises(ValueError, stub, 0, when="for 0")


# ------------------------------------------------------------------------------------------------
# Stubs made from references

REFERENCE = '''\
"""Docstring."""

import torch
### BEGIN SOLUTION
import math
### END SOLUTION


def f(x):
    """Doc of f."""
    ### BEGIN SOLUTION
    return math.sqrt(x)
    ### END SOLUTION


class Layer:
    def __init__(self):
        super().__init__()
        ### BEGIN SOLUTION
        self.a = 1
        ### END SOLUTION

    def given(self):
        return 2
'''


def test_make_stub_replaces_regions_and_keeps_signatures():
    stub = make_stub(REFERENCE)
    assert "math" not in stub
    assert 'import torch\nfrom grader import NotImplementedYet\n' in stub
    assert '    """Doc of f."""\n    raise NotImplementedYet("f")\n' in stub
    assert '        super().__init__()\n        raise NotImplementedYet("Layer.__init__")\n' in stub
    assert "    def given(self):\n        return 2\n" in stub
    compile(stub, "stub", "exec")


@pytest.mark.parametrize(
    "source, problem",
    [
        ("def f():\n    ### BEGIN SOLUTION\n    pass\n", "never closed"),
        ("def f():\n    ### END SOLUTION\n    pass\n", "without"),
    ],
)
def test_make_stub_rejects_broken_markers(source, problem):
    with pytest.raises(MarkerError, match=problem):
        make_stub(source)


# ------------------------------------------------------------------------------------------------
# `llmlab stubs` never overwrites a learner's work


@pytest.fixture
def repo(tmp_path):
    """A course repository with one module: the reference and its stub as `llmlab stubs` writes them."""
    from grader.harness.course import get_module
    from grader.publish.stubs import solution_path, stub_path

    module = get_module("01_rmsnorm")
    solution_path(module, tmp_path).parent.mkdir(parents=True)
    solution_path(module, tmp_path).write_text(REFERENCE)
    stub_path(module, tmp_path).parent.mkdir(parents=True)
    stub_path(module, tmp_path).write_text(make_stub(REFERENCE))
    return tmp_path, solution_path(module, tmp_path), stub_path(module, tmp_path)


def test_stubs_refuse_to_overwrite_a_learners_work(repo):
    """The issue's case: an implemented file in exercises/ survives `llmlab stubs`, which names it; --force replaces it."""
    from grader.publish.stubs import StubsWouldOverwrite, write_stubs

    root, solution, stub = repo
    solution.write_text(REFERENCE.replace("Doc of f.", "Doc of f, reworded."))  # the reference changed: the stub is stale
    stub.write_text(make_stub(REFERENCE).replace('raise NotImplementedYet("f")', "return math.pi"))  # the learner wrote f
    with pytest.raises(StubsWouldOverwrite) as refused:
        write_stubs(root)
    assert refused.value.paths == [stub]
    assert "return math.pi" in stub.read_text()
    assert write_stubs(root, force=True) == [stub]
    assert "reworded" in stub.read_text()


def test_stubs_replace_what_they_wrote_and_detect_any_edit_after(repo):
    """A stub still as written is regenerated; once recorded, even an edit that leaves it a stub is refused."""
    from grader.publish.stubs import StubsWouldOverwrite, record_path, write_stubs

    root, solution, stub = repo
    solution.write_text(REFERENCE.replace("Doc of f.", "Doc of f, v2."))
    assert write_stubs(root) == [stub]  # no record yet, and the file is still a stub: replaced
    assert record_path(root).is_file()
    solution.write_text(REFERENCE.replace("Doc of f.", "Doc of f, v3."))
    assert write_stubs(root) == [stub]  # byte for byte what it last wrote: replaced
    stub.write_text(stub.read_text() + "# my notes\n")
    solution.write_text(REFERENCE.replace("Doc of f.", "Doc of f, v4."))
    with pytest.raises(StubsWouldOverwrite):
        write_stubs(root)
    assert stub.read_text().endswith("# my notes\n")


def test_cli_stubs_names_the_refused_files(repo, monkeypatch, capsys):
    from grader import cli
    from grader.publish import stubs

    root, solution, stub = repo
    solution.write_text(REFERENCE.replace("Doc of f.", "Doc of f, v2."))
    stub.write_text(make_stub(REFERENCE).replace('raise NotImplementedYet("f")', "return 1"))
    monkeypatch.setattr(stubs, "write_stubs", functools.partial(stubs.write_stubs, root))  # the CLI imports it when run
    assert cli.main(["stubs"]) == 1
    err = capsys.readouterr().err
    assert str(stub) in err and "--force" in err


def test_still_to_write_lists_every_unwritten_function_statically():
    """The summary lists every function whose body raises NotImplementedYet, reached by a test or not."""
    from grader.harness.loader import functions_still_to_write

    stub = make_stub(REFERENCE)
    assert functions_still_to_write(stub) == ["f", "Layer.__init__"]
    assert functions_still_to_write(stub.replace('raise NotImplementedYet("f")', "return 1")) == ["Layer.__init__"]
    assert functions_still_to_write("def g(:\n") == []


def test_the_summary_names_functions_no_test_reached(pytester, course):
    course(
        """
        from grader import NotImplementedYet

        def double(n):
            return 2 * n

        class Later:
            def forward(self, x):
                raise NotImplementedYet("Later.forward")
        """
    )
    result = pytester.runpytest("suite", "--impl", "impl")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["*llmlab: still to write*", "impl/01_rmsnorm/rmsnorm.py: Later.forward"])


def test_loaded_files_stay_importable_by_name_for_worker_processes(tmp_path, monkeypatch):
    """Module 08's workers import the learner's file by its unique name, even after pytest restored sys.path."""
    import subprocess
    import sys

    from grader.harness import loader
    from grader.harness.course import get_module

    module = get_module("01_rmsnorm")
    (tmp_path / module.name).mkdir()
    (tmp_path / module.name / module.file).write_text("ANSWER = 42\n")
    loaded = loader.load_implementation(tmp_path, module)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(loader.shim_dir())])  # as pytester restores it
    assert loader.load_implementation(tmp_path, module) is loaded
    code = f"import {loaded.__name__} as m; print(m.ANSWER)"
    result = subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": ":".join(sys.path)}, capture_output=True, text=True)
    assert result.stdout.strip() == "42", result.stderr
