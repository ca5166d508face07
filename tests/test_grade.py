"""`llmlab grade` and `llmlab gradescope`: a class of honest and hostile submissions, graded end to end.

One class run (module 01, small limits, two jobs) serves most tests: the demo class of `examples/`
plus submissions that try the tricks a grader must survive. Each hostile submission gets no more than
what it earned honestly, the batch finishes, the other learners' grades are unchanged, and nothing
outside the sandbox is touched.
"""

from __future__ import annotations

import ast
import csv
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
import zipfile
from pathlib import Path

import pytest

from grader.harness.course import REPO_ROOT, get_module
from grader.judge import grade, report
from grader.judge import submission as submission_module
from grader.judge.submission import read_submission
from grader.judge.audit import audit_source

MODULE = get_module("01_rmsnorm")
REFERENCE = (REPO_ROOT / "solutions" / "01_rmsnorm" / "rmsnorm.py").read_text()
STUB = (REPO_ROOT / "exercises" / "01_rmsnorm" / "rmsnorm.py").read_text()
HIDDEN = REPO_ROOT / "grader" / "hidden" / "01_rmsnorm" / "test_rmsnorm_hidden.py"
EXAMPLES = REPO_ROOT / "examples" / "submissions"
MARK = f"llmlab-escape-{uuid.uuid4().hex[:8]}"  # a name that must appear nowhere outside the sandbox

FORGED = {"type": "result", "id": "01_rmsnorm/test_rmsnorm_hidden.py::test_layer_weight_is_learnable",
          "outcome": "passed", "nonce": "0" * 32, "label": "01_rmsnorm::load"}

HOSTILE = {
    # the stub (0 points honestly) printing fake result lines everywhere and writing results files
    "forger": STUB + f'''
import json as _json, os as _os, sys as _sys
_line = _json.dumps({FORGED!r}) + "\\n"
for _forged in ({{**_json.loads(_line), "type": "done"}}, {{"type": "module", "module": "01_rmsnorm", "outcome": "passed"}}):
    _line += _json.dumps(_forged) + "\\n"
print(_line * 3)
_sys.stderr.write(_line)
for _fd in range(3, 256):
    try:
        _os.write(_fd, _line.encode())
    except OSError:
        pass
for _path in ("results.json", "../results.json", "../../results.json", "/autograder/results/results.json",
              _os.path.expanduser("~/results.json")):
    try:
        with open(_path, "w") as _f:
            _f.write(_json.dumps({{"score": 1000, "tests": []}}))
    except OSError:
        pass
''',
    # a wrong rms_norm that neuters the checks and pytest's runner so that every test "passes"
    "tamper": STUB.replace('raise NotImplementedYet("rms_norm")', "return x") + '''
import sys as _sys
import _pytest.python

_pytest.python.Function.runtest = lambda self: None
for _module in list(_sys.modules.values()):
    for _name in ("assert_close", "assert_raises"):
        if hasattr(_module, _name):
            try:
                setattr(_module, _name, lambda *a, **k: None)
            except Exception:
                pass
''',
    # exits the process from inside the function under test
    "exiter": REFERENCE.replace("    input_dtype = x.dtype\n", "    import os\n    os._exit(0)\n", 1),
    # allocates far more memory than allowed as soon as it is imported
    "hog": REFERENCE + "\n_hog = [bytearray(2**30) for _ in range(64)]\n",
    # leaves sleeping processes behind at import, until the process limit stops it
    "spawner": REFERENCE + '''
import os as _os, time as _time
if not _os.path.exists("spawned"):  # once per submission (its working folder lives across its tests)
    open("spawned", "w").close()
    for _ in range(100):
        try:
            _pid = _os.fork()
        except OSError:
            break
        if _pid == 0:
            _time.sleep(600)
            _os._exit(0)
''',
    # the reference, plus: writes outside its folder, deletes its folders, prints megabytes
    "vandal": REFERENCE + f'''
import os as _os, shutil as _shutil, sys as _sys
for _path in ("/tmp/{MARK}", "/var/tmp/{MARK}", "/dev/shm/{MARK}", "../{MARK}", "../../{MARK}", "{{CLASS}}/{MARK}"):
    try:
        with open(_path, "w") as _f:
            _f.write("escaped")
    except OSError:
        pass
for _path in (".", "..", "../impl", "{{CLASS}}", "{{OUT}}"):
    _shutil.rmtree(_path, ignore_errors=True)
_sys.stdout.write("x" * (1 << 20) * 8)
''',
}


def _processes_of_sandbox_uids(out: Path) -> list[int]:
    """Processes left under the private uids this class was graded with (each record names its uid)."""
    uids = {int(u) for p in out.glob("*/record.json") for found in re.findall(r"\(uids? ([\d, ]+)\)", p.read_text())
            for u in found.split(", ")}
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid in uids:
                    found.append(int(entry))
            except OSError:
                pass
    return found


def _grade(path: Path, out: Path, *extra: str) -> tuple[subprocess.CompletedProcess, float]:
    command = [sys.executable, "-m", "grader.cli", "grade", str(path), "--out", str(out), "--modules", MODULE.name,
               "--timeout", "4", "--memory", "512", "--seed", "1234", "--quiet", *extra]
    start = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    return done, time.monotonic() - start


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """The demo class plus hostile submissions, graded once with two jobs."""
    base = tmp_path_factory.mktemp("class")
    klass, out = base / "class", base / "out"
    shutil.copytree(EXAMPLES, klass)
    (base / "sentinel.txt").write_text("keep me")
    for learner, source in HOSTILE.items():
        folder = klass / learner / MODULE.name
        folder.mkdir(parents=True)
        source = source.replace("{CLASS}", str(klass)).replace("{OUT}", str(out))
        (folder / MODULE.file).write_text(source)
    (klass / "notazip.zip").write_text("this is not a zip\n")
    with zipfile.ZipFile(klass / "sneaky.zip", "w") as archive:
        archive.writestr("01_rmsnorm/rmsnorm.py", REFERENCE)
        archive.writestr("../../escaped.py", "print('hi')\n")
    done, seconds = _grade(klass, out, "--jobs", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    print(f"\ngraded {len(list(klass.iterdir()))} submissions in {seconds:.1f} s")
    return {"class": klass, "out": out, "base": base, "stdout": done.stdout, "seconds": seconds}


def _gradebook(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "gradebook.csv", newline="") as f:
        return {row["learner"]: row for row in csv.DictReader(f)}


def _record(out: Path, learner: str) -> report.Record:
    record = report.load_record(out, learner)
    assert record is not None, f"{learner} was not graded"
    return record


@functools.lru_cache(maxsize=1)
def expected_tests() -> tuple:
    return tuple(grade.collect_expected([MODULE]))


def full() -> float:
    return round(sum(t.points for t in expected_tests()), 4)


# --------------------------------------------------------------------------------------------------
# The demo class


def test_demo_class_grades(graded):
    book = _gradebook(graded["out"])
    assert set(book) >= {"alice", "bob", "carol", "dave", "erin"}
    assert float(book["alice"]["01_rmsnorm"]) == full() == float(book["alice"]["max_total"])
    assert float(book["erin"]["total"]) == full()  # a zip of an exercises/ folder
    assert 0 < float(book["bob"]["total"]) < full()  # partly right
    assert float(book["carol"]["total"]) == 0 and float(book["dave"]["total"]) == 0
    assert "syntax error" in (graded["out"] / "carol" / "feedback.md").read_text()
    assert "stopped after 4 s" in (graded["out"] / "dave" / "feedback.md").read_text()
    bob = _record(graded["out"], "bob")
    assert any("conftest.py" in note for note in bob.ignored)  # a submission's own pytest files never run
    assert "mean:" in graded["stdout"] and "slowest submission" in graded["stdout"]


def test_grades_json_has_every_test_of_every_learner(graded):
    rows = json.loads((graded["out"] / "grades.json").read_text())
    learners = set(_gradebook(graded["out"]))
    tests = {t.name for t in expected_tests()}
    for learner in learners:
        mine = [r for r in rows if r["learner"] == learner]
        assert {r["test"] for r in mine} == tests
        assert all(set(r) >= {"module", "test", "outcome", "points", "max_points", "message"} for r in mine)


def test_results_json_follows_gradescope_schema(graded):
    for folder in graded["out"].iterdir():
        if not folder.is_dir():
            continue
        data = json.loads((folder / "results.json").read_text())
        assert isinstance(data["score"], (int, float)) and isinstance(data["tests"], list) and data["tests"]
        for test in data["tests"]:
            assert isinstance(test["name"], str) and isinstance(test["output"], str)
            assert 0 <= test["score"] <= test["max_score"]
            assert test["visibility"] in ("hidden", "after_due_date", "after_published", "visible")
        assert data["score"] == pytest.approx(sum(t["score"] for t in data["tests"]))


def _code_lines_of_hidden_suite() -> list[str]:
    """Lines of the hidden suite that are code (not its docstrings): none may reach a learner."""
    source = HIDDEN.read_text()
    docstrings = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef)) and ast.get_docstring(node):
            docstrings |= {line.strip() for line in ast.get_docstring(node).splitlines()}
    lines = [line.strip() for line in source.splitlines()]
    return [line for line in lines if len(line) > 20 and line not in docstrings and not line.startswith(('"""', "#", "@"))]


def test_feedback_never_shows_hidden_tests_or_bulk_values(graded):
    code = _code_lines_of_hidden_suite()
    assert len(code) > 20
    for folder in graded["out"].iterdir():
        if not folder.is_dir():
            continue
        for name in ("feedback.md", "results.json"):
            text = (folder / name).read_text()
            assert "tensor(" not in text and "Traceback" not in text, f"{folder.name}/{name}"
            leaked = [line for line in code if line in text]
            assert not leaked, f"{folder.name}/{name} shows hidden code: {leaked[:3]}"
    feedback = (graded["out"] / "bob" / "feedback.md").read_text()
    assert "This test checks:" in feedback and "Read: docs/01_rmsnorm.md" in feedback


# --------------------------------------------------------------------------------------------------
# Hostile submissions


def test_forged_result_lines_and_files_give_no_points(graded):
    record = _record(graded["out"], "forger")
    assert record.total == 0 and {t.kind for t in record.tests} == {"forged"}
    assert not list(graded["class"].rglob("results.json")) and not (graded["base"] / "results.json").exists()
    assert (graded["out"] / "forger" / "results.json").read_text().count('"score": 1000') == 0


def test_tampering_with_pytest_or_the_checks_gives_no_points(graded):
    record = _record(graded["out"], "tamper")
    assert record.total == 0
    assert any(t.kind == "tamper" for t in record.tests)
    assert record.review and _gradebook(graded["out"])["tamper"]["review"]  # flagged for the instructor


def test_exit_memory_and_processes_are_contained(graded):
    exiter = _record(graded["out"], "exiter")
    calls_rms_norm = [t for t in exiter.tests if "layer_rejects" not in t.test and "initialisation" not in t.test]
    assert all(t.points == 0 and t.kind == "exited" for t in calls_rms_norm if "rms" in t.test or "llama" in t.test)
    hog = _record(graded["out"], "hog")
    assert hog.total == 0 and "MemoryError" in hog.tests[0].message
    spawner = _record(graded["out"], "spawner")
    assert spawner.total == full()  # its import's leftovers are killed before the tests; the honest work counts
    assert not _processes_of_sandbox_uids(graded["out"]), "processes of the sandbox's uids survived"


def test_nothing_outside_the_sandbox_is_touched(graded):
    assert _record(graded["out"], "vandal").total == full()
    assert (graded["base"] / "sentinel.txt").read_text() == "keep me"
    for folder in (Path("/tmp"), Path("/var/tmp"), Path("/dev/shm"), graded["base"], graded["class"]):
        assert not list(folder.glob(f"{MARK}*")), f"a submission wrote into {folder}"
    assert (graded["class"] / "alice" / "01_rmsnorm" / "rmsnorm.py").is_file()
    assert _record(graded["out"], "alice").total == full()  # other learners unchanged


def test_bad_zips_are_rejected_for_that_learner_only(graded):
    book = _gradebook(graded["out"])
    assert float(book["notazip"]["total"]) == 0 and "not a zip" in book["notazip"]["review"]
    assert float(book["sneaky"]["total"]) == 0 and "unsafe path" in book["sneaky"]["review"]
    assert "not graded" in (graded["out"] / "sneaky" / "feedback.md").read_text()
    assert not (graded["base"] / "escaped.py").exists() and not (graded["base"].parent / "escaped.py").exists()


def test_a_zip_too_large_once_unpacked_is_rejected(tmp_path, monkeypatch):
    monkeypatch.setattr(submission_module, "MAX_UNPACKED_BYTES", 1000)
    with zipfile.ZipFile(tmp_path / "bomb.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("01_rmsnorm/rmsnorm.py", "0" * 5000)
    bomb = read_submission("bomb", tmp_path / "bomb.zip")
    assert "unpacks to" in bomb.rejected and not bomb.files


def test_audit_flags_tricks_without_failing_honest_code():
    assert audit_source(REFERENCE) == [] and audit_source(STUB) == []
    for source, reason in [
        ("import _pytest.runner", "pytest internals"),
        ("import gc\ngc.get_objects()", "gc"),
        ("import inspect", "inspect"),
        ("import ctypes", "ctypes"),
        ("import sys\nsys._getframe(1).f_locals", "stack frames"),
        ("import os\nos._exit(0)", "os functions"),
        ("open('/proc/self/mem')", "system paths"),
        ("import builtins\nbuiltins.len = None", "builtins"),
    ]:
        flags = audit_source(source)
        assert any(reason in flag for flag in flags), (source, flags)


# --------------------------------------------------------------------------------------------------
# Resuming, and the Gradescope bundle


def test_rerun_resumes_and_grades_only_new_or_changed_submissions(graded):
    out = graded["out"]
    before = {p.parent.name: p.stat().st_mtime_ns for p in out.glob("*/record.json")}
    shutil.copytree(graded["class"] / "alice", graded["class"] / "frank")
    done, _ = _grade(graded["class"], out, "--jobs", "2")
    assert done.returncode == 0, done.stderr
    after = {p.parent.name: p.stat().st_mtime_ns for p in out.glob("*/record.json")}
    assert {k for k in after if after[k] != before.get(k)} == {"frank"}
    assert float(_gradebook(out)["frank"]["total"]) == full()  # the same code, the same grade
    assert len(_gradebook(out)) == len(before) + 1


def test_gradescope_bundle_runs_as_gradescope_runs_it(tmp_path):
    bundle = tmp_path / "autograder.zip"
    done = subprocess.run([sys.executable, "-m", "grader.cli", "gradescope", "build", str(bundle), "--timeout", "4"],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    root = tmp_path / "autograder"
    with zipfile.ZipFile(bundle) as archive:
        names = archive.namelist()
        archive.extractall(root / "source")
    assert {"setup.sh", "run_autograder", "grader/hidden/01_rmsnorm/test_rmsnorm_hidden.py"} <= set(names)
    assert not any(n.startswith(("solutions/", "tests/", "examples/")) for n in names)
    shutil.copytree(EXAMPLES / "bob", root / "submission")
    env = {**os.environ, "LLMLAB_AUTOGRADER_ROOT": str(root), "LLMLAB_PYTHON": sys.executable}
    script = root / "source" / "run_autograder"
    script.chmod(0o755)
    done = subprocess.run([str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads((root / "results" / "results.json").read_text())
    assert 0 < results["score"] < full() and results["tests"]
    assert results["score"] == pytest.approx(sum(t["score"] for t in results["tests"]))


# --------------------------------------------------------------------------------------------------
# The references, graded as a learner's submission


LIST_BOTH_WAYS = """
import json, sys
import pytest
from grader.harness.course import get_module
from grader.judge.grade import collect_expected
from grader.judge.worker import normal_id

listed = [t.id for t in collect_expected([get_module(name) for name in sys.argv[1:]])]  # as the judge lists them
imported = sorted(name for name in ("transformers", "peft", "bitsandbytes") if name in sys.modules)

class Collect:  # as a worker collects them (no --collect-only: the suites import their oracles), running nothing
    ids = []
    def pytest_collection_modifyitems(self, items):
        self.ids += [normal_id(item) for item in items]
        items.clear()

suites = ["grader/hidden/" + name for name in sys.argv[1:]]
pytest.main([*suites, "-p", "no:cacheprovider", "-q", "--import-mode=importlib", "--assert=plain"], plugins=[Collect()])
print("llmlab: " + json.dumps({"listed": listed, "imported": imported, "collected": Collect.ids,
                               "oracles": "transformers" in sys.modules and "bitsandbytes" in sys.modules}))
"""


@pytest.mark.slow
def test_the_judge_lists_the_tests_a_worker_runs_without_importing_the_oracles():
    """The judge lists the hidden suites with --collect-only, where they leave out their oracles (transformers,
    peft, bitsandbytes: seconds of imports, see `collect_only()`); a worker collects them with the oracles
    imported. Both must name the same tests, or a test would count as missing in every submission."""
    names = [m.name for m in grade.graded_modules()]
    done = subprocess.run([sys.executable, "-c", LIST_BOTH_WAYS, *names], capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert "llmlab: " in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
    seen = json.loads(done.stdout.rsplit("llmlab: ", 1)[1])
    assert seen["imported"] == [], f"the judge's listing imported {seen['imported']}"
    assert seen["oracles"], "the worker-style collection did not import the oracles (a suite cached as listed?)"
    assert len(seen["listed"]) > 600
    assert seen["listed"] == seen["collected"], sorted(set(seen["listed"]) ^ set(seen["collected"]))[:20]


@pytest.mark.slow
def test_the_references_get_full_marks_from_llmlab_grade(tmp_path):
    """Every module's reference, graded in the sandbox with the default limits, earns every point.

    The sandbox is not pytest: tests run in a runner forked per module under a private uid, the hidden suite's files
    unreadable, /tmp and the network private. A suite that only passes under plain pytest fails here
    (module 08's ranks must import the suite's worker functions; Python installed under /root must stay
    importable for the private uid; tmp_path needs its reports; torchrun needs more than --timeout).
    """
    from grader.harness.course import existing_modules

    learner = tmp_path / "class" / "reference"
    modules = [m for m in existing_modules() if (REPO_ROOT / "grader" / "hidden" / m.name).is_dir()]
    for module in modules:
        (learner / module.name).mkdir(parents=True)
        shutil.copy(REPO_ROOT / "solutions" / module.name / module.file, learner / module.name / module.file)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "grader.cli", "grade", str(learner.parent), "--out", str(out), "--seed", "1234", "--quiet"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    record = _record(out, "reference")
    lost = [f"{t.module}::{t.test}: {t.message}" for t in record.tests if t.points < t.max_points]
    assert not lost, f"the references lost points under llmlab grade ({record.isolation}):\n" + "\n\n".join(lost)
    print(f"\nreferences graded in {record.seconds:.0f} s ({record.isolation})")
