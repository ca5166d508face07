"""A sandbox for one submission: a fresh folder, a scrubbed environment, and bubblewrap where it is installed.

Layout of the folder (created by `Sandbox.create`, removed by `Sandbox.remove`):

    lib/grader/...         the harness and judge wings (a copy: no grader/hidden/, no publish wing)
    suite/NN_name/...      a copy of each graded module's hidden suite (test files readable by root only; `*_workers.py` by all)
    impl/NN_name/<file>    the submission's module files, nothing else
    work/ home/ tmp/       the learner's working folder, HOME and TMPDIR (owned by the learner's uid)
    work-N/ home-N/ tmp-N/ the same for lane N >= 1, where a submission's modules are graded N+1 at once
                           (each lane under its own leased uid)
    pytest.ini             empty: no ini file of the repository or of the submission applies

With bubblewrap (`bwrap`, the sandbox Flatpak uses) the worker (grader/judge/worker.py) sees an *allow-list*
of the filesystem: `/usr` and the Python installation read-only, a few files of `/etc` the dynamic linker
and the resolver read, this folder read-write, fresh `/proc`, `/dev`, `/tmp`, `/var/tmp`, `/dev/shm`; nothing
else exists there (no home folder, no checkout, no `.git`, no other learner, no grades). It also gets new pid,
network (loopback only), ipc and uts namespaces, its own session, and dies with the judge. As root, bwrap
keeps only the capabilities the worker needs to run each test under a private uid (setuid, setgid, kill).
Without bwrap (a laptop, macOS) the same runs with rlimits and process groups only (`Isolation.describe`,
written into every `record.json`).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import glob
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from grader.harness.course import REPO_ROOT, Module

# Learners' code runs under a private uid (no passwd entry needed), leased machine-wide for one submission
# at a time: a lock file per uid, so two `llmlab grade` runs at once never share one (nor kill each other's).
UID_BASE = 61000
UID_COUNT = 4000
HIDDEN_ROOT = REPO_ROOT / "grader" / "hidden"
# A hidden suite's test files are root's only: the test child has read them before it drops to the
# learner's uid. A `*_workers.py` file holds the functions that processes the learner's code starts must
# import themselves (module 08's ranks), so it is readable, and so are the folders (Python's importer
# lists them): a learner's code may see the file names, never the tests.
WORKERS_MODE = 0o644

# What of the host exists inside bubblewrap besides Python and the sandbox folder.
SYSTEM_TREES = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
ETC_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/passwd", "/etc/group",
             "/etc/nsswitch.conf", "/etc/hosts", "/etc/localtime")
PRIVATE_TMP = ("/tmp", "/var/tmp", "/dev/shm")
ROOT_CAPABILITIES = ("CAP_SETUID", "CAP_SETGID", "CAP_KILL")  # all a root worker keeps: the rest are dropped


@dataclass(frozen=True)
class Isolation:
    bubblewrap: bool  # bwrap runs the worker (filesystem allow-list, namespaces)
    setuid: bool  # we can run the learner's code under its own uid
    why_not: str = ""  # why bubblewrap is not used

    @property
    def name(self) -> str:
        return "bubblewrap" if self.bubblewrap else "rlimits"

    def describe(self) -> str:
        if self.bubblewrap:
            parts = ["bubblewrap: filesystem allow-list (/usr and Python read-only, the sandbox folder; private /tmp), "
                     "new pid, network (loopback only), ipc and uts namespaces"]
        else:
            parts = [f"no bubblewrap ({self.why_not or 'not installed'}): the learner's code can read what the grader's uid can"]
        parts.append("a private uid per submission and lane" if self.setuid else "the grader's own uid (not root, or Python in a folder other users cannot read)")
        return "; ".join(parts) + "; rlimits on memory, CPU, processes, file size; per-test process groups"


def secret_roots(extra: tuple[Path, ...] = ()) -> list[str]:
    """Folders whose content must never be inside the sandbox: the course checkout (the editable install's
    too), the class's folder and the grades folder. Used to keep them out of the allow-list."""
    roots = {REPO_ROOT, *extra}
    try:  # an editable install may point at another checkout
        import importlib.metadata
        import json

        text = importlib.metadata.distribution("llmlab").read_text("direct_url.json") or "{}"
        url = json.loads(text).get("url", "")
        if url.startswith("file://"):
            roots.add(Path(url[len("file://"):]))
    except Exception:  # noqa: BLE001 - not installed, or not editable
        pass
    return sorted({os.path.realpath(p) for p in roots})


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def runtime_paths(secrets_: list[str] | None = None) -> list[str]:
    """What a test process reads besides the sandbox: the interpreter (multiprocessing's spawn and forkserver
    start it again), the standard library and site-packages: never a secret folder nor one that holds one
    (a `.pth` file of an editable install puts the checkout on `sys.path`)."""
    secrets_ = secret_roots() if secrets_ is None else secrets_
    prefixes = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
                                              os.path.dirname(os.path.realpath(sys.executable)))}
    others = {os.path.realpath(p) for p in sys.path if p and os.path.isdir(p)} - prefixes
    # a virtual environment inside the checkout (CI's .venv) is bound, the checkout around it is not
    allowed = [p for p in prefixes if os.path.isdir(p) and p != "/" and not any(_inside(s, p) for s in secrets_)]
    allowed += [p for p in others if p != "/" and not any(_inside(p, s) or _inside(s, p) for s in secrets_)]
    return sorted(p for p in allowed if not any(o != p and _inside(p, o) for o in allowed))  # outermost only


def closed_folders(paths: list[str]) -> list[str]:
    """The outermost folders on the way to `paths` that other users cannot enter: /root (mode 700) when
    pyenv installed Python there, a home folder of mode 750. Without bubblewrap, a private uid could not
    import from them (bwrap makes the folders on the way to a bind point anew, enterable)."""
    closed = set()
    for path in paths:
        parent = os.path.dirname(os.path.realpath(path))
        while parent != "/":
            try:
                if not os.stat(parent).st_mode & 0o001:
                    closed.add(parent)
            except OSError:
                pass
            parent = os.path.dirname(parent)
    return sorted(c for c in closed if not any(c.startswith(o.rstrip("/") + "/") for o in closed))


def bwrap_arguments(folder: Path, extra_secrets: tuple[Path, ...] = ()) -> list[str]:
    """`bwrap ...` for a worker whose sandbox folder is `folder`: the allow-list, the namespaces."""
    args = ["bwrap", "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try",
            "--die-with-parent", "--new-session", "--proc", "/proc", "--dev", "/dev"]
    if os.geteuid() == 0:  # root without a user namespace: keep only what running tests under a private uid needs
        args += ["--cap-drop", "ALL"] + [a for cap in ROOT_CAPABILITIES for a in ("--cap-add", cap)]
    else:  # an ordinary user: a user namespace (bwrap's unprivileged mode)
        args += ["--unshare-user"]
    mounts: list[tuple[str, ...]] = [("--tmpfs", tmp) for tmp in PRIVATE_TMP]  # first: the sandbox may live under /tmp
    for tree in SYSTEM_TREES:
        if os.path.islink(tree):
            mounts.append(("--symlink", os.readlink(tree), tree))
        elif os.path.isdir(tree):
            mounts.append(("--ro-bind", tree, tree))
    mounts += [("--ro-bind-try", path, path) for path in ETC_FILES]
    mounts += [("--ro-bind", path, path) for path in runtime_paths(secret_roots(extra_secrets))]
    gpus = sorted(glob.glob("/dev/nvidia*"))
    mounts += [("--dev-bind", device, device) for device in gpus]  # CUDA: the driver's devices and what NVML reads
    if gpus:
        mounts.append(("--ro-bind", "/sys", "/sys"))
    mounts.append(("--bind", str(folder), str(folder)))
    # bwrap makes the folders on the way to a mount point with mode 700: the learner's uid could not pass
    # them (to Python under /root/.pyenv, to /etc/hosts, to the sandbox). Make them first, enterable.
    made = {"/", "/dev", "/proc", *PRIVATE_TMP}
    parents = set()
    for mount in mounts:
        parent = os.path.dirname(mount[-1])
        while parent not in made and parent not in parents:
            parents.add(parent)
            parent = os.path.dirname(parent)
    # The private /tmp first, then the folders on the way (a checkout or venv under /tmp, as CI's clone has:
    # made before the tmpfs, they would be covered by it and made again with mode 700), then the binds.
    for mount in mounts:
        if mount[0] == "--tmpfs":
            args += ["--perms", "1777", *mount]
    for parent in sorted(parents, key=lambda p: (p.count("/"), p)):
        if not os.path.islink(parent):
            args += ["--perms", "0755", "--dir", parent]
    for mount in mounts:
        if mount[0] != "--tmpfs":
            args += list(mount)
    return [*args, "--chdir", str(folder)]


@functools.lru_cache(maxsize=1)
def detect_isolation() -> Isolation:
    """bubblewrap when `bwrap` is installed and runs here (`LLMLAB_NO_BWRAP=1` forces the fallback)."""
    why = ""
    if os.environ.get("LLMLAB_NO_BWRAP") == "1":
        why = "LLMLAB_NO_BWRAP=1"
    elif not shutil.which("bwrap"):
        why = "bwrap is not installed"
    else:
        with tempfile.TemporaryDirectory(prefix="llmlab-bwrap-") as folder:
            try:
                done = subprocess.run([*bwrap_arguments(Path(folder)), sys.executable, "-S", "-c", "pass"],
                                      capture_output=True, timeout=60)
                if done.returncode != 0:
                    why = "bwrap does not run here: " + done.stderr.decode(errors="replace").strip()[:200]
            except (OSError, subprocess.TimeoutExpired) as error:
                why = f"bwrap does not run here: {error}"
    bubblewrap = not why
    # bwrap makes the folders on the way to Python enterable; without it a private uid could not read
    # Python installed under /root, so the tests run under the grader's uid.
    setuid = os.geteuid() == 0 and (bubblewrap or not closed_folders(runtime_paths()))
    return Isolation(bubblewrap=bubblewrap, setuid=setuid, why_not=why)


def _processes_of(uid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    found.append(int(entry))
    return found


@contextlib.contextmanager
def private_uids(count: int):
    """Lease `count` private uids at once (see `private_uid`): one per lane of a submission."""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(private_uid()) for _ in range(count)]


@contextlib.contextmanager
def private_uid():
    """Lease a uid of UID_BASE..UID_BASE+UID_COUNT for one submission, machine-wide: the lock of
    `<tmp>/llmlab-uids/<uid>.lock` is held while it is in use, and a uid that still runs processes is skipped."""
    folder = Path(tempfile.gettempdir()) / "llmlab-uids"
    folder.mkdir(mode=0o700, exist_ok=True)
    start = secrets.randbelow(UID_COUNT)
    for step in range(UID_COUNT):
        uid = UID_BASE + (start + step) % UID_COUNT
        fd = os.open(folder / f"{uid}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        if _processes_of(uid):  # a run that does not lease (an older grader), or leftovers: not ours
            os.close(fd)
            continue
        try:
            yield uid
        finally:
            os.close(fd)  # releases the lock
        return
    raise RuntimeError(f"no free private uid in {UID_BASE}..{UID_BASE + UID_COUNT - 1}")


def hidden_suite(module: Module) -> Path:
    return HIDDEN_ROOT / module.name


def has_hidden_suite(module: Module) -> bool:
    folder = hidden_suite(module)
    return folder.is_dir() and any(folder.glob("test_*.py"))


class Sandbox:
    """A temporary folder holding one submission's module files and the hidden suites it is graded by."""

    def __init__(self, root: Path, uids: list[int | None]) -> None:
        self.root = root
        self.uids = uids

    @classmethod
    def create(cls, files: dict[str, bytes], modules: list[Module], uids: list[int | None]) -> "Sandbox":
        """`uids`: one per lane (None: the grader's own uid); each lane gets its own work, home and tmp."""
        root = Path(tempfile.mkdtemp(prefix="llmlab-sandbox-"))
        os.chmod(root, 0o755)  # the learner's uid may traverse it, not write it
        box = cls(root, uids)
        lib = root / "lib" / "grader"
        for folder in ("", "harness", "judge"):  # the worker runs the harness and the judge; never publish
            (lib / folder).mkdir(parents=True, exist_ok=True)
            for source in (REPO_ROOT / "grader" / folder).glob("*.py"):
                shutil.copyfile(source, lib / folder / source.name)
        for module in modules:
            target = root / "suite" / module.name
            shutil.copytree(hidden_suite(module), target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            for path in [target, *target.rglob("*")]:
                os.chmod(path, 0o755 if path.is_dir() else WORKERS_MODE if path.name.endswith("_workers.py") else 0o600)
        (root / "suite").chmod(0o755)
        impl = root / "impl"
        impl.mkdir(mode=0o755)
        for relative, data in files.items():
            path = impl / relative
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
            path.write_bytes(data)
            path.chmod(0o644)
        for lane, uid in enumerate(uids):
            for folder in box.lane(lane).values():
                folder.mkdir(mode=0o700)
                if uid is not None:
                    os.chown(folder, uid, uid)
        (root / "pytest.ini").write_text("[pytest]\n")
        return box

    def lane(self, index: int) -> dict[str, Path]:
        """The working folder, HOME and TMPDIR of lane `index` (lane 0's are the worker's own)."""
        suffix = f"-{index}" if index else ""
        return {name: self.root / f"{name}{suffix}" for name in ("work", "home", "tmp")}

    def environment(self) -> dict[str, str]:
        """A scrubbed environment: nothing of the grader's own (tokens, paths) reaches the submission."""
        keep = {k: os.environ[k] for k in ("LANG", "LC_ALL", "CUDA_VISIBLE_DEVICES") if k in os.environ}
        return {
            **keep,
            "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(self.root / "home"),
            "TMPDIR": str(self.root / "tmp"),
            "PYTHONPATH": str(self.root / "lib"),
            "PYTHONNOUSERSITE": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONHASHSEED": "0",
            "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
            "PYTORCH_NVML_BASED_CUDA_CHECK": "1",  # is_available() without initialising CUDA: fork stays safe
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "HF_HOME": str(self.root / "home" / "hf"),
        }

    def command(self, isolation: Isolation, secrets_: tuple[Path, ...] = ()) -> list[str]:
        python = [sys.executable, "-s", "-m", "grader.judge.worker"]  # grader from lib/ (PYTHONPATH), no user site
        return [*bwrap_arguments(self.root, secrets_), *python] if isolation.bubblewrap else python

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
