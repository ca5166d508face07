"""The grading worker: runs inside a sandbox folder, one per submission, started by `grader.judge.grade`.

    python -m grader.judge.worker          (configuration as one JSON line on stdin, never in argv or env)

It is a *zygote*: it imports torch, pytest and the hidden suites, collects the tests (the learner's code
is loaded lazily by the `impl` fixture, so none of it runs here) and snapshots what a verdict depends on.
Then, per course module, it forks a *module process* that drops to the learner's uid and limits (memory,
CPU time, processes, file size; output to /dev/null) and imports the learner's file once, within the
time limit. From it a *runner* is forked, which runs the module's tests one after another, as a plain
`pytest` run would (module-scoped fixtures, such as one launch shared by several checks, are set up once),
each on the worker's request over a socket. Each test's result is one JSON line on a pipe the worker made
for that test alone, carrying a nonce; the worker enforces each test's time limit, kills by process group
and uid, and forwards at most one result per test to the judge on a pipe that no learner process holds
open. A runner that dies, hangs past a test's limit, changed what a verdict depends on, left threads
running or grew its memory is replaced by a fresh fork of the module process for the next test, so one
test's damage never reaches another's verdict.

Several modules are graded at once where the judge gives several *lanes* (one per core it can spare): each
module is then graded by a *lane process*, a fork of the zygote made before any learner code exists, with
the lane's own uid, working folder, HOME and TMPDIR, which forwards its messages to the zygote whole; the
zygote passes them on to the judge. The longest modules go first, so that the lanes end together.

What comes back is *evidence*, not a verdict: the judge (grader/judge/grade.py) only accepts results for the
tests it collected itself, one per test, takes points from its own collection, and treats a missing
result as a failure. A child that forges its own "passed" line can still lie about its own test: that
residual risk is why the judge also audits the source (grader/judge/audit.py) and why the child checks, after
the test, that nothing a verdict depends on changed while the learner's code ran (grader/judge/integrity.py),
and sends its result with functions bound when this file was imported, before any learner code existed.
The filesystem, pid and network isolation around the worker is bubblewrap's (grader/judge/sandbox.py).
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import resource
import secrets
import select
import signal
import socket
import sys
import threading
import time
import traceback
from pathlib import Path

from grader.judge.integrity import WALKED_EXIT
from grader.judge.sandbox import _processes_of

MAX_TEXT = 600  # characters of any text from a submission that travel back (no bulk data in feedback)
MAX_LINE = 64 * 1024  # bytes a child may send back

# Bound now, before any learner code exists: a test process sends its result with these, never with
# `json.dumps` or `os.write` as they are after the test (a learner may have replaced those).
_WRITE = os.write
_EXIT = os._exit
_ESCAPE = getattr(json.encoder, "c_encode_basestring_ascii", None) or json.encoder.py_encode_basestring_ascii
_STR = str.__str__  # an exact str of a str or str subclass
_INT_REPR = int.__repr__
_FLOAT_REPR = float.__repr__
_TYPE = type
_LEN = len
_THREADS = threading.active_count  # Python threads of this process


# --------------------------------------------------------------------------------------------------
# Run in the zygote, before anything learner-controlled exists


def _vm_size() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _group_members(pgid: int) -> list[int]:
    """Processes of process group `pgid`, but its leader: what a test started in the runner's group."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != pgid:
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    if int(f.read().rsplit(b")", 1)[1].split()[3]) == pgid:
                        found.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    return found


def _parent_of(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return -1


def _our_message(data: bytes, nonce: str, label: str) -> dict | None:
    """The one JSON line a grader's process sent with `nonce` and `label`, or None (anything else)."""
    line, _, rest = data.partition(b"\n")
    try:
        message = json.loads(line)
    except ValueError:
        return None
    if not isinstance(message, dict) or rest.strip() or message.pop("nonce", None) != nonce or message.pop("label", None) != label:
        return None
    return message


def _encode(message: dict) -> bytes:
    """One JSON line of a flat dict of str, int, float, bool and None, with the functions bound at import."""
    parts = []
    for key, value in message.items():
        kind = _TYPE(value)
        if value is None or kind is bool:
            text = "null" if value is None else "true" if value else "false"
        elif kind is int:
            text = _INT_REPR(value)
        elif kind is float:
            text = _FLOAT_REPR(value)
            text = "null" if text in ("nan", "inf", "-inf") else text
        else:
            try:
                text = _ESCAPE(_STR(value))
            except TypeError:  # not a str: nothing the grader sends
                text = '""'
        parts.append(_ESCAPE(_STR(key)) + ": " + text)
    return ("{" + ", ".join(parts) + "}\n").encode()


def _cut(text) -> str:
    """A text from a submission (an exception's message, a stub's name), at most MAX_TEXT characters."""
    try:
        text = _STR(text)
    except TypeError:
        return ""
    return text if _LEN(text) <= MAX_TEXT else text[:MAX_TEXT] + " [...]"


class Zygote:
    """A pytest plugin that replaces the run loop: one forked child per test."""

    def __init__(self, config: dict, result_fd: int) -> None:
        self.config = config
        self.result_fd = result_fd
        self.timeout = float(config["timeout"])
        self.memory = int(config["memory_mb"]) * 2**20
        self.lanes = config["lanes"]  # one per module graded at once: its uid (or None), work, home and tmp
        self.uid = self.lanes[0]["uid"]  # those of the lane this process grades in
        self.work = Path(self.lanes[0]["work"])
        self.can_setuid = os.geteuid() == 0 and self.uid is not None

    # -- channel to the judge ------------------------------------------------------------------------

    def send(self, message: dict) -> None:
        self._write((json.dumps(message) + "\n").encode())

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.result_fd, view):]

    # -- pytest hooks --------------------------------------------------------------------------------

    def pytest_collection_finish(self, session) -> None:
        self.send({"type": "collected", "ids": [normal_id(item) for item in session.items]})

    def pytest_runtestloop(self, session) -> bool:
        from grader.harness.plugin import course_module_of, timeout_for

        groups: dict[str, list] = {}
        for item in session.items:
            module = course_module_of(item.path)
            groups.setdefault(module.name if module else "", []).append(item)
        # Longest first, so that lanes end together: the modules whose tests ask for more time (processes to
        # start, launches to wait for) before the rest, the rest in course order
        queue = sorted(groups.values(), key=lambda items: -sum(timeout_for(item, 0.0) for item in items))
        from grader.judge.integrity import Snapshot

        grader_modules = [sys.modules[name] for name in sorted(sys.modules) if name == "grader" or name.startswith("grader.")]
        # the suites' files, and the helpers they import from their folders (08's workers compute truths too)
        folders = {os.path.dirname(str(item.path)) for item in session.items}
        helpers = {m for m in list(sys.modules.values())  # sys.modules may hold None and objects that are no module
                   if isinstance(m, type(sys)) and os.path.dirname(str(m.__dict__.get("__file__") or "")) in folders}
        suites = sorted({item.module for item in session.items} | helpers, key=lambda m: m.__name__)
        self.snapshot = Snapshot(grader_modules, suites, session.config.pluginmanager)
        if not self.can_setuid:  # every lane's processes count against the one uid
            self.nproc = len(_processes_of(os.getuid())) + 64 * len(self.lanes)
        # A pre-fork server's trick: move every object loaded so far (torch, transformers, the suites) out
        # of the collector's reach. Otherwise a child's first full collection touches them all and the OS
        # copies most of the zygote's memory for it: 0.3 s per test instead of 0.02 s.
        gc.collect()
        gc.freeze()
        if len(self.lanes) == 1:
            for items in queue:
                self.run_module(session.config, course_module_of(items[0].path), items)
        else:
            self.run_lanes(session.config, queue)
        return True

    # -- lanes: several modules at once, each graded by a forked copy of this process under its lane's uid -----

    def run_lanes(self, config, queue: list[list]) -> None:
        """Grade the modules of `queue` (lists of tests), as many at once as there are lanes: each by a *lane
        process*, a fork of this one (no learner code runs here, so it is the grader's as much as this one is)
        that takes its lane's uid and folders and runs `run_module` as a single lane would. Its messages come
        back on a pipe of its own and go on to the judge whole, line by line; when it ends, its lane takes the
        next module. A lane's uid is its own, so that the sweep after one module's test never touches
        another's processes."""
        from grader.harness.plugin import course_module_of

        free = list(range(len(self.lanes)))
        running: dict[int, list] = {}  # read end of a lane process's pipe -> [pid, lane, unfinished line]
        queue = list(queue)
        while queue or running:
            while queue and free:
                lane, items = free.pop(0), queue.pop(0)
                read_end, write_end = os.pipe()
                pid = os.fork()
                if pid == 0:  # the lane process: never returns
                    try:
                        for fd in (read_end, self.result_fd, *running):  # the judge's pipe is only written here
                            os.close(fd)
                        self.result_fd = write_end
                        self._enter_lane(lane)
                        self.run_module(config, course_module_of(items[0].path), items)
                    finally:
                        _EXIT(0)
                os.close(write_end)
                running[read_end] = [pid, lane, b""]
            for fd in select.select(list(running), [], [])[0]:
                chunk = os.read(fd, 1 << 16)
                entry = running[fd]
                if chunk:
                    whole, _, entry[2] = (entry[2] + chunk).rpartition(b"\n")
                    if whole:
                        self._write(whole + b"\n")
                    continue
                os.close(fd)  # the lane process ended: its lane is free
                del running[fd]
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(entry[0], 0)
                free.append(entry[1])

    def _enter_lane(self, lane: int) -> None:
        """In a lane process: the learner's code it starts runs under this lane's uid, in its folders."""
        import tempfile

        spec = self.lanes[lane]
        self.uid, self.work = spec["uid"], Path(spec["work"])
        os.environ.update(HOME=spec["home"], TMPDIR=spec["tmp"], HF_HOME=os.path.join(spec["home"], "hf"))
        tempfile.tempdir = None  # found again from TMPDIR (pytest's tmp_path too) by the first that asks

    # -- one module: a process that imports the learner's file once, and runners forked from it ------------

    def run_module(self, config, module, items: list) -> None:
        """Grade `items`, the tests of `module`: a *module process* (under the learner's uid and limits)
        imports the learner's file once; a *runner* forked from it runs the tests in order, on request, and is
        replaced by a fresh fork whenever it stops giving results. It is the learner's code from then on, so
        nothing it says is believed beyond its own tests: each result comes on a pipe the worker made for that
        test (passed over a socket) and reads alone, the worker kills by process group and uid, and bounds
        every wait."""
        from grader.harness.plugin import timeout_for

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        load_nonce = secrets.token_hex(16)
        timeouts = [timeout_for(item, self.timeout) for item in items]
        longest = max([self.timeout, *timeouts])
        cpu_budget = int(sum(timeouts) + 2 * len(timeouts) + longest) + 10  # the hard CPU limit of the module's runners
        snapshot, impl_dir, work, memory = self.snapshot, str(Path(self.config["impl"]).resolve()), self.work, self.memory
        from grader.judge.integrity import install_audit_hook

        start = time.monotonic()
        pid = os.fork()
        if pid == 0:  # the module process: never returns
            try:
                ours.close()
                os.close(self.result_fd)
                self._enter_child(longest, cpu_budget)
                install_audit_hook(impl_dir, _EXIT, snapshot)
                _serve_module(theirs, config, module, items, snapshot, load_nonce, work, memory)
            finally:
                _EXIT(0)
        theirs.close()
        self.runner = None
        try:
            load = self._load_result(ours, pid, load_nonce, start)
            load["duration"] = round(time.monotonic() - start, 3)
            if load.get("outcome") != "passed":  # the file does not load: no test of this module can pass
                self.send({"type": "module", "module": module.name, **_public(load)})
                return
            self._sweep(keep={pid})  # processes its import left behind
            for index, item in enumerate(items):
                result = self.run_test(ours, pid, index, normal_id(item), timeouts[index])
                self.send({"type": "result", "id": normal_id(item), **_public(result)})
                if result.get("kind") == "module":  # the module process is gone: the rest cannot run
                    for rest in items[index + 1:]:
                        self.send({"type": "result", "id": normal_id(rest), **_public(result)})
                    return
        finally:
            ours.close()
            for group in (self.runner, pid):
                if group:
                    with contextlib.suppress(OSError):
                        os.killpg(group, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            self._sweep(keep=set())

    def _receive(self, sock: socket.socket, deadline: float) -> bytes | None:
        """One message from the module process or its runner, or None (nothing before `deadline`, or gone)."""
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([sock], [], [], remaining)[0]:
            return None
        try:
            return sock.recv(MAX_LINE) or None
        except OSError:
            return None

    def _receive_tagged(self, sock: socket.socket, tag: bytes, deadline: float) -> int | None:
        """The number N of the next `<tag> N` message before `deadline` (others are passed over), or None."""
        while True:
            data = self._receive(sock, deadline)
            if data is None:
                return None
            if data.startswith(tag):
                number = data[len(tag):]
                if number.lstrip(b"-").isdigit():
                    return int(number)

    def _load_result(self, sock: socket.socket, pid: int, nonce: str, start: float) -> dict:
        data = self._receive(sock, start + self.timeout)
        if data is None:
            timed_out = time.monotonic() - start >= self.timeout
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            if timed_out:
                return {"outcome": "error", "kind": "timeout", "text": f"stopped after {self.timeout:g} s"}
            if os.WIFEXITED(status) and os.WEXITSTATUS(status) == WALKED_EXIT:
                return {"outcome": "error", "kind": "tamper", "text": "read the interpreter's memory (stack frames, gc or ctypes)"}
            return {"outcome": "error", "kind": "exited", "text": _describe_status(status)}
        message = _our_message(data, nonce, "load")
        if message is None:
            return {"outcome": "error", "kind": "forged", "text": "messages on the grader's channel that the grader did not write"}
        return message

    def run_test(self, sock: socket.socket, module_pid: int, index: int, label: str, timeout: float) -> dict:
        """Ask for test `index`: the live runner takes it, or the module process forks a fresh one for it.
        Either answers `pid N` (N: the runner, a child of the module process)."""
        read_end, write_end = os.pipe()
        nonce = secrets.token_hex(16)
        start = time.monotonic()
        try:
            socket.send_fds(sock, [f"{index} {nonce} {timeout:g}".encode()], [write_end])
        except OSError:
            os.close(read_end)
            return {"outcome": "error", "kind": "module", "text": "the process that loaded your file stopped"}
        finally:
            os.close(write_end)
        pid = self._receive_tagged(sock, b"pid ", start + 30)  # passes over a retired runner's `status N`
        if not pid or _parent_of(pid) != module_pid:
            os.close(read_end)
            return {"outcome": "error", "kind": "module", "text": "the process that loaded your file stopped"}
        self.runner = pid
        result = self._read_child(read_end, pid, nonce, label, start, timeout, sock, module_pid)
        result["duration"] = round(time.monotonic() - start, 3)
        return result

    def _enter_child(self, timeout: float, cpu_budget: int) -> None:
        os.setsid()  # its own process group
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        limit = _vm_size() + self.memory
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        # CPU: the soft limit bounds the import; a runner raises it before each test to its CPU time so far plus
        # that test's limit, never above the hard limit, the whole module's budget
        cpu = int(timeout) + 2
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, max(cpu + 1, cpu_budget)))
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 2**20, 64 * 2**20))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
        if self.can_setuid:
            resource.setrlimit(resource.RLIMIT_NPROC, (64, 64))
            os.setgroups([])
            os.setgid(self.uid)
            os.setuid(self.uid)
        else:
            resource.setrlimit(resource.RLIMIT_NPROC, (self.nproc, self.nproc))
        os.chdir(self.work)  # after setuid: the folder is the learner's uid's (the worker keeps no DAC override)

    def _read_child(self, fd: int, pid: int, nonce: str, label: str, start: float, timeout: float, sock, module_pid: int) -> dict:
        """The result of one test from runner `pid`. Anything but our one line (nothing in time, the pipe closed,
        a forged line) ends the runner: its process group is killed, the next test gets a fresh one."""
        buffer = b""
        deadline = start + timeout
        timed_out = False
        while b"\n" not in buffer and len(buffer) < MAX_LINE:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            buffer += chunk
        os.close(fd)
        message = None if timed_out else _our_message(buffer, nonce, label)
        if message is not None and (message.get("outcome") == "passed" or not self._leftovers(module_pid, pid)):
            # The runner lives on (or retires by itself), and so do processes a passing test started, as in a
            # plain pytest run: a forkserver that later launches reuse. They run under the learner's uid and
            # limits and end with the runner (the next sweep).
            self._reap()
            return message
        # No result, a forged one, or a failing test that left processes behind: the runner ends with them
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)
        status = self._receive_tagged(sock, b"status ", time.monotonic() + 10)  # the module process reaped it
        status = -1 if status is None else status
        self.runner = None
        self._sweep(keep={module_pid}, group=pid)
        if message is not None:
            return message
        if timed_out:
            return {"outcome": "error", "kind": "timeout", "text": f"stopped after {timeout:g} s"}
        if status != -1 and os.WIFEXITED(status) and os.WEXITSTATUS(status) == WALKED_EXIT:
            return {"outcome": "error", "kind": "tamper", "text": "read the interpreter's memory (stack frames, gc or ctypes)"}
        if buffer.strip():  # the learner's code wrote on the test's result pipe (the runner writes one line)
            return {"outcome": "error", "kind": "forged", "text": "lines on the test's result channel that the grader did not write"}
        if status == -1:
            return {"outcome": "error", "kind": "module", "text": "the process that loaded your file stopped"}
        return {"outcome": "error", "kind": "exited", "text": _describe_status(status)}

    def _leftovers(self, module_pid: int, runner: int) -> list[int]:
        """Processes a test started that still run: of the private uid, or without one, of the runner's group."""
        if self.can_setuid:
            return [p for p in _processes_of(self.uid) if p not in (module_pid, runner)]
        return _group_members(runner)

    def _sweep(self, keep: set[int], group: int | None = None) -> None:
        """Kill what the learner's code left behind: every process of the private uid but those in `keep` (the
        module process); without a private uid, the members of the ended runner's process `group`."""
        if self.can_setuid:
            for _ in range(20):  # a fork bomb may still be forking: sweep until nothing is left
                pids = [p for p in _processes_of(self.uid) if p not in keep]
                if not pids:
                    break
                for found in pids:
                    with contextlib.suppress(OSError):
                        os.kill(found, signal.SIGKILL)
        elif group is not None:
            for found in _group_members(group):
                with contextlib.suppress(OSError):
                    os.kill(found, signal.SIGKILL)
        self._reap()

    @staticmethod
    def _reap() -> None:
        while True:  # orphans re-parented to us
            try:
                reaped, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if reaped == 0:
                break


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        extra = {
            "SIGKILL": " (killed: memory or process limit, or the time limit)",
            "SIGXCPU": " (the CPU time limit)",
            "SIGXFSZ": " (wrote a file larger than allowed)",
            "SIGSEGV": " (a crash)",
        }.get(name, "")
        return f"the test process was killed by {name}{extra}"
    return f"the test process exited early (exit status {os.WEXITSTATUS(status)}) without reporting a result"


def _public(result: dict) -> dict:
    keys = ("outcome", "kind", "text", "line", "duration")
    return {k: result[k] for k in keys if k in result}


# --------------------------------------------------------------------------------------------------
# Run in a child (after the learner's code may have run: nothing here is trusted by the judge)


def normal_id(item) -> str:
    """`01_rmsnorm/test_rmsnorm_hidden.py::test_x[case]`: the same in the sandbox and in the repo."""
    from grader.harness.course import find_module

    parts = item.nodeid.split("::", 1)
    path = Path(parts[0])
    for i, part in enumerate(path.parts):
        if find_module(part) is not None:
            return "/".join(path.parts[i:]) + ("::" + parts[1] if len(parts) > 1 else "")
    return item.nodeid


def _guarded(body, snapshot) -> dict:
    """Run `body`; a passing result stands only if nothing the verdict depends on changed meanwhile."""
    try:
        result = body()
    except BaseException as error:  # noqa: BLE001 - anything the learner's code throws at us
        result = {"outcome": "error", "kind": "exception", "text": _short(error)}
    if result.get("outcome") == "passed":
        try:
            changed = snapshot.changed()
        except BaseException as error:  # noqa: BLE001 - the check itself broken by the learner's code
            changed = [f"the integrity check failed: {type(error).__name__}"]
        if changed:
            return {"outcome": "error", "kind": "tamper", "text": _cut(", ".join(changed[:5]))}
    return result


def _short(error: BaseException) -> str:
    try:
        text = f"{type(error).__name__}: {error}"
    except BaseException:  # noqa: BLE001 - a __str__ that raises
        text = type(error).__name__
    return _cut(text)


def _learner_line(error: BaseException, impl_dir: str) -> int | None:
    frames = [f for f in traceback.extract_tb(error.__traceback__) if f.filename.startswith(impl_dir)]
    return frames[-1].lineno if frames else None


def _classify(error: BaseException, impl_dir: str) -> dict:
    from _pytest.outcomes import Failed, Skipped

    from grader.harness.errors import ImplementationLoadError, NotImplementedYet

    if isinstance(error, NotImplementedYet):
        return {"kind": "todo", "text": _cut(error.name)}
    if isinstance(error, ImplementationLoadError):
        return {"kind": "load", "text": _cut(str(error))}
    if isinstance(error, Skipped):
        return {"kind": "skipped", "text": _cut(str(error))}
    if isinstance(error, (AssertionError, Failed)):
        # --assert=plain: the text is the test's own message (grader.harness.checks writes teaching ones),
        # never an explanation rebuilt from the hidden test's source
        return {"kind": "assertion", "text": _cut(str(error)), "line": _learner_line(error, impl_dir)}
    if isinstance(error, MemoryError):
        return {"kind": "memory", "text": _short(error), "line": _learner_line(error, impl_dir)}
    if isinstance(error, SystemExit):
        return {"kind": "exit", "text": _cut(f"exit({error.code!r})")}
    return {"kind": "exception", "text": _short(error), "line": _learner_line(error, impl_dir)}


def _run_item(item, nextitem) -> dict:
    """setup, call, teardown of one test, classified by us from the exception (pytest's reports are made for
    plugins such as tmp_path, never sent: no traceback, no hidden source reaches the learner). The teardown
    keeps what `nextitem` shares (module- and session-scoped fixtures), as pytest's own loop does."""
    import contextlib

    import pytest

    from grader.harness.plugin import impl_root

    impl_dir = str(impl_root(item.config))
    hook = item.ihook
    steps = [("setup", hook.pytest_runtest_setup, {}), ("call", hook.pytest_runtest_call, {}),
             ("teardown", hook.pytest_runtest_teardown, {"nextitem": nextitem})]
    failure = None
    for when, run, kwargs in steps:
        if failure is not None and when == "call":
            continue
        call = pytest.CallInfo.from_call(lambda: run(item=item, **kwargs), when=when, reraise=())
        if call.excinfo is not None and failure is None:
            failure = (when, call.excinfo.value)
        # the report is what plugins act on (tmp_path records each phase's outcome there); its text,
        # rebuilt from the hidden test's source, is never sent
        with contextlib.suppress(BaseException):
            hook.pytest_runtest_makereport(item=item, call=call)
    if failure is None:
        return {"outcome": "passed"}
    when, error = failure
    info = _classify(error, impl_dir)
    if info["kind"] == "skipped":
        return {"outcome": "skipped", **info}
    return {"outcome": "failed" if when == "call" and info["kind"] == "assertion" else "error", **info}


def _next_request(sock, recv_fds):
    """`index nonce timeout` with the test's result pipe, from the worker; None once the worker is done."""
    try:
        data, fds, _, _ = recv_fds(sock, 1024, 1)
        index, nonce, timeout = data.split(b" ")
        request = int(index), nonce.decode(), float(timeout)
    except (OSError, ValueError):
        return None
    return (*request, fds[0]) if fds else None


def _serve_module(sock, config, module, items: list, snapshot, nonce: str, work, memory: int) -> None:
    """The module process: import the learner's file once (reported on `sock`), then, whenever no runner is
    alive, take the next request itself, fork a runner for it (`_run_tests`), answer `pid N`, and `status N`
    once that runner ended. Bound here, before the import."""
    encode, fork, waitpid, close, setsid, getpid = _encode, os.fork, os.waitpid, os.close, os.setsid, os.getpid
    recv_fds, sleep = socket.recv_fds, time.sleep
    load = _guarded(lambda: _probe_load(config, module), snapshot)
    sock.send(encode({"nonce": nonce, "label": "load", **load}))
    if load.get("outcome") != "passed":
        return
    gc.freeze()  # what the import made, out of the runners' collections too
    while True:
        request = _next_request(sock, recv_fds)
        if request is None:
            return
        for _ in range(100):  # processes its import started, killed by the worker, count against the process
            with contextlib.suppress(ChildProcessError):  # limit until reaped: reap them, wait for the last ones
                while waitpid(-1, os.WNOHANG)[0]:
                    pass
            try:
                pid = fork()
                break
            except BlockingIOError:
                sleep(0.05)
        else:
            return
        if pid == 0:  # the runner
            try:
                setsid()  # its own process group: killed as a whole when it ends
                _run_tests(sock, request, items, snapshot, memory, getpid())
            finally:
                _EXIT(0)
        close(request[3])
        with contextlib.suppress(OSError):
            sock.send(b"pid %d" % pid)
        _, status = waitpid(pid, 0)
        with contextlib.suppress(OSError):
            sock.send(b"status %d" % status)


def _run_tests(sock, request, items: list, snapshot, memory: int, me: int) -> None:
    """The runner: run the requested tests in order, each result on its own pipe, until the worker is done
    or this process should not run another test. It retires (exits: the next test gets a fresh fork of the
    module process) after a test that changed what a verdict depends on, left Python threads running,
    or grew the process by more than half the memory limit."""
    guarded, encode, write, close, recv_fds, send = _guarded, _encode, _WRITE, os.close, socket.recv_fds, sock.send
    setrlimit, getrlimit, getrusage = resource.setrlimit, resource.getrlimit, resource.getrusage
    labels = [normal_id(item) for item in items]
    retire_above = _vm_size() + memory // 2
    while True:
        index, test_nonce, timeout, fd = request
        used = getrusage(resource.RUSAGE_SELF)
        hard = getrlimit(resource.RLIMIT_CPU)[1]
        soft = int(used.ru_utime + used.ru_stime + timeout) + 2
        with contextlib.suppress(ValueError, OSError):
            setrlimit(resource.RLIMIT_CPU, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))
        nextitem = items[index + 1] if index + 1 < len(items) else None
        result = guarded(lambda: _run_item(items[index], nextitem), snapshot)
        try:  # decided before the result goes: a thread the test left must not see another request
            retire = result.get("kind") == "tamper" or _THREADS() > 1 or _vm_size() > retire_above
        except BaseException:  # noqa: BLE001 - /proc or open() broken by the learner's code
            retire = True
        with contextlib.suppress(OSError):
            write(fd, encode({"nonce": test_nonce, "label": labels[index], **result})[:MAX_LINE])
        close(fd)
        if retire:
            return
        request = _next_request(sock, recv_fds)
        if request is None:
            return
        with contextlib.suppress(OSError):
            send(b"pid %d" % me)


def _probe_load(config, module) -> dict:
    """Import the learner's file once, alone: a file that does not load fails all its tests at once."""
    from grader.harness.errors import ImplementationLoadError
    from grader.harness.loader import load_implementation
    from grader.harness.plugin import impl_root

    try:
        load_implementation(impl_root(config), module)
    except ImplementationLoadError as error:
        return {"outcome": "error", "kind": "load", "text": _cut(str(error))}
    return {"outcome": "passed"}


# --------------------------------------------------------------------------------------------------


def main() -> int:
    config = json.loads(sys.stdin.readline())
    sys.stdin.close()
    result_fd = int(config["result_fd"])
    os.set_inheritable(result_fd, False)
    import torch  # noqa: F401 - import the heavy libraries once, before forking

    torch.set_num_threads(1)
    zygote = Zygote(config, result_fd)
    zygote.send({"type": "start"})
    import pytest

    args = [
        *config["suites"],
        "--impl", config["impl"],
        "--llmlab-seed", str(config["seed"]),
        "-p", "grader.harness.plugin",
        "-p", "no:cacheprovider",
        "-c", config["ini"],
        "--rootdir", config["root"],
        "--import-mode=importlib",
        "--assert=plain",
        "--tb=line",  # reports are made for plugins' sake only: keep them cheap
        "-s", "-q", "--no-header",
    ]
    code = pytest.main(args, plugins=[zygote])
    zygote.send({"type": "done", "exit_code": int(code)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
