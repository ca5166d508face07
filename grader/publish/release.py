"""`llmlab release OUT [--zip]`: the learner's handout, built from the repository.

The handout holds what a learner needs and nothing an instructor keeps back:

    README.md, AGENTS.md, pyproject.toml, mkdocs.yml, .gitignore
    exercises/NN_name/   the stub (generated from the reference, as `llmlab stubs` does), public tests, hints
    docs/                the chapters (Markdown, each with its "What you write" section written in), the
                         contract page, the figures drawn; no code files and no instructors' guide
    grader/              `__init__.py`, `cli.py` and the harness wing (`grader/harness/`): the pytest plugin,
                         the loader, the checks and tolerances, the learner's commands

Never in it: `solutions/`, `grader/hidden/`, the mutants and the project's own `tests/`, the judge
and publish wings (grading, the stub generator, release and nbgrader code), compiled
files, git history. It works for every module in `grader.harness.course.existing_modules()`: a module appears
in the handout as soon as its reference exists.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import tomllib
import zipfile
from pathlib import Path

from grader.harness.course import REPO_ROOT, Module, existing_modules
from grader.publish.stubs import make_stub, solution_path

# The grader files the handout ships: the package's top (the stubs import `grader.NotImplementedYet`; the CLI
# imports the judge and publish wings lazily and says so when they are absent) and the whole harness wing.
SHIPPED_TOP = ("__init__.py", "cli.py")
SHIPPED_WING = "harness"
SKIPPED_NAMES = {"__pycache__", ".pytest_cache", ".ipynb_checkpoints", ".DS_Store"}
SKIPPED_SUFFIXES = {".pyc", ".pyo"}
DISTRIBUTION = "llmlab-handout"
# docs pages for instructors only: never in the learner's copy
INSTRUCTOR_PAGES = {"instructors.md"}
# the learner's site: these pages after the chapters, where they exist
LEARNER_GUIDES = (("The contract", "contract.md"), ("Harness reference", "harness.md"))


class ReleaseError(RuntimeError):
    pass


# --------------------------------------------------------------------------------------------------
# What goes in


def learner_grader_files(grader_dir: Path = REPO_ROOT / "grader") -> list[str]:
    """The grader files the handout ships, relative to `grader/`: the package's top and the harness wing."""
    wing = sorted(f"{SHIPPED_WING}/{p.name}" for p in (grader_dir / SHIPPED_WING).glob("*.py"))
    return [name for name in SHIPPED_TOP if (grader_dir / name).is_file()] + wing


def _copy_tree(source: Path, target: Path, skip_suffixes: set[str] = frozenset(), skip_names: set[str] = frozenset()) -> None:
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        if any(part in SKIPPED_NAMES | set(skip_names) for part in relative.parts) or path.suffix in SKIPPED_SUFFIXES | set(skip_suffixes):
            continue
        if path.is_file():
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target / relative)


def _torch_pin(root: Path) -> str:
    match = re.search(r"torch==([0-9][0-9.]*[0-9])", (root / "README.md").read_text()) if (root / "README.md").is_file() else None
    return match.group(1) if match else "2.13.0"


def _pyproject(root: Path) -> str:
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    torch_requirement = next((d for d in project["dependencies"] if d.startswith("torch")), "torch")
    return f'''[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "{DISTRIBUTION}"
version = "{project["version"]}"
description = "LLM Lab, the learner's handout: write the pieces of an LLM, pytest tells you what is still wrong."
readme = "README.md"
requires-python = "{project.get("requires-python", ">=3.11")}"
license = {{ text = "MIT" }}
# The public tests need torch, numpy and pytest only; the libraries the grader checks against stay with the grader.
dependencies = ["{torch_requirement}", "numpy", "pytest>=8.0"]

[project.optional-dependencies]
# the course site: `mkdocs serve` in this folder
docs = ["mkdocs-material>=9.5", "pymdown-extensions>=10"]

[project.scripts]
llmlab = "grader.cli:main"

[project.entry-points.pytest11]
llmlab = "grader.harness.plugin"

[tool.setuptools.packages.find]
include = ["grader*"]

[tool.pytest.ini_options]
testpaths = ["exercises"]
addopts = ["--import-mode=importlib", "-ra", "--tb=short", "--strict-markers"]
filterwarnings = ["ignore::DeprecationWarning:torch.*"]
'''


def _readme(modules: list[Module], torch_version: str) -> str:
    first = modules[0] if modules else None
    example = first.name if first else "01_rmsnorm"
    file = f"exercises/{first.name}/{first.file}" if first else "exercises/01_rmsnorm/rmsnorm.py"
    rows = "\n".join(f"| `{m.name}` | {m.title} | `exercises/{m.name}/{m.file}` | `{m.chapter}` |" for m in modules)
    return f"""# LLM Lab: your handout

Learn how large language models are built by writing the pieces yourself. Each module is one small
file whose functions you write; its tests tell you, in words, what is still wrong and which chapter
to read. When the public tests pass, hand in your `exercises/` folder: the grader runs more tests
(hidden ones, against the real libraries) on the same files.

## Install

Python 3.11 or newer. In this folder, in a fresh virtual environment, one command:

```bash
python3 -m venv .venv && . .venv/bin/activate
pip install torch=={torch_version} -e .
```

`torch=={torch_version}` is pinned so that a CPU-only machine gets the CPU wheel; with a GPU, install
the CUDA build of PyTorch first (see pytorch.org), then `pip install -e .`. Every exercise runs
on a CPU. That brings torch, numpy and pytest, nothing heavier.

The chapters are in `docs/` (Markdown). To read them as a site, with the math typeset:

```bash
pip install -e ".[docs]" && mkdocs serve     # then open http://127.0.0.1:8000
```

## The loop

```bash
pytest exercises/{example}            # fails, and says what to write and which chapter to read
$EDITOR {file}
pytest exercises/{example}            # ... until it passes
```

Read the chapter first (`docs/`), then write one function at a time. Helpers:

```bash
llmlab check {example}     # the same tests, showing only what to fix
llmlab progress            # every module at a glance
llmlab hint {example}      # a hint, gentle first; again for the next one
llmlab watch {example}     # re-run the tests each time you save
```

Only the bodies of the functions that raise `NotImplementedYet` are yours to write: keep the names,
the signatures and the file names, and do not edit the tests or `grader/` (the grader uses its own).

## Modules

| module | topic | your file | chapter |
| --- | --- | --- | --- |
{rows}

## Handing in

Hand in the `exercises/` folder (or a zip of it) as your instructor asks. The grader loads
`exercises/NN_name/<file>.py` by path, so keep the layout.
"""


def _gitignore() -> str:
    return "__pycache__/\n*.pyc\n.venv/\n.pytest_cache/\n*.egg-info/\n.llmlab/\n"


def build_handout(out: Path, root: Path = REPO_ROOT, modules: list[Module] | None = None) -> Path:
    """Write the handout folder `out` (which must not exist, or be empty) and return it."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ReleaseError(f"{out} exists and is not empty: give a new folder")
    modules = existing_modules(root / "solutions") if modules is None else modules
    if not modules:
        raise ReleaseError(f"no module has a reference under {root / 'solutions'}: nothing to release")
    out.mkdir(parents=True, exist_ok=True)

    for module in modules:
        source = root / "exercises" / module.name
        target = out / "exercises" / module.name
        if source.is_dir():
            _copy_tree(source, target)
        target.mkdir(parents=True, exist_ok=True)
        reference = solution_path(module, root)
        # The stub comes from the reference itself, so a stale committed stub cannot leak or lag.
        (target / module.file).write_text(make_stub(reference.read_text(), str(reference)))

    if (root / "docs").is_dir():
        # Chapters and their assets; no code files (figure scripts may run reference code), no instructors' pages.
        _copy_tree(root / "docs", out / "docs", skip_suffixes={".py", ".ipynb"}, skip_names=INSTRUCTOR_PAGES)
        draw_figures(root, out / "docs" / "figures")
        _write_in_generated_sections(out / "docs", modules, root)
        if (root / "mkdocs.yml").is_file():
            (out / "mkdocs.yml").write_text(_mkdocs_yml((root / "mkdocs.yml").read_text(), out / "docs", modules))

    for name in learner_grader_files(root / "grader"):
        (out / "grader" / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / "grader" / name, out / "grader" / name)

    if (root / "AGENTS.md").is_file():
        shutil.copyfile(root / "AGENTS.md", out / "AGENTS.md")
    (out / "README.md").write_text(_readme(modules, _torch_pin(root)))
    (out / "pyproject.toml").write_text(_pyproject(root))
    (out / ".gitignore").write_text(_gitignore())
    return out


def _write_in_generated_sections(docs: Path, modules: list[Module], root: Path) -> None:
    """What the repository's docs build adds with its hooks, written into the handout's pages (it has no hooks):
    each chapter's "What you write" section and the contract page."""
    from grader.publish.contract import fill_contract_page, insert_section, stub_of, what_you_write

    for module in modules:
        chapter = docs / f"{module.name}.md"
        stub = stub_of(module, root)
        if chapter.is_file() and stub is not None:
            chapter.write_text(insert_section(chapter.read_text(), what_you_write(module, stub)))
    contract = docs / "contract.md"
    if contract.is_file():
        contract.write_text(fill_contract_page(contract.read_text(), modules, root))


def _mkdocs_yml(config: str, docs: Path, modules: list[Module]) -> str:
    """The repository's site config without its hooks (not shipped), with the navigation written out."""
    config = re.sub(r"^hooks:\n(?:[ \t]+- .*\n)+", "", config, flags=re.MULTILINE)
    config = config.split("\nnav:", 1)[0].rstrip()
    config = re.sub(r"^# Filled by hooks\.py.*$", "", config, flags=re.MULTILINE).rstrip()
    chapters = [(m, docs / f"{m.name}.md") for m in modules if (docs / f"{m.name}.md").is_file()]
    lines = ["", "", "# The handout's pages: the home page, the chapters, the contract and the harness guide.", "nav:",
             "  - Home: index.md", "  - Modules:"]
    for module, chapter in chapters:
        title = chapter.read_text().splitlines()[0].lstrip("# ").strip() or module.name
        lines.append(f"      - {_yaml_string(title)}: {chapter.name}")
    lines += [f"  - {title}: {page}" for title, page in LEARNER_GUIDES if (docs / page).is_file()]
    return config + "\n".join(lines) + "\n"


def _yaml_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def draw_figures(root: Path, target: Path) -> list[str]:
    """The chapters' figures, drawn by the references into `target` (the docs build and the handout,
    which has no code that could draw them); returns the modules that have no reference."""
    script = root / "docs" / "_scripts" / "figures.py"
    if not script.is_file():
        return []
    spec = importlib.util.spec_from_file_location("llmlab_docs_figures", script)
    figures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(figures)
    return figures.make_all(target)


def zip_folder(folder: Path, archive: Path | None = None) -> Path:
    """`folder` as `folder.zip` (entries under `folder.name/`), deterministic order."""
    folder = Path(folder)
    archive = Path(archive) if archive else folder.with_suffix(".zip")
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, Path(folder.name) / path.relative_to(folder))
    return archive


def release(out: Path, make_zip: bool = False) -> list[Path]:
    folder = build_handout(Path(out))
    return [folder, zip_folder(folder)] if make_zip else [folder]
