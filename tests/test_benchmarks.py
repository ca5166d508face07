"""The benchmark scripts start and keep RESULTS.md in sections (the measurements themselves never run in tests)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from grader.harness.course import REPO_ROOT

BENCHMARKS = REPO_ROOT / "benchmarks"


def _results_file():
    spec = importlib.util.spec_from_file_location("results_file", BENCHMARKS / "results_file.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_section_is_replaced_in_place_and_the_others_kept(tmp_path):
    """Writing one section of RESULTS.md replaces it where it stands and leaves every other section as it was."""
    write_section = _results_file().write_section
    path = tmp_path / "RESULTS.md"
    write_section(path, "grading", "2. Grading", "old grading")
    write_section(path, "gpu check", "CUDA", "old gpu")
    write_section(path, "grading", "2. Grading", "new grading")
    text = path.read_text()
    assert "old grading" not in text and "old gpu" in text
    assert text.index("new grading") < text.index("old gpu")  # in place, not appended
    assert text.count("<!-- section: grading -->") == 1


def test_gpu_check_without_cuda_says_so_and_writes_nothing(tmp_path):
    """On a machine without CUDA, `python benchmarks/gpu_check.py` runs nothing, writes nothing and exits 0."""
    out = tmp_path / "RESULTS.md"
    done = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_check.py"), "--out", str(out)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)
    if "no CUDA device" not in done.stdout:
        pytest.skip("this machine has CUDA")
    assert done.returncode == 0, done.stdout + done.stderr
    assert not out.exists()


@pytest.mark.parametrize("script", ["run.py", "gpu_check.py"])
def test_benchmark_scripts_explain_themselves(script):
    """`--help` of each benchmark script works (the scripts parse their options before measuring anything)."""
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), "--help"], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and "usage:" in done.stdout, done.stdout + done.stderr
