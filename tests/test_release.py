"""`llmlab release`: the learner's handout holds the stubs, public tests, docs and harness, and no reference code.

Works for every module in `existing_modules()`: nothing here names a module.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import pytest

from grader.harness.course import REPO_ROOT, existing_modules
from grader.publish.release import build_handout, learner_grader_files, zip_folder

MODULES = existing_modules()

# Where the references and the instructors' tests live: no line found only there may reach the handout.
SECRET_DIRS = [REPO_ROOT / "solutions", REPO_ROOT / "grader" / "hidden", REPO_ROOT / "tests" / "mutants"]
# What the learner may see anyway: a line also found here is not a leak (the stub's signatures and
# docstrings, the public tests, the chapters, the harness).
PUBLIC_DIRS = [REPO_ROOT / "exercises", REPO_ROOT / "docs"]
MIN_LENGTH = 20  # shorter normalised lines (`return x`, `else:`, `"""`) carry no solution


def normalise(line: str) -> str:
    return " ".join(line.split())


def lines_of(paths) -> set[str]:
    found = set()
    for path in paths:
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue
        found.update(normalise(line) for line in text.splitlines())
    return found


def files_under(folders) -> list[Path]:
    return [p for folder in folders if folder.is_dir() for p in sorted(folder.rglob("*")) if p.is_file() and "__pycache__" not in p.parts]


def secret_lines() -> set[str]:
    public = lines_of(files_under(PUBLIC_DIRS)) | lines_of((REPO_ROOT / "grader").glob("*.py")) | lines_of((REPO_ROOT / "grader" / "harness").glob("*.py"))
    secret = lines_of(files_under(SECRET_DIRS)) - public
    return {line for line in secret if len(line) >= MIN_LENGTH and not line.startswith("#")}


def leaks(handout: Path) -> list[str]:
    """`file: line` for every handout line that exists only in the references or the hidden suites."""
    secret = secret_lines()
    found = []
    for path in files_under([handout]):
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            text = path.read_bytes().decode("latin-1")  # binary files are scanned too
        for line in text.splitlines():
            if normalise(line) in secret:
                found.append(f"{path.relative_to(handout)}: {normalise(line)}")
    return found


@pytest.fixture(scope="module")
def handout(tmp_path_factory) -> Path:
    return build_handout(tmp_path_factory.mktemp("release") / "llmlab-handout")


# --------------------------------------------------------------------------------------------------
# Contents


def test_handout_has_every_existing_module(handout):
    """Each module with a reference has its stub, public tests and chapter in the handout."""
    assert MODULES, "no module has a reference: nothing to release"
    for module in MODULES:
        folder = handout / "exercises" / module.name
        assert (folder / module.file).is_file(), f"{module.name}: stub missing"
        assert list(folder.glob("test_*.py")), f"{module.name}: public tests missing"
        assert (handout / module.chapter).is_file(), f"{module.name}: chapter missing"
        if (REPO_ROOT / "exercises" / module.name / "hints.md").is_file():
            assert (folder / "hints.md").is_file()
        assert "NotImplementedYet" in (folder / module.file).read_text()
    for name in ("README.md", "pyproject.toml", "grader/harness/plugin.py", "grader/harness/checks.py", "grader/harness/loader.py"):
        assert (handout / name).is_file(), name


def test_handout_is_a_site_for_learners_only(handout):
    """The handout ships its site config (no hooks, nav written out), the contract page and each chapter's
    "What you write" section written in, numpy as a dependency, and no instructors' page."""
    import tomllib

    assert not (handout / "docs" / "instructors.md").exists()
    config = (handout / "mkdocs.yml").read_text()
    assert "hooks:" not in config and "instructors.md" not in config
    for module in MODULES:
        assert f"{module.name}.md" in config, f"{module.name}'s chapter is not in the handout's navigation"
        assert "## What you write" in (handout / module.chapter).read_text()
    for page in ("contract.md", "harness.md"):
        assert page in config and (handout / "docs" / page).is_file()
    assert "<!-- llmlab" not in (handout / "docs" / "contract.md").read_text()
    project = tomllib.loads((handout / "pyproject.toml").read_text())["project"]
    assert {"numpy", "pytest"} <= {re.split(r"[<>=]", d)[0] for d in project["dependencies"]}
    assert "mkdocs-material" in " ".join(project["optional-dependencies"]["docs"])


@pytest.mark.slow
def test_handout_site_builds_strict(handout, tmp_path):
    """`mkdocs build --strict` works in the handout, as `mkdocs serve` will."""
    copy = tmp_path / "handout"
    shutil.copytree(handout, copy)
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    env.pop("PYTHONPATH", None)
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")], cwd=copy,
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (tmp_path / "site" / "contract" / "index.html").is_file()
    assert "What you write" in (tmp_path / "site" / MODULES[0].name / "index.html").read_text()


def test_handout_chapters_show_their_figures(handout):
    """The figures are drawn at release (the handout has no code that could draw them)."""
    import re

    for chapter in (handout / "docs").glob("[0-9][0-9]_*.md"):
        for figure in re.findall(r"\]\((figures/[^)]+\.png)\)", chapter.read_text()):
            assert (handout / "docs" / figure).is_file(), f"{chapter.name} shows {figure}, not in the handout"


def test_handout_has_nothing_instructor_only(handout):
    """No solutions, hidden suite, mutants, meta-suite, release/grading code, compiled files or git data."""
    names = {p.relative_to(handout).as_posix() for p in handout.rglob("*")}
    forbidden = re.compile(r"(^|/)(solutions|hidden|mutants|tests|\.git|__pycache__|\.ci)(/|$)|\.pyc$|\.pyo$")
    assert not [n for n in names if forbidden.search(n)], [n for n in names if forbidden.search(n)]
    shipped = {p.relative_to(handout / "grader").as_posix() for p in (handout / "grader").rglob("*") if p.is_file()}
    assert not [n for n in shipped if n.startswith(("judge/", "publish/"))], shipped
    # the handout's grader is the package's top and the harness wing, exactly
    assert shipped == set(learner_grader_files()), shipped ^ set(learner_grader_files())
    assert {"__init__.py", "cli.py", "harness/plugin.py", "harness/learner.py", "harness/notebook.py"} <= shipped


def test_no_reference_line_reaches_the_handout(handout):
    """A scan of every handout file finds no line that exists only in solutions/, grader/hidden/ or the mutants."""
    found = leaks(handout)
    assert not found, "lines from the references or hidden suites in the handout:\n" + "\n".join(found[:20])


def test_the_scan_catches_a_leak(handout, tmp_path):
    """The scan is not vacuous: a reference line pasted into a chapter, or a reference file dropped in, is found."""
    secret = sorted(secret_lines(), key=len)
    assert secret, "the references hold no line of their own: the scan would prove nothing"
    copy = tmp_path / "leaky"
    shutil.copytree(handout, copy)
    module = MODULES[0]
    with (copy / module.chapter).open("a") as chapter:
        chapter.write("\n```python\n    " + secret[-1] + "\n```\n")
    assert any(module.chapter in leak for leak in leaks(copy))
    shutil.copyfile(REPO_ROOT / "solutions" / module.name / module.file, copy / "exercises" / module.name / module.file)
    assert any(f"exercises/{module.name}/{module.file}" in leak for leak in leaks(copy))


def test_handout_grader_imports_only_what_it_ships(handout):
    """Every `grader.X` module a shipped file imports is shipped (the CLI's lazy instructor commands excepted)."""
    from layout import grader_imports

    grader = handout / "grader"
    shipped = {".".join(("grader", *p.relative_to(grader).with_suffix("").parts)) for p in grader.rglob("*.py")}
    shipped |= {name.removesuffix(".__init__") for name in shipped}
    for path in grader.rglob("*.py"):
        if path.name == "cli.py":
            continue
        missing = grader_imports(path) - shipped
        assert not missing, f"{path.relative_to(grader)} imports {missing}, which the handout lacks"


def test_zip_holds_the_same_files(handout, tmp_path):
    """`--zip`: a valid zip whose entries are the handout's files under one top folder."""
    archive = zip_folder(handout, tmp_path / "handout.zip")
    with zipfile.ZipFile(archive) as zf:
        assert zf.testzip() is None
        names = {n for n in zf.namelist() if not n.endswith("/")}
    expected = {f"{handout.name}/{p.relative_to(handout).as_posix()}" for p in handout.rglob("*") if p.is_file()}
    assert names == expected


def test_cli_release_refuses_a_non_empty_folder(tmp_path):
    """`llmlab release OUT` into a folder that already holds files is an error, not a merge."""
    from grader.cli import main
    from grader.publish.release import ReleaseError

    (tmp_path / "x.txt").write_text("mine")
    with pytest.raises(ReleaseError, match="not empty"):
        main(["release", str(tmp_path)])


@pytest.fixture
def figures_drawn_once(handout, monkeypatch):
    """A second release in the session copies the figures the `handout` fixture drew (the release's slowest
    step: the references run to draw them) instead of drawing them again; build_handout's figures stay real."""
    from grader.publish import release

    def copy_figures(root: Path, target: Path) -> list[str]:
        shutil.copytree(handout / "docs" / "figures", target, dirs_exist_ok=True)
        return []

    monkeypatch.setattr(release, "draw_figures", copy_figures)


def test_cli_release_with_zip(tmp_path, capsys, figures_drawn_once):
    """`llmlab release OUT --zip` writes the folder and OUT.zip."""
    from grader.cli import main

    assert main(["release", str(tmp_path / "h"), "--zip"]) == 0
    assert (tmp_path / "h" / "pyproject.toml").is_file()
    assert zipfile.is_zipfile(tmp_path / "h.zip")


# --------------------------------------------------------------------------------------------------
# Installed in a fresh virtual environment, the learner's loop works


def readme_install_command(handout: Path) -> list[str]:
    """The `pip install ...` line of the handout's README."""
    match = re.search(r"^pip install (.+)$", (handout / "README.md").read_text(), flags=re.MULTILINE)
    assert match, "the handout's README gives no `pip install` command"
    return match.group(1).replace('"', "").split()


def junit_outcomes(xml: Path) -> dict[str, str]:
    outcomes = {}
    for case in ET.parse(xml).getroot().iter("testcase"):
        state = "failed" if case.find("failure") is not None or case.find("error") is not None else "skipped" if case.find("skipped") is not None else "passed"
        outcomes[f"{case.get('classname')}::{case.get('name')}"] = state
    return outcomes


@pytest.mark.slow
def test_handout_installs_and_runs_the_learner_loop(handout, tmp_path):
    """In a fresh venv, the README's command installs the handout; the public tests fail on the stubs
    with teaching messages and pass once the learner's finished files are in place.

    Offline and fast, honestly: the venv is a fresh `python -m venv --without-pip` whose only link to
    the course venv is a .pth naming its site-packages as a plain path (so torch, pytest, pip and
    setuptools are found as if installed, and no .pth of the course venv runs: its editable `llmlab`
    is not active). The README's command then runs as written, with `--no-index` (the wheels are already
    there: pip reports torch==2.13.0 as satisfied) and `--no-build-isolation` (no download of setuptools).
    """
    copy = tmp_path / "handout"
    shutil.copytree(handout, copy)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(subprocess.check_output([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True).strip())
    (site / "course_venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"}}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    python = str(venv / "bin" / "python")

    install = subprocess.run([python, "-m", "pip", "install", "--no-index", "--no-build-isolation", *readme_install_command(copy)],
                             cwd=copy, env=env, capture_output=True, text=True)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    # the harness comes from the handout, not from the repository
    where = subprocess.check_output([python, "-c", "import grader.harness.plugin; print(grader.harness.plugin.__file__)"], cwd=tmp_path, env=env, text=True)
    assert Path(where.strip()).resolve().is_relative_to(copy.resolve()), where

    def run_public(tag: str) -> tuple[dict[str, str], str]:
        xml = tmp_path / f"{tag}.xml"
        paths = [f"exercises/{m.name}" for m in MODULES]
        result = subprocess.run([python, "-m", "pytest", *paths, "-p", "no:cacheprovider", f"--junitxml={xml}"],
                                cwd=copy, env=env, capture_output=True, text=True)
        return junit_outcomes(xml), result.stdout + result.stderr

    stubs, output = run_public("stubs")
    assert stubs and all(state == "failed" for state in stubs.values()), output[-3000:]
    for module in MODULES:
        assert any(f"exercises.{module.name}" in name or module.name in name for name in stubs), f"no public test of {module.name} ran"
        assert f"in exercises/{module.name}/{module.file} is not implemented yet" in output
        assert f"Read: {module.chapter}" in output

    for module in MODULES:  # the learner's finished files (the references stand in for them)
        shutil.copyfile(REPO_ROOT / "solutions" / module.name / module.file, copy / "exercises" / module.name / module.file)
    done, output = run_public("done")
    assert set(done) == set(stubs)
    assert all(state == "passed" for state in done.values()), output[-3000:]

    check = subprocess.run([str(venv / "bin" / "llmlab"), "check", MODULES[0].name], cwd=copy, env=env, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    absent = subprocess.run([str(venv / "bin" / "llmlab"), "release", str(tmp_path / "again")], cwd=copy, env=env, capture_output=True, text=True)
    assert absent.returncode == 2 and "not available here" in absent.stdout
    helptext = subprocess.run([str(venv / "bin" / "llmlab"), "--help"], cwd=copy, env=env, capture_output=True, text=True).stdout
    assert "learner commands" in helptext and "check" in helptext
    # the handout's CLI offers the learner's commands only
    assert "instructor commands" not in helptext and "\n  stubs" not in helptext and "\n  grade " not in helptext, helptext
    numpy_warning = subprocess.run([python, "-c", "import torch; torch.zeros(1).numpy()"], cwd=copy, env=env, capture_output=True, text=True)
    assert "Failed to initialize NumPy" not in numpy_warning.stderr
