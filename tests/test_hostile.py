"""The hostile class: attacks on the grader itself, graded end to end through `llmlab grade` (module 01).

Each file of `tests/hostile/` (but `_wrong.py`) is one attack, appended to a wrong implementation that
earns nothing on its own (`_wrong.py`): reading the reference from the checkout's git history or from the
disk, patching torch's comparisons, json, pytest's runner or the grader's tolerance tables in place,
walking frames to call the test's own oracle, a global TorchFunctionMode, an obfuscated (`exec` of base64)
patch, a Tensor subclass that agrees with everything, TensorBase's C methods edited through the dict behind
its read-only `__dict__`. The earlier attacks (forged results, exits, memory
and fork bombs, floods, vandalism) are in tests/test_grade.py. Every attack must earn 0 points and be
flagged in the review column; the honest controls (the reference, and one written another way with
warnings, a namedtuple, functools and traceback) full marks with an empty review column; no process of
the run's private uids is left; nothing is written outside the sandbox.
"""

from __future__ import annotations

import base64
import csv
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from grader.harness.course import REPO_ROOT, get_module
from grader.judge import report

MODULE = get_module("01_rmsnorm")
HOSTILE = Path(__file__).parent / "hostile"
WRONG = (HOSTILE / "_wrong.py").read_text()
REFERENCE = (REPO_ROOT / "solutions" / MODULE.name / MODULE.file).read_text()
# the obfuscated patch: every `assert_close` and `assert_raises` the suites and the checks hold becomes a no-op
PAYLOAD = base64.b64encode(b"""
import sys
for module in list(sys.modules.values()):
    for name in ("assert_close", "assert_raises", "assert_shape"):
        if hasattr(module, name):
            try:
                setattr(module, name, lambda *a, **k: None)
            except Exception:
                pass
""").decode()
READS_THE_DISK = {"git_reference", "disk_walk"}  # harmless only where bubblewrap keeps the disk out of reach
CONTROLS = {"reference": REFERENCE, "honest_alternative": (HOSTILE / "honest_alternative.py").read_text()}


def attacks() -> dict[str, str]:
    found = {}
    for path in sorted(HOSTILE.glob("*.py")):
        if path.name.startswith("_") or path.stem in CONTROLS:
            continue
        source = path.read_text().replace("{REPO}", str(REPO_ROOT)).replace("{PAYLOAD}", PAYLOAD)
        found[path.stem] = WRONG + "\n\n" + source
    return found


def _gradebook(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "gradebook.csv", newline="") as f:
        return {row["learner"]: row for row in csv.DictReader(f)}


def _processes_of(uids: set[int]) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid in uids:
                    found.append(int(entry))
            except OSError:
                pass
    return found


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """The hostile class and its honest controls, graded once (two jobs, small limits)."""
    base = tmp_path_factory.mktemp("hostile")
    klass, out = base / "class", base / "out"
    for learner, source in {**attacks(), **CONTROLS}.items():
        folder = klass / learner / MODULE.name
        folder.mkdir(parents=True)
        (folder / MODULE.file).write_text(source)
    command = [sys.executable, "-m", "grader.cli", "grade", str(klass), "--out", str(out), "--modules", MODULE.name,
               "--timeout", "5", "--memory", "1024", "--jobs", "2", "--seed", "99", "--quiet"]
    start = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=REPO_ROOT)
    seconds = time.monotonic() - start
    assert done.returncode == 0, done.stdout + done.stderr
    print(f"\ngraded the hostile class ({len(attacks())} attacks, {len(CONTROLS)} controls) in {seconds:.0f} s")
    records = {learner: report.load_record(out, learner) for learner in [*attacks(), *CONTROLS]}
    return {"out": out, "records": records, "book": _gradebook(out), "klass": klass}


@pytest.mark.parametrize("attack", sorted(attacks()))
def test_an_attack_earns_nothing_and_is_flagged(graded, attack):
    record = graded["records"][attack]
    assert record is not None, f"{attack} was not graded"
    if attack in READS_THE_DISK and not record.isolation.startswith("bubblewrap"):
        pytest.skip(f"without bubblewrap the disk is readable ({record.isolation})")
    earned = [f"{t.test}: {t.outcome}" for t in record.tests if t.points > 0]
    assert record.total == 0, f"{attack} earned {record.total} points: {earned[:5]}"
    assert graded["book"][attack]["review"], f"{attack} is not flagged for review"


@pytest.mark.parametrize("learner", sorted(CONTROLS))
def test_an_honest_control_gets_full_marks_and_no_flag(graded, learner):
    record = graded["records"][learner]
    lost = [f"{t.test}: {t.message}" for t in record.tests if t.points < t.max_points]
    assert not lost, f"{learner} lost points:\n" + "\n".join(lost[:3])
    assert graded["book"][learner]["review"] == "", graded["book"][learner]["review"]


def test_run_time_tampering_shows_in_the_review_column(graded):
    """A patch the audit cannot read (base64) is caught at run time, and the gradebook says so too."""
    review = graded["book"]["base64_exec"]["review"]
    assert "run time" in review and "01_rmsnorm" in review
    kinds = {t.kind for t in graded["records"]["base64_exec"].tests}
    assert "tamper" in kinds


def test_no_process_is_left_and_nothing_is_written_outside(graded):
    uids = {int(u) for r in graded["records"].values() for found in re.findall(r"\(uids? ([\d, ]+)\)", r.isolation)
            for u in found.split(", ")}
    assert not _processes_of(uids), "processes of the run's private uids survived"
    assert not any(p.name != "rmsnorm.py" for p in graded["klass"].rglob("*") if p.is_file())


# --------------------------------------------------------------------------------------------------
# The static audit: the attacks' constructs, never the course's


def test_the_audit_leaves_the_course_alone():
    """No reference and no stub is flagged (03's setattr on a submodule, 08's socket and multiprocessing)."""
    from grader.harness.course import existing_modules
    from grader.judge.audit import audit_files

    for module in existing_modules():
        for root in ("solutions", "exercises"):
            path = REPO_ROOT / root / module.name / module.file
            if path.is_file():
                assert audit_files({f"{module.name}/{module.file}": path.read_bytes()}) == [], f"{root}/{module.name}"


def test_the_audit_reads_only_the_graded_modules():
    from grader.judge.audit import audit_files

    files = {"01_rmsnorm/rmsnorm.py": REFERENCE.encode(), "02_rope/rope.py": b"import ctypes\n"}
    assert audit_files(files, ["01_rmsnorm"]) == []
    assert audit_files(files, ["01_rmsnorm", "02_rope"]) == ["02_rope/rope.py:1: imports ctypes"]


@pytest.mark.parametrize("attack", sorted(attacks()))
def test_the_audit_flags_every_attack_with_its_line(attack):
    from grader.judge.audit import audit_source

    flags = audit_source(attacks()[attack])
    assert flags and all(re.match(r"line \d+: ", flag) for flag in flags), flags


def test_private_uids_are_leased_machine_wide():
    """Two leases at once (two `llmlab grade` runs, or two jobs of one) never get the same uid."""
    from grader.judge.sandbox import UID_BASE, UID_COUNT, private_uid

    with private_uid() as first, private_uid() as second:
        assert first != second
        assert UID_BASE <= first < UID_BASE + UID_COUNT and UID_BASE <= second < UID_BASE + UID_COUNT


# --------------------------------------------------------------------------------------------------
# Lanes: modules of one submission graded at once, each lane under its own uid

LANE_MODULES = ("01_rmsnorm", "02_rope")
# At import, a child that kills every process it may signal, again and again for 20 s (kill(-1) spares the
# caller): its own module process and runners, and, were the lanes to share a uid, the other lane's
KILLER = """
import os as _os, signal as _signal, time as _time
if _os.fork() == 0:
    _end = _time.monotonic() + 20
    while _time.monotonic() < _end:
        try:
            _os.kill(-1, _signal.SIGKILL)
        except OSError:
            pass
        _time.sleep(0.005)
    _os._exit(0)
"""


def _lane_class(base: Path, learners: dict[str, dict[str, str]]) -> Path:
    for learner, files in learners.items():
        for module_name, source in files.items():
            module = get_module(module_name)
            (base / learner / module.name).mkdir(parents=True)
            (base / learner / module.name / module.file).write_text(source)
    return base


def _grade_lanes(klass: Path, out: Path, lanes: int, modules=LANE_MODULES) -> dict:
    command = [sys.executable, "-m", "grader.cli", "grade", str(klass), "--out", str(out), "--modules", ",".join(modules),
               "--timeout", "5", "--memory", "1024", "--jobs", "1", "--lanes", str(lanes), "--seed", "7", "--quiet"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    return {learner: report.load_record(out, learner) for learner in sorted(p.name for p in klass.iterdir())}


def _reference(module_name: str) -> str:
    module = get_module(module_name)
    return (REPO_ROOT / "solutions" / module.name / module.file).read_text()


def test_a_module_that_kills_all_it_can_costs_only_its_own_lane(tmp_path):
    """Two modules graded at once: one kills every process its uid may signal; the other, graded meanwhile
    in the other lane under another uid, keeps its full marks, and no process of either uid is left."""
    from grader.judge.sandbox import detect_isolation

    if not detect_isolation().setuid:  # the learner's code would run as this uid: kill(-1) would reach us too
        pytest.skip("no private uids here (not root): the killer would kill the test run itself")
    klass = _lane_class(tmp_path / "class", {"killer": {"01_rmsnorm": _reference("01_rmsnorm") + KILLER,
                                                        "02_rope": _reference("02_rope")}})
    record = _grade_lanes(klass, tmp_path / "out", lanes=2)["killer"]
    by_module = {name: [t for t in record.tests if t.module == name] for name in LANE_MODULES}
    assert sum(t.points for t in by_module["01_rmsnorm"]) == 0
    lost = [f"{t.test}: {t.message}" for t in by_module["02_rope"] if t.points < t.max_points]
    assert not lost, "the other lane lost points:\n" + "\n".join(lost[:3])
    uids = {int(u) for u in re.findall(r"\(uids ([\d, ]+)\)", record.isolation)[0].split(", ")}
    assert len(uids) == 2 and not _processes_of(uids), "processes of the lanes' uids survived"


def test_lanes_give_the_same_grades(tmp_path):
    """One lane or two, the grades are the same (a correct submission, a wrong one, one that does not load)."""
    learners = {"right": {name: _reference(name) for name in LANE_MODULES},
                "wrong": {"01_rmsnorm": WRONG, "02_rope": _reference("02_rope").replace("cos", "sin", 1)},
                "broken": {"01_rmsnorm": "raise ImportError('no')\n", "02_rope": _reference("02_rope")}}
    klass = _lane_class(tmp_path / "class", learners)
    one, two = (_grade_lanes(klass, tmp_path / f"out-{lanes}", lanes) for lanes in (1, 2))
    for learner in learners:
        assert [(t.test, t.outcome, t.points) for t in one[learner].tests] == [(t.test, t.outcome, t.points) for t in two[learner].tests]
    assert one["right"].total == one["right"].max_total and 0 < one["broken"].total < one["broken"].max_total
    assert one["wrong"].total < one["wrong"].max_total


def test_a_patch_of_a_suites_helper_module_is_tamper(tmp_path):
    """08's hidden suite computes truths with functions of its `launch_hidden_workers.py` (readable, importable by
    the learner's code): replacing one at import is caught like a patch of the suite itself."""
    module = get_module("08_distributed_launch")
    patch = """

import sys as _sys

_helpers = _sys.modules.get("launch_hidden_workers")
if _helpers is not None:
    _original = _helpers.make_mlp
    _helpers.make_mlp = lambda *a, **k: _original(*a, **k)  # it could as well return a model that agrees with anything
"""
    klass = _lane_class(tmp_path / "class", {"patcher": {module.name: _reference(module.name) + patch}})
    record = _grade_lanes(klass, tmp_path / "out", lanes=1, modules=[module.name])["patcher"]
    assert record.total == 0 and {t.kind for t in record.tests} == {"tamper"}
    assert "launch_hidden_workers.make_mlp" in record.tests[0].message


def test_a_venv_under_tmp_stays_enterable_in_bwrap(monkeypatch, tmp_path):
    """With the checkout and its venv under /tmp (a CI clone), the folders on the way to the venv are made
    after the private /tmp, so the tmpfs does not cover them and bwrap does not make them again with mode 700."""
    from grader.judge import sandbox

    monkeypatch.setattr(sandbox, "runtime_paths", lambda *args, **kwargs: ["/tmp/llmlab-clone/.venv"])
    args = sandbox.bwrap_arguments(tmp_path)
    pairs = list(zip(args, args[1:]))
    tmpfs = pairs.index(("--tmpfs", "/tmp"))
    made = pairs.index(("--dir", "/tmp/llmlab-clone"))
    bound = pairs.index(("--ro-bind", "/tmp/llmlab-clone/.venv"))
    assert tmpfs < made < bound, (tmpfs, made, bound)
