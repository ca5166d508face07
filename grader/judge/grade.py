"""`llmlab grade`: grade a class of submissions with the hidden suites, isolated and resumable.

The judge (this process) never runs a submission's code. It:

1. collects the hidden suites itself (test ids, points, what each test checks), learner code not loaded;
2. reads each submission (folder or zip), keeps only the course's module files, reports the rest;
3. runs a worker (grader/judge/worker.py) per submission in a sandbox (grader/judge/sandbox.py) that forks one child
   per test, and reads back one result per test over a pipe;
4. accepts only results for the ids it collected, one each; a test with no result failed, with the
   reason; points come from its own collection, the messages from the test's description, the teaching
   assertion message and the chapter (never from a traceback: hidden tests' source stays hidden);
5. writes, atomically, `DIR/<learner>/{results.json,feedback.md,record.json}`, then `grades.json` and
   `gradebook.csv`; a learner whose `record.json` matches the submission is skipped on the next run.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import queue
import re
import secrets
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from grader.judge.audit import audit_files
from grader.harness.course import MODULES, REPO_ROOT, Module, find_module, get_module
from grader.harness.files import atomic_write
from grader.judge.sandbox import UID_BASE, Isolation, Sandbox, detect_isolation, has_hidden_suite, hidden_suite, secret_paths

LEARNER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,99}$")
MAX_FILE_BYTES = 1 << 20
MAX_ENTRIES = 10_000
MAX_ZIP_BYTES = 50 << 20  # a zip larger than this, or that unpacks to more than MAX_UNPACKED_BYTES, is rejected
MAX_UNPACKED_BYTES = 200 << 20
RECORD = "record.json"


# --------------------------------------------------------------------------------------------------
# What the judge expects: collected here, from the repository's hidden suites, no learner code


@dataclass(frozen=True)
class ExpectedTest:
    id: str  # "01_rmsnorm/test_rmsnorm_hidden.py::test_x[case]"
    module: str
    points: float
    checks: str  # the test's one-line docstring
    timeout: float = 0.0  # seconds the test asks for with @pytest.mark.timeout (0: the grader's --timeout)

    @property
    def name(self) -> str:
        return self.id.split("::", 1)[-1]

    def seconds_allowed(self, default: float) -> float:
        """The grader's --timeout, or more if the test asks for it."""
        return max(default, self.timeout)


class _Collect:
    def __init__(self) -> None:
        self.tests: list[ExpectedTest] = []
        self.errors: list[str] = []

    def pytest_collectreport(self, report) -> None:
        if report.failed:
            self.errors.append(f"{report.nodeid}: {report.longreprtext[-2000:]}")

    def pytest_collection_finish(self, session) -> None:
        from grader.harness.plugin import _what_it_checks, course_module_of, timeout_for
        from grader.judge.worker import normal_id

        for item in session.items:
            module = course_module_of(item.path)
            points = dict(item.user_properties).get("points") or 0.0
            self.tests.append(ExpectedTest(normal_id(item), module.name if module else "", float(points), _what_it_checks(item),
                                           timeout_for(item, 0.0)))


def collect_expected(modules: list[Module]) -> list[ExpectedTest]:
    """The hidden tests of `modules`, in order, with their points: collected in this (trusted) process."""
    import pytest

    from grader.harness.loader import clear_cache

    collector = _Collect()
    with tempfile.TemporaryDirectory() as folder:
        ini = Path(folder) / "pytest.ini"
        ini.write_text("[pytest]\n")
        args = [*(str(hidden_suite(m)) for m in modules), "--collect-only", "-q", "-c", str(ini), "--rootdir", str(REPO_ROOT),
                "-p", "no:cacheprovider", "-p", "no:llmlab", "-p", "grader.harness.plugin", "--import-mode=importlib", "--assert=plain"]
        with contextlib.redirect_stdout(io.StringIO()):
            code = pytest.main(args, plugins=[collector])
    clear_cache()
    if collector.errors or code not in (0, 5):
        raise RuntimeError("the hidden suites do not collect:\n" + "\n".join(collector.errors))
    return collector.tests


def graded_modules(names: list[str] | None = None) -> list[Module]:
    """The modules to grade: those named, or every registered module that has a hidden suite."""
    if names:
        modules = [get_module(name) for name in names]
        missing = [m.name for m in modules if not has_hidden_suite(m)]
        if missing:
            raise KeyError(f"no hidden suite for {', '.join(missing)} (grader/hidden/NN_name/test_*.py)")
        return modules
    return [m for m in MODULES if has_hidden_suite(m)]


# --------------------------------------------------------------------------------------------------
# Submissions


@dataclass
class Submission:
    learner: str
    path: Path
    files: dict[str, bytes] = field(default_factory=dict)  # "01_rmsnorm/rmsnorm.py" -> content
    ignored: list[str] = field(default_factory=list)  # "conftest.py (not a module file)"
    rejected: str = ""  # why the whole submission was refused (not a zip, unsafe paths, too large)

    @property
    def sha256(self) -> str:
        digest = hashlib.sha256(self.rejected.encode())
        for name, data in sorted(self.files.items()):
            digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
        return digest.hexdigest()


def _looks_like_submission(folder: Path) -> bool:
    names = {m.name for m in MODULES} | {m.file for m in MODULES}
    return any(child.name in names for child in folder.iterdir())


def find_submissions(path: Path) -> tuple[list[tuple[str, Path]], list[str]]:
    """(learner id, path) of each submission under `path`, and the entries that are not submissions."""
    path = Path(path)
    if path.is_file():
        return ([(path.stem, path)], []) if path.suffix == ".zip" else ([], [f"{path}: not a folder or a .zip"])
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such folder or zip")
    if _looks_like_submission(path):
        return [(path.name, path)], []
    found, skipped = [], []
    for child in sorted(path.iterdir()):
        if child.name.startswith(".") or child.is_symlink():
            continue
        learner = child.stem if child.suffix == ".zip" else child.name
        if not (child.is_dir() or child.suffix == ".zip"):
            skipped.append(f"{child.name}: not a folder or a .zip")
        elif not LEARNER_ID.match(learner):
            skipped.append(f"{child.name}: a learner id is letters, digits and . _ @ + - only")
        else:
            found.append((learner, child))
    return found, skipped


def _entries(path: Path):
    """(relative path, size, reader) for every regular file of a folder or a zip; symlinks are skipped."""
    if path.is_dir():
        for folder, dirs, files in os.walk(path, followlinks=False):
            dirs.sort()
            for name in sorted(files):
                full = Path(folder) / name
                relative = full.relative_to(path).as_posix()
                if full.is_symlink() or not full.is_file():
                    yield relative, -1, None
                else:
                    yield relative, full.stat().st_size, full.read_bytes
        return
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if info.is_dir():
                continue
            is_link = (info.external_attr >> 16) & 0o170000 == 0o120000
            yield info.filename, (-1 if is_link else info.file_size), (None if is_link else _member_reader(path, info))


def _member_reader(path: Path, info: zipfile.ZipInfo):
    """Read one member later (the archive is opened again: the listing's handle is closed by then)."""
    def read() -> bytes:
        with zipfile.ZipFile(path) as archive, archive.open(info) as member:
            data = member.read(MAX_FILE_BYTES + 1)
        if len(data) > MAX_FILE_BYTES:
            raise ValueError(f"larger than {MAX_FILE_BYTES >> 20} MB once unpacked")
        return data

    return read


def _zip_problem(path: Path) -> str:
    """Why a zip cannot be graded safely ("" when it can): not a zip, too large, unsafe names."""
    if path.stat().st_size > MAX_ZIP_BYTES:
        return f"{path.name} is larger than {MAX_ZIP_BYTES >> 20} MB"
    if not zipfile.is_zipfile(path):
        return f"{path.name} is not a zip file (or it is damaged): submit a .zip of your exercises folder"
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        return f"{path.name} could not be read as a zip ({error})"
    for info in infos:
        name = info.filename.replace("\\", "/")
        if name.startswith("/") or ".." in name.split("/") or (len(name) > 1 and name[1] == ":"):
            return f"{path.name} holds an unsafe path ({info.filename!r}: absolute or with '..'): it was not unpacked"
    if len(infos) > MAX_ENTRIES:
        return f"{path.name} holds {len(infos)} files (at most {MAX_ENTRIES})"
    unpacked = sum(info.file_size for info in infos)
    if unpacked > MAX_UNPACKED_BYTES:
        return f"{path.name} unpacks to {unpacked >> 20} MB (at most {MAX_UNPACKED_BYTES >> 20} MB)"
    return ""


def read_submission(learner: str, path: Path) -> Submission:
    """Keep the course's module files (`NN_name/<file>`, or a bare `<file>`), report everything else."""
    submission = Submission(learner, Path(path))
    if Path(path).is_file():
        submission.rejected = _zip_problem(Path(path))
        if submission.rejected:
            return submission
    try:
        entries = list(_entries(Path(path)))
    except (zipfile.BadZipFile, OSError, RuntimeError, ValueError) as error:
        submission.rejected = f"{Path(path).name} could not be read ({error})"
        return submission
    names = [name for name, _, _ in entries]
    # a single top folder (alice/01_rmsnorm/..., exercises/01_rmsnorm/...) is unwrapped
    tops = {name.split("/", 1)[0] for name in names if "/" in name}
    prefix = ""
    if len(tops) == 1 and all("/" in n for n in names) and find_module(next(iter(tops))) is None:
        prefix = next(iter(tops)) + "/"
    by_file = {m.file: m for m in MODULES}
    for count, (name, size, read) in enumerate(entries):
        relative = name[len(prefix):] if prefix and name.startswith(prefix) else name
        parts = relative.split("/")
        module = None
        if len(parts) == 2 and find_module(parts[0]) is not None and find_module(parts[0]).file == parts[1]:
            module = find_module(parts[0])
        elif len(parts) == 1 and parts[0] in by_file:
            module = by_file[parts[0]]
        if count >= MAX_ENTRIES:
            submission.ignored.append(f"... and {len(entries) - count} more files")
            break
        if module is None:
            submission.ignored.append(f"{relative} (not a module file)")
        elif read is None:
            submission.ignored.append(f"{relative} (a link, not a file)")
        elif size > MAX_FILE_BYTES:
            submission.ignored.append(f"{relative} (larger than {MAX_FILE_BYTES >> 20} MB)")
        elif f"{module.name}/{module.file}" in submission.files:
            submission.ignored.append(f"{relative} (a second copy of {module.name}/{module.file})")
        else:
            try:
                submission.files[f"{module.name}/{module.file}"] = read()
            except (zipfile.BadZipFile, OSError, RuntimeError, ValueError) as error:  # a damaged or encrypted member
                submission.ignored.append(f"{relative} (could not be read: {error})")
    return submission


# --------------------------------------------------------------------------------------------------
# Results


@dataclass
class Options:
    out: Path
    modules: list[Module]
    jobs: int = 1
    timeout: float = 10.0  # seconds per test
    memory_mb: int = 2048  # memory a test may add to the worker's
    force: bool = False
    seed: int = 0
    isolation: Isolation | None = None
    startup_s: float = 300.0  # a worker that collects nothing for this long is stopped


@dataclass
class TestOutcome:
    module: str
    test: str
    outcome: str  # passed, failed, error, skipped
    points: float
    max_points: float
    message: str = ""
    kind: str = ""  # assertion, todo, load, timeout, exited, memory, exception, tamper, missing, ...
    duration: float = 0.0


@dataclass
class Record:
    learner: str
    submission: str
    sha256: str
    modules: list[str]
    tests: list[TestOutcome]
    ignored: list[str]
    review: list[str]
    isolation: str
    seconds: float
    worker_error: str = ""
    rejected: str = ""

    def module_points(self, module: str) -> float:
        return round(sum(t.points for t in self.tests if t.module == module), 4)

    def module_max(self, module: str) -> float:
        return round(sum(t.max_points for t in self.tests if t.module == module), 4)

    @property
    def total(self) -> float:
        return round(sum(t.points for t in self.tests), 4)

    @property
    def max_total(self) -> float:
        return round(sum(t.max_points for t in self.tests), 4)

    @classmethod
    def from_json(cls, data: dict) -> "Record":
        return cls(**{**data, "tests": [TestOutcome(**t) for t in data["tests"]]})


def teaching_message(test: ExpectedTest, kind: str, text: str, line: int | None, options: Options) -> str:
    """The feedback of a test that did not pass: what went wrong, what the test checks, what to read."""
    module = get_module(test.module)
    file = f"{module.name}/{module.file}"
    where = f" (your {file}, line {line})" if line else ""
    text = (text or "").strip()
    first = {
        "todo": f"{text} in {file} is not implemented yet: write it as its docstring says.",
        "load": f"Your code could not be loaded, so this test could not run:\n  {text}\n"
                f"  Next step: fix the file so that `python {file}` runs without error.",
        "missing": f"There is no {file} in your submission: the tests of {module.name} need it.",
        "rejected": f"Your submission was not graded: {text}.",
        "timeout": f"This test was stopped after {test.seconds_allowed(options.timeout):g} s: an infinite loop, or code much slower than needed?",
        "exited": f"{text}: your code crashed, called exit, or used more memory or processes than allowed "
                  f"({options.memory_mb} MB).",
        "memory": f"Your code ran out of memory (the limit is {options.memory_mb} MB more than the grader's own){where}: {text}",
        "exit": f"Your code called {text} during the test.",
        "tamper": "The grader's own functions were changed while your code ran, so this test gets no points; "
                  "your submission is flagged for review by the instructor.",
        "exception": f"Your code raised {text}{where}.",
        "assertion": text or "A check of this test failed.",
        "skipped": f"This test was skipped ({text}) and gives no points.",
        "worker": f"No result came back for this test: {text}",
    }.get(kind, text or "This test did not pass.")
    return f"{first}\n  This test checks: {test.checks}\n  Read: {module.chapter}"


def gradescope_results(record: Record) -> dict:
    """Gradescope's autograder schema: https://gradescope-autograders.readthedocs.io/en/latest/specs/"""
    tests = [
        {
            "name": f"{t.module}: {t.test}",
            "score": t.points,
            "max_score": t.max_points,
            "status": "passed" if t.outcome == "passed" else "failed",
            "output": t.message,
            "visibility": "visible",
        }
        for t in record.tests
    ]
    output = f"{record.total:g} / {record.max_total:g} points."
    if record.rejected:
        output = f"Your submission was not graded: {record.rejected}.\n" + output
    if record.ignored:
        output += "\nIgnored files (only the module files are graded): " + ", ".join(record.ignored)
    return {"score": record.total, "execution_time": round(record.seconds, 1), "output": output, "tests": tests}


def feedback_markdown(record: Record) -> str:
    lines = [f"# Feedback for {record.learner}", "", f"**{record.total:g} / {record.max_total:g} points**", ""]
    if record.rejected:
        lines += [f"Your submission was not graded: {record.rejected}.", ""]
    lines += ["| module | points |", "| --- | --- |"]
    lines += [f"| {m} | {record.module_points(m):g} / {record.module_max(m):g} |" for m in record.modules]
    for module in record.modules:
        failed = [t for t in record.tests if t.module == module and t.outcome != "passed"]
        if not failed:
            continue
        lines += ["", f"## {module}", ""]
        for t in failed:
            lines += [f"### `{t.test}` ({t.points:g} / {t.max_points:g})", "", "```text", t.message.strip(), "```", ""]
    if record.ignored:
        lines += ["", "## Files that were not graded", ""] + [f"- {name}" for name in record.ignored]
    return "\n".join(lines).rstrip() + "\n"


# --------------------------------------------------------------------------------------------------
# One submission in its sandbox


class _Slots:
    """Private uids for parallel workers: learners never share a uid at the same time."""

    def __init__(self, jobs: int) -> None:
        self.free: queue.Queue[int] = queue.Queue()
        for slot in range(jobs):
            self.free.put(slot)


def _kill_uid(uid: int) -> None:
    """Kill every process left running under a slot's private uid (only our workers' children use it)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    os.kill(int(entry), signal.SIGKILL)


def _hideable(paths: list[str], sandbox: Path) -> list[str]:
    """Never hide a folder the worker itself needs: the sandbox, Python, or their parents."""
    needed = [Path(sandbox).resolve(), Path(sys.prefix).resolve(), Path(sys.executable).resolve()]
    return [p for p in paths if Path(p) != Path("/") and not any(n == Path(p) or Path(p) in n.parents for n in needed)]


def run_worker(submission: Submission, modules: list[Module], expected: list[ExpectedTest], options: Options,
               uid: int | None, on_result=None) -> tuple[dict[str, dict], dict[str, dict], str]:
    """Run the sandboxed worker; return (results by test id, load failures by module, worker error)."""
    isolation = options.isolation or detect_isolation()
    box = Sandbox.create({k: v for k, v in submission.files.items() if find_module(k.split("/")[0]) in modules}, modules, uid)
    wanted = {t.id for t in expected}
    results: dict[str, dict] = {}
    loads: dict[str, dict] = {}
    error = ""
    read_end, write_end = os.pipe()
    log = tempfile.TemporaryFile()
    config = {
        "seed": options.seed,
        "timeout": options.timeout,
        "memory_mb": options.memory_mb,
        "uid": uid if isolation.setuid else None,
        "result_fd": write_end,
        "work": str(box.root / "work"),
        "impl": str(box.root / "impl"),
        "suites": [str(box.root / "suite" / m.name) for m in modules],
        "ini": str(box.root / "pytest.ini"),
        "root": str(box.root),
        "mount_ns": isolation.namespaces,
        "net_ns": isolation.namespaces,
        "hide": _hideable(secret_paths((Path(submission.path).resolve().parent, Path(options.out).resolve())), box.root),
    }
    process = subprocess.Popen(box.command(isolation), stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
                               cwd=box.root, env=box.environment(), pass_fds=(write_end,), start_new_session=True)
    os.close(write_end)
    try:
        process.stdin.write((json.dumps(config) + "\n").encode())
        process.stdin.close()
        budget = options.startup_s + sum(t.seconds_allowed(options.timeout) + 5 for t in expected) + len(modules) * (options.timeout + 5)
        deadline = time.monotonic() + budget
        buffer = b""
        done = False
        while not done:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                error = f"the grading worker did not finish within {budget:.0f} s"
                break
            ready, _, _ = select.select([read_end], [], [], min(remaining, 5))
            if not ready:
                continue
            chunk = os.read(read_end, 1 << 16)
            if not chunk:
                break
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                message = json.loads(line)
                kind = message.get("type")
                if kind == "result" and message.get("id") in wanted and message["id"] not in results:
                    results[message["id"]] = message
                    if on_result:
                        on_result()
                elif kind == "module" and message.get("module") in {m.name for m in modules}:
                    loads.setdefault(message["module"], message)
                    if on_result:
                        on_result(sum(t.module == message["module"] for t in expected))
                elif kind == "done":
                    done = True
        if not done and not error:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            log.seek(0)
            tail = log.read()[-1500:].decode(errors="replace").strip().splitlines()
            error = "the grading worker stopped early" + (f": {tail[-1]}" if tail else "")
    finally:
        os.close(read_end)
        with contextlib.suppress(OSError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        if uid is not None and isolation.setuid:
            _kill_uid(uid)
        log.close()
        box.remove()
    return results, loads, error


def grade_submission(submission: Submission, expected: list[ExpectedTest], options: Options,
                     uid: int | None = None, on_result=None) -> Record:
    start = time.monotonic()
    isolation = options.isolation or detect_isolation()
    names = [m.name for m in options.modules]
    present = [m for m in options.modules if f"{m.name}/{m.file}" in submission.files]
    mine = [t for t in expected if t.module in {m.name for m in present}]
    results, loads, error = run_worker(submission, present, mine, options, uid, on_result) if present else ({}, {}, "")
    tests = []
    for test in expected:
        module = get_module(test.module)
        if submission.rejected:
            got = {"outcome": "error", "kind": "rejected", "text": submission.rejected}
        elif module not in present:
            got = {"outcome": "error", "kind": "missing", "text": ""}
        elif test.module in loads:
            got = loads[test.module]
        else:
            got = results.get(test.id) or {"outcome": "error", "kind": "worker", "text": error or "the test process gave no result"}
        outcome = got.get("outcome", "error")
        outcome = outcome if outcome in ("passed", "failed", "error", "skipped") else "error"
        passed = outcome == "passed"
        message = "" if passed else teaching_message(test, got.get("kind", ""), str(got.get("text", "")), got.get("line"), options)
        tests.append(TestOutcome(test.module, test.name, outcome, test.points if passed else 0.0, test.points,
                                 message, "" if passed else got.get("kind", ""), float(got.get("duration", 0.0))))
    return Record(
        learner=submission.learner,
        submission=str(submission.path),
        sha256=submission.sha256,
        modules=names,
        tests=tests,
        ignored=submission.ignored,
        review=audit_files(submission.files),
        isolation=isolation.describe(),
        seconds=round(time.monotonic() - start, 2),
        worker_error=error,
        rejected=submission.rejected,
    )


def write_learner(out: Path, record: Record) -> None:
    folder = out / record.learner
    atomic_write(folder / "results.json", json.dumps(gradescope_results(record), indent=2))
    atomic_write(folder / "feedback.md", feedback_markdown(record))
    atomic_write(folder / RECORD, json.dumps(asdict(record), indent=1))  # last: marks the learner graded


def load_record(out: Path, learner: str) -> Record | None:
    try:
        return Record.from_json(json.loads((out / learner / RECORD).read_text()))
    except (OSError, ValueError, TypeError, KeyError):
        return None


def write_class(out: Path, records: list[Record], modules: list[Module]) -> None:
    names = [m.name for m in modules]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["learner", *names, "total", "max_total", "review"])
    for r in sorted(records, key=lambda r: r.learner):
        notes = ([f"rejected: {r.rejected}"] if r.rejected else []) + r.review
        writer.writerow([r.learner, *(f"{r.module_points(n):g}" for n in names), f"{r.total:g}", f"{r.max_total:g}",
                         "; ".join(notes)])
    atomic_write(out / "gradebook.csv", buffer.getvalue())
    grades = []
    for r in sorted(records, key=lambda r: r.learner):
        for t in r.tests:
            grades.append({"learner": r.learner, "module": t.module, "test": t.test, "outcome": t.outcome,
                           "points": t.points, "max_points": t.max_points, "message": t.message})
    atomic_write(out / "grades.json", json.dumps(grades, indent=1))


# --------------------------------------------------------------------------------------------------
# The class


def class_seed(out: Path, seed: int | None = None) -> int:
    """The secret base seed of the hidden inputs: given, or drawn once and kept (mode 600) in the grades folder."""
    if seed is not None:
        return seed
    if os.environ.get("LLMLAB_GRADE_SEED"):
        return int(os.environ["LLMLAB_GRADE_SEED"])
    path = out / ".seed"
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        value = secrets.randbits(48)
        out.mkdir(parents=True, exist_ok=True)
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(handle, "w") as f:
            f.write(f"{value}\n")
        return value


class Progress:
    """A one-line progress bar on stderr (redrawn on a terminal, a line per learner otherwise)."""

    def __init__(self, learners: int, tests: int, stream=None, enabled: bool = True) -> None:
        self.learners, self.tests = learners, max(tests, 1)
        self.done_learners, self.done_tests = 0, 0
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = self.stream.isatty()
        self.lock = threading.Lock()
        self.start = time.monotonic()

    def test_done(self, count: int = 1) -> None:
        with self.lock:
            self.done_tests += count
            if self.tty:
                self._draw("")

    def learner_done(self, learner: str, note: str, tests: int) -> None:
        with self.lock:
            self.done_learners += 1
            self.done_tests = max(self.done_tests, 0)
            if self.tty:
                self._draw(f"{learner}: {note}", newline=self.done_learners == self.learners)
            elif self.enabled:
                print(f"[{self.done_learners}/{self.learners}] {learner}: {note}", file=self.stream, flush=True)

    def _draw(self, note: str, newline: bool = False) -> None:
        if not self.enabled:
            return
        fraction = min(self.done_tests / self.tests, 1.0)
        bar = "#" * int(30 * fraction) + "-" * (30 - int(30 * fraction))
        line = f"\r[{bar}] {self.done_learners}/{self.learners} learners {time.monotonic() - self.start:5.0f}s {note}"[:120]
        self.stream.write(line.ljust(120) + ("\n" if newline else ""))
        self.stream.flush()


def summary_table(records: list[Record], modules: list[Module]) -> str:
    names = [m.name for m in modules]
    header = ["learner", *names, "total", "time", "review"]
    rows = []
    for r in sorted(records, key=lambda r: r.learner):
        rows.append([r.learner, *(f"{r.module_points(n):g}/{r.module_max(n):g}" for n in names),
                     f"{r.total:g}/{r.max_total:g}", f"{r.seconds:.1f}s", "rejected" if r.rejected else f"{len(r.review)} flag(s)" if r.review else ""])
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*header), fmt.format(*("-" * w for w in widths))] + [fmt.format(*row) for row in rows]
    if records:
        totals = [r.total for r in records]
        lines.append("")
        lines.append(f"learners: {len(records)}   mean: {sum(totals) / len(totals):.2f} / {records[0].max_total:g}")
        failures = []
        for n in names:
            count = sum(1 for r in records if r.module_points(n) < r.module_max(n))
            failed_tests = sum(1 for r in records for t in r.tests if t.module == n and t.outcome != "passed")
            failures.append(f"{n}: {count} learner(s), {failed_tests} test(s)")
        lines.append("not full marks, by module: " + "; ".join(failures))
        slowest = max(records, key=lambda r: r.seconds)
        lines.append(f"slowest submission: {slowest.learner} ({slowest.seconds:.1f}s)")
        for r in sorted(records, key=lambda r: r.learner):
            if r.rejected:
                lines.append(f"rejected: {r.learner}: {r.rejected}")
        flagged = [r.learner for r in records if r.review]
        if flagged:
            lines.append(f"flagged for review (see gradebook.csv): {', '.join(sorted(flagged))}")
    return "\n".join(lines)


def grade_class(path: Path, options: Options, progress: bool = True, stream=None) -> list[Record]:
    """Grade every submission under `path` into `options.out`; return the class's records."""
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    found, skipped = find_submissions(Path(path))
    for note in skipped:
        print(f"skipped {note}", file=sys.stderr)
    expected = collect_expected(options.modules)
    options.isolation = options.isolation or detect_isolation()
    names = [m.name for m in options.modules]
    todo, records = [], {}
    for learner, where in found:
        submission = read_submission(learner, where)
        old = None if options.force else load_record(out, learner)
        if old is not None and old.sha256 == submission.sha256 and old.modules == names:
            records[learner] = old
        else:
            todo.append(submission)
    bar = Progress(len(found), len(todo) * len(expected), stream, enabled=progress)
    for learner in sorted(records):
        bar.learner_done(learner, "already graded (use --force to grade again)", 0)
    slots = _Slots(max(1, options.jobs))
    lock = threading.Lock()

    def one(submission: Submission) -> None:
        slot = slots.free.get()
        try:
            uid = UID_BASE + slot if options.isolation.setuid else None
            record = grade_submission(submission, expected, options, uid, bar.test_done)
        finally:
            slots.free.put(slot)
        with lock:
            write_learner(out, record)
            records[record.learner] = record
            write_class(out, [records[k] for k in sorted(records)], options.modules)
        bar.learner_done(record.learner, f"{record.total:g}/{record.max_total:g} in {record.seconds:.1f}s", len(expected))

    with ThreadPoolExecutor(max_workers=max(1, options.jobs)) as pool:
        for future in [pool.submit(one, s) for s in todo]:
            future.result()
    final = [records[learner] for learner, _ in found if learner in records]
    write_class(out, final, options.modules)
    return final
