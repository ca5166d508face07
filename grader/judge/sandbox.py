"""A sandbox for one submission: a fresh folder, a scrubbed environment, namespaces where the OS allows.

Layout of the folder (created by `Sandbox.create`, removed by `Sandbox.remove`):

    lib/grader/...         the harness and judge wings (a copy: no grader/hidden/, no publish wing)
    suite/NN_name/...      a copy of each graded module's hidden suite (test files readable by root only; `*_workers.py` by all)
    impl/NN_name/<file>    the submission's module files, nothing else
    work/ home/ tmp/       the learner's working folder, HOME and TMPDIR (owned by the learner's uid)
    pytest.ini             empty: no ini file of the repository or of the submission applies

The worker (grader/judge/worker.py) runs there under `unshare --net --pid --fork --mount-proc --mount` when that
works (we are root): no network (loopback only), its own process tree (everything left dies with it),
and tmpfs mounted over the repository's secret folders (hidden suites, solutions, tests) and over the
class's submissions and the grades folder. Tests run in children under a private uid per parallel slot.
Without root or unshare, the same runs with rlimits and process groups only (`Isolation.describe`).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from grader.harness.course import REPO_ROOT, Module

UID_BASE = 61000  # learners' code runs as UID_BASE + slot (no passwd entry needed)
HIDDEN_ROOT = REPO_ROOT / "grader" / "hidden"
# A hidden suite's test files are root's only: the test child has read them before it drops to the
# learner's uid. A `*_workers.py` file holds the functions that processes the learner's code starts must
# import themselves (module 08's ranks), so it is readable, and so are the folders (Python's importer
# lists them): a learner's code may see the file names, never the tests.
WORKERS_MODE = 0o644


@dataclass(frozen=True)
class Isolation:
    namespaces: bool  # unshare --net --pid --mount works
    setuid: bool  # we can run the learner's code under its own uid

    def describe(self) -> str:
        parts = []
        parts.append("network, pid and mount namespaces" if self.namespaces else "no namespaces (unshare unavailable)")
        parts.append("a private uid per slot" if self.setuid else "the grader's own uid (not root, or Python in a folder other users cannot read)")
        return ", ".join(parts) + "; rlimits on memory, CPU, processes, file size; per-test process groups"


UNSHARE = ["unshare", "--net", "--pid", "--fork", "--mount-proc", "--mount", "--propagation", "private"]


def runtime_paths() -> list[str]:
    """What a test process reads besides the sandbox: the interpreter (multiprocessing's spawn and forkserver
    start it again), the standard library, site-packages and the course (an editable install)."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, str(REPO_ROOT),
             os.path.dirname(os.path.realpath(sys.executable)), *sys.path}
    return sorted({os.path.realpath(p) for p in paths if p and os.path.isdir(p)})


def closed_folders(paths: list[str]) -> list[str]:
    """The outermost folders on the way to `paths` that other users cannot enter: /root (mode 700) when
    pyenv installed Python there, a home folder of mode 750. A private uid could not import from them."""
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


@functools.lru_cache(maxsize=1)
def detect_isolation() -> Isolation:
    namespaces = False
    if shutil.which("unshare") and os.environ.get("LLMLAB_NO_NAMESPACES") != "1":
        try:
            namespaces = subprocess.run([*UNSHARE, "true"], capture_output=True, timeout=20).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            namespaces = False
    # In a mount namespace the worker opens closed folders (grader/judge/worker.py); without one, a private uid
    # could not read Python itself, so the tests run under the grader's uid.
    setuid = os.geteuid() == 0 and (namespaces or not closed_folders(runtime_paths()))
    return Isolation(namespaces=namespaces, setuid=setuid)


def secret_paths(extra: tuple[Path, ...] = ()) -> list[str]:
    """Folders the learner's code must not read: the repository's answers, other learners, the grades."""
    roots = {REPO_ROOT}
    try:  # an editable install may point at another checkout
        import importlib.metadata
        import json

        text = importlib.metadata.distribution("llmlab").read_text("direct_url.json") or "{}"
        url = json.loads(text).get("url", "")
        if url.startswith("file://"):
            roots.add(Path(url[len("file://"):]))
    except Exception:  # noqa: BLE001 - not installed, or not editable
        pass
    paths = {root / name for root in roots for name in ("grader/hidden", "solutions", "tests", "examples")}
    paths |= {Path(p) for p in extra}
    return sorted(str(p.resolve()) for p in paths if p.is_dir())


def hidden_suite(module: Module) -> Path:
    return HIDDEN_ROOT / module.name


def has_hidden_suite(module: Module) -> bool:
    folder = hidden_suite(module)
    return folder.is_dir() and any(folder.glob("test_*.py"))


class Sandbox:
    """A temporary folder holding one submission's module files and the hidden suites it is graded by."""

    def __init__(self, root: Path, uid: int | None) -> None:
        self.root = root
        self.uid = uid

    @classmethod
    def create(cls, files: dict[str, bytes], modules: list[Module], uid: int | None) -> "Sandbox":
        root = Path(tempfile.mkdtemp(prefix="llmlab-sandbox-"))
        os.chmod(root, 0o755)  # the learner's uid may traverse it, not write it
        box = cls(root, uid)
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
        for name in ("work", "home", "tmp"):
            (root / name).mkdir(mode=0o700)
            if uid is not None:
                os.chown(root / name, uid, uid)
        (root / "pytest.ini").write_text("[pytest]\n")
        return box

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

    def command(self, isolation: Isolation) -> list[str]:
        python = [sys.executable, "-s", "-m", "grader.judge.worker"]  # grader from lib/ (PYTHONPATH), no user site
        return [*UNSHARE, *python] if isolation.namespaces else python

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
