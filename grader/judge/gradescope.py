"""Gradescope: the autograder bundle (`llmlab gradescope build`) and what it runs (`llmlab gradescope run`).

Gradescope unzips the bundle into /autograder/source, runs `setup.sh` once per image, then for each
submission puts the learner's files in /autograder/submission, runs /autograder/run_autograder and reads
/autograder/results/results.json (https://gradescope-autograders.readthedocs.io/en/latest/specs/).

The bundle holds the course's harness and hidden suites (never `solutions/` or `tests/`), a
`gradescope.json` with the limits and the class's secret seed, and the two scripts. `run` grades the one
submission with the same sandboxed judge as `llmlab grade` and copies its `results.json` into place.
"""

from __future__ import annotations

import json
import secrets
import shutil
import stat
import sys
import tempfile
import zipfile
from pathlib import Path

from grader.harness.course import REPO_ROOT

CONFIG = "gradescope.json"

SETUP_SH = """#!/usr/bin/env bash
# Gradescope runs this once when it builds the autograder image (Ubuntu, as root).
set -euo pipefail
cd /autograder/source
# bubblewrap: the grader's sandbox (a filesystem allow-list, no network); without it grading falls back to rlimits
apt-get update -qq && apt-get install -y -qq python3 python3-venv python3-pip bubblewrap >/dev/null
# the course needs Python 3.11 or newer (Ubuntu 22.04's python3 is 3.10; its universe has python3.11)
PYTHON=python3
if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    apt-get install -y -qq python3.11 python3.11-venv >/dev/null
    PYTHON=python3.11
fi
"$PYTHON" -m venv /autograder/venv
/autograder/venv/bin/pip install -q --upgrade pip
# the CPU wheel of torch (pinned as in the README), then the course and its oracles
/autograder/venv/bin/pip install -q torch=={torch} --index-url https://download.pytorch.org/whl/cpu
/autograder/venv/bin/pip install -q '/autograder/source[grader]'
"""

RUN_AUTOGRADER = """#!/usr/bin/env bash
# Gradescope runs this for every submission: the learner's files are in /autograder/submission.
set -uo pipefail
ROOT="${LLMLAB_AUTOGRADER_ROOT:-/autograder}"
PYTHON="${LLMLAB_PYTHON:-/autograder/venv/bin/python}"
cd "$ROOT/source"
PYTHONPATH="$ROOT/source" exec "$PYTHON" -m grader.cli gradescope run "$ROOT"
"""

# what the bundle carries from the repository: the harness, the hidden suites, the packaging, and the
# stubs as handed out (the audit leaves their lines alone)
INCLUDE = ["pyproject.toml", "README.md", "grader", "exercises"]


def _torch_version() -> str:
    try:
        import torch

        return torch.__version__.split("+")[0]
    except ImportError:  # pragma: no cover - torch is a dependency
        return "2.13.0"


def _is_stub(path: Path) -> bool:
    """`exercises/NN_name/<file>`: a module's stub (not its public tests or hints)."""
    from grader.harness.course import find_module

    module = find_module(path.parent.name)
    return module is not None and path.name == module.file


def build(target: Path, timeout: float = 30.0, memory_mb: int = 2048, seed: int | None = None) -> Path:
    """Write the autograder zip at `target` and return its path."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    config = {"timeout": timeout, "memory_mb": memory_mb, "seed": secrets.randbits(48) if seed is None else seed}
    with tempfile.TemporaryDirectory() as folder:
        partial = Path(folder) / "bundle.zip"
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as bundle:
            for name in INCLUDE:
                source = REPO_ROOT / name
                paths = [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file())
                for path in paths:
                    if "__pycache__" in path.parts or path.suffix == ".pyc":
                        continue
                    if name == "exercises" and not _is_stub(path):
                        continue
                    bundle.write(path, path.relative_to(REPO_ROOT).as_posix())
            for name, text in (("setup.sh", SETUP_SH.replace("{torch}", _torch_version())),
                               ("run_autograder", RUN_AUTOGRADER)):
                info = zipfile.ZipInfo(name)
                info.external_attr = (stat.S_IFREG | 0o755) << 16
                bundle.writestr(info, text)
            bundle.writestr(CONFIG, json.dumps(config, indent=1))
        shutil.move(partial, target)
    return target


def run(root: Path | None = None) -> int:
    """Grade `ROOT/submission` into `ROOT/results/results.json` (ROOT defaults to /autograder)."""
    from grader.harness.files import atomic_write
    from grader.judge.grade import Collection, Options, grade_submission, graded_modules
    from grader.judge.report import write_learner
    from grader.judge.sandbox import detect_isolation
    from grader.judge.submission import read_submission

    root = Path(root or "/autograder")
    config_path = root / "source" / CONFIG
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    results = root / "results" / "results.json"
    results.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "grades"
        options = Options(out=out, modules=graded_modules(), timeout=float(config.get("timeout", 30.0)),
                          memory_mb=int(config.get("memory_mb", 2048)), seed=int(config.get("seed", 0)), force=True)
        # Gradescope unpacks the upload into submission/ (a zip of exercises/ arrives as its files)
        submission = read_submission("submission", root / "submission")
        options.isolation = detect_isolation()
        collection = Collection(options.modules)  # the judge's collection, beside the worker's start
        try:
            record = grade_submission(submission, collection, options)
        finally:
            collection.close()
        write_learner(out, record)
        atomic_write(results, (out / "submission" / "results.json").read_text())
        print(f"{record.total:g} / {record.max_total:g} points", file=sys.stderr)
    return 0
