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
import dataclasses
import fcntl
import io
import json
import os
import secrets
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from grader.harness.course import MODULES, REPO_ROOT, Module, find_module, get_module
from grader.judge.audit import audit_files
from grader.judge.progress import Progress
from grader.judge.report import Record, TestOutcome, load_record, write_class, write_learner
from grader.judge.sandbox import HIDDEN_ROOT, Isolation, Sandbox, detect_isolation, has_hidden_suite, hidden_suite, private_uids
from grader.judge.submission import Submission, find_submissions, read_submission
from grader.judge.worker import MAX_TEXT

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
    """The hidden tests of `modules`, in order, with their points: collected in this (trusted) process, with
    `--collect-only`, so that the suites leave out the oracles they import to run (see `collect_only`)."""
    import pytest

    from grader.harness.loader import clear_cache

    collector = _Collect()
    loaded = set(sys.modules)
    with tempfile.TemporaryDirectory() as folder:
        ini = Path(folder) / "pytest.ini"
        ini.write_text("[pytest]\n")
        args = [*(str(hidden_suite(m)) for m in modules), "--collect-only", "-q", "-c", str(ini), "--rootdir", str(REPO_ROOT),
                "-p", "no:cacheprovider", "-p", "no:llmlab", "-p", "grader.harness.plugin", "--import-mode=importlib", "--assert=plain"]
        with contextlib.redirect_stdout(io.StringIO()):
            code = pytest.main(args, plugins=[collector])
    clear_cache()
    for name in set(sys.modules) - loaded:  # the suites as listed, without their oracles: imported again to run
        if str(getattr(sys.modules[name], "__file__", None) or "").startswith(str(HIDDEN_ROOT) + os.sep):
            del sys.modules[name]
    if collector.errors or code not in (0, 5):
        raise RuntimeError("the hidden suites do not collect:\n" + "\n".join(collector.errors))
    return collector.tests


class Collection:
    """The judge's collection, made in a subprocess that starts at once, so that the first workers (which
    import the same libraries inside their sandboxes) start beside it instead of after it. `tests()` waits
    for it; the subprocess runs this repository's code as the judge, never a learner's."""

    def __init__(self, modules: list[Module]) -> None:
        self.modules = modules
        self._tests: list[ExpectedTest] | None = None
        self._lock = threading.Lock()
        self._output = tempfile.TemporaryFile()
        code = "import sys; from grader.judge.grade import _collect_main; sys.exit(_collect_main(sys.argv[1:]))"
        self._process = subprocess.Popen([sys.executable, "-c", code, *(m.name for m in modules)], cwd=REPO_ROOT,
                                         stdout=self._output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def tests(self) -> list[ExpectedTest]:
        with self._lock:
            if self._tests is None:
                code = self._process.wait()
                self._output.seek(0)
                text = self._output.read().decode(errors="replace")
                self._output.close()
                marker = "\n" + _COLLECTED
                if code != 0 or marker not in "\n" + text:
                    raise RuntimeError(text.strip()[-4000:] or f"the judge's collection exited {code}")
                rows = json.loads(("\n" + text).rsplit(marker, 1)[1])
                self._tests = [ExpectedTest(**row) for row in rows]
            return self._tests

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait()


_COLLECTED = "llmlab-collected: "


def _collect_main(names: list[str]) -> int:
    """`Collection`'s subprocess: collect, print the tests as one JSON line after a marker."""
    try:
        tests = collect_expected([get_module(name) for name in names])
    except RuntimeError as error:
        print(error, flush=True)
        return 1
    print(_COLLECTED + json.dumps([dataclasses.asdict(t) for t in tests]), flush=True)
    return 0


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
# Options and messages


@dataclass
class Options:
    out: Path
    modules: list[Module]
    jobs: int = 1
    lanes: int = 0  # modules of one submission graded at once, each under its own uid (0: the cores left by `jobs`)
    timeout: float = 10.0  # seconds per test
    memory_mb: int = 2048  # memory a test may add to the worker's
    force: bool = False
    seed: int = 0
    isolation: Isolation | None = None
    startup_s: float = 300.0  # a worker that collects nothing for this long is stopped
    scheduler: str = ""  # a Dask scheduler's address: grade there, one task per submission (grader/judge/cluster.py)


def teaching_message(test: ExpectedTest, kind: str, text: str, line: int | None, options: Options) -> str:
    """The feedback of a test that did not pass: what went wrong, what the test checks, what to read."""
    module = get_module(test.module)
    file = f"{module.name}/{module.file}"
    where = f" (your {file}, line {line})" if isinstance(line, int) else ""
    text = (text or "").strip()
    text = text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + " [...]"  # it came from the submission's process
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
        "tamper": "Your code changed what the grader judges with (torch, pytest, json, the grader's own functions or "
                  f"tables) while this test ran ({text}), so it gets no points; your submission is flagged for review "
                  "by the instructor.",
        "forged": "Your code wrote on the grader's result channel of this test, so it gets no points; your submission is "
                  "flagged for review by the instructor.",
        "module": "The process that loaded your file stopped before this test could run: your code (at import, or in a "
                  "thread it started) exited, crashed, or used more memory or processes than allowed.",
        "exception": f"Your code raised {text}{where}.",
        "assertion": text or "A check of this test failed.",
        "skipped": f"This test was skipped ({text}) and gives no points.",
        "worker": f"No result came back for this test: {text}",
    }.get(kind, text or "This test did not pass.")
    return f"{first}\n  This test checks: {test.checks}\n  Read: {module.chapter}"


# --------------------------------------------------------------------------------------------------
# One submission in its sandbox


def lanes_for(options: Options, modules: int) -> int:
    """How many of a submission's `modules` grade at once: `options.lanes`, or by default the cores this
    process may use divided among the `jobs` submissions graded at once (at least 1, at most `modules`)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1  # macOS: no affinity
    lanes = options.lanes or cores // max(1, options.jobs)
    return max(1, min(lanes, modules))


def _kill_uid(uid: int) -> None:
    """Kill every process left running under a leased private uid (only this submission's tests use it)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    os.kill(int(entry), signal.SIGKILL)


def run_worker(submission: Submission, modules: list[Module], expected: list[ExpectedTest], options: Options,
               uids: list[int | None], on_result=None) -> tuple[dict[str, dict], dict[str, dict], str]:
    """Run the sandboxed worker, its modules graded in `len(uids)` lanes (a uid each, or None: the grader's own);
    return (results by test id, load failures by module, worker error)."""
    isolation = options.isolation or detect_isolation()
    box = Sandbox.create({k: v for k, v in submission.files.items() if find_module(k.split("/")[0]) in modules}, modules, uids)
    results: dict[str, dict] = {}
    loads: dict[str, dict] = {}
    error = ""
    read_end, write_end = os.pipe()
    # Room for all the worker says while the judge's own collection may still run (the collected ids alone are
    # some 50 kB, a whole grade's messages a few hundred): a worker that waited on a full pipe would stall
    # its lanes, whose messages it forwards
    with contextlib.suppress(OSError):
        fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 1 << 20)
    log = tempfile.TemporaryFile()
    config = {
        "seed": options.seed,
        "timeout": options.timeout,
        "memory_mb": options.memory_mb,
        "lanes": [{"uid": uid, **{name: str(path) for name, path in box.lane(index).items()}} for index, uid in enumerate(uids)],
        "result_fd": write_end,
        "impl": str(box.root / "impl"),
        "suites": [str(box.root / "suite" / m.name) for m in modules],
        "ini": str(box.root / "pytest.ini"),
        "root": str(box.root),
    }
    # the class's folder and the grades folder stay out of the allow-list, whatever Python's paths hold
    secrets_ = (Path(submission.path).resolve().parent, Path(options.out).resolve())
    process = subprocess.Popen(box.command(isolation, secrets_), stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
                               cwd=box.root, env=box.environment(), pass_fds=(write_end,), start_new_session=True)
    os.close(write_end)
    try:
        process.stdin.write((json.dumps(config) + "\n").encode())
        process.stdin.close()
        if callable(expected):  # the judge's collection, which ran beside the worker's start
            expected = expected()
        wanted = {t.id for t in expected}
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
        for uid in uids:
            if uid is not None:
                _kill_uid(uid)
        log.close()
        box.remove()
    return results, loads, error


def _run_time_flags(tests: list[TestOutcome]) -> list[str]:
    """The run-time tampering verdicts, for the review column (the feedback already says so)."""
    flags = []
    for kind, what in (("tamper", "changed what the grader judges with"), ("forged", "wrote on a test's result channel")):
        hits = sorted({t.module for t in tests if t.kind == kind})
        if hits:
            count = sum(t.kind == kind for t in tests)
            flags.append(f"run time: the code {what} in {count} test(s) of {', '.join(hits)}")
    return flags


def grade_submission(submission: Submission, expected: list[ExpectedTest] | Collection, options: Options,
                     on_result=None) -> Record:
    """Grade one submission. `expected` may be a `Collection` still running: the worker starts meanwhile.
    Its modules grade in `lanes_for` lanes, each under a private uid leased machine-wide for the time
    (where the isolation runs tests under one), so that no two gradings share one."""
    start = time.monotonic()
    isolation = options.isolation or detect_isolation()
    names = [m.name for m in options.modules]
    present = [m for m in options.modules if f"{m.name}/{m.file}" in submission.files]
    everything = expected.tests if isinstance(expected, Collection) else (lambda: expected)

    def mine() -> list[ExpectedTest]:
        return [t for t in everything() if t.module in {m.name for m in present}]

    lanes = lanes_for(options, len(present))
    uids: list = []
    if present:
        with private_uids(lanes) if isolation.setuid else contextlib.nullcontext([None] * lanes) as uids:
            results, loads, error = run_worker(submission, present, mine, options, uids, on_result)
    else:
        results, loads, error = {}, {}, ""
    leased = [uid for uid in uids if uid is not None]
    expected = everything()
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
        review=audit_files(submission.files, [m.name for m in present]) + _run_time_flags(tests),
        isolation=isolation.describe() + (f" (uid{'s' if len(leased) > 1 else ''} {', '.join(map(str, leased))})" if leased else ""),
        seconds=round(time.monotonic() - start, 2),
        worker_error=error,
        rejected=submission.rejected,
    )


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


def grade_class(path: Path, options: Options, progress: bool = True, stream=None) -> list[Record]:
    """Grade every submission under `path` into `options.out`; return the class's records."""
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    found, skipped = find_submissions(Path(path))
    for note in skipped:
        print(f"skipped {note}", file=sys.stderr)
    collection = Collection(options.modules)  # runs while the first workers start
    try:
        return _grade_class(found, out, options, collection, progress, stream)
    finally:
        collection.close()


def _grade_class(found, out: Path, options: Options, collection: Collection, progress: bool, stream) -> list[Record]:
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
    if not todo:
        collection.close()  # nothing to grade: no need to wait for it
        expected = []
    else:
        expected = collection  # a list once the first worker needs it
    bar = Progress(len(found), 0, stream, enabled=progress)

    def tests() -> list[ExpectedTest]:
        resolved = collection.tests()
        bar.tests = max(len(todo) * len(resolved), 1)
        return resolved

    def measure_bar() -> None:  # the bar's length, as soon as the collection is in
        with contextlib.suppress(RuntimeError):  # its errors reach the jobs that wait for it
            tests()

    if todo:
        threading.Thread(target=measure_bar, daemon=True).start()
    for learner in sorted(records):
        bar.learner_done(learner, "already graded (use --force to grade again)", 0)
    lock = threading.Lock()

    def finish(record: Record) -> None:
        with lock:
            write_learner(out, record)
            records[record.learner] = record
            write_class(out, [records[k] for k in sorted(records)], options.modules)
        bar.learner_done(record.learner, f"{record.total:g}/{record.max_total:g} in {record.seconds:.1f}s", len(record.tests))

    def one(submission: Submission) -> None:
        record = grade_submission(submission, expected, options, bar.test_done)
        tests()
        finish(record)

    if options.scheduler and todo:  # the judge still writes everything; only the grading runs on the cluster's workers
        from grader.judge.cluster import grade_on_cluster

        def remote_done(record: Record) -> None:
            bar.test_done(len(record.tests))
            finish(record)

        grade_on_cluster(options.scheduler, todo, tests(), options, remote_done)
    else:
        with ThreadPoolExecutor(max_workers=max(1, options.jobs)) as pool:
            for future in [pool.submit(one, s) for s in todo]:
                future.result()
    final = [records[learner] for learner, _ in found if learner in records]
    write_class(out, final, options.modules)
    return final
