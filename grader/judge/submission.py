"""A learner's submission as the judge reads it: a folder laid out like `exercises/`, or a zip of one.

Only the course's module files (`NN_name/<file>.py`) are kept; everything else is listed as ignored. A zip
that is not one, holds absolute or `..` paths, or is too large is rejected for that learner only.
"""

from __future__ import annotations

import hashlib
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from grader.harness.course import MODULES, find_module

LEARNER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,99}$")
MAX_FILE_BYTES = 1 << 20
MAX_ENTRIES = 10_000
MAX_ZIP_BYTES = 50 << 20  # a zip larger than this, or that unpacks to more than MAX_UNPACKED_BYTES, is rejected
MAX_UNPACKED_BYTES = 200 << 20


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
