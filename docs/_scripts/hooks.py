"""MkDocs hooks: the navigation, the figures, and the stub's signatures in every chapter.

- `on_config`: the navigation lists the home page, one chapter per module that has one (in course
  order, so a new module appears with no edit here), then the guides.
- `on_pre_build`: draws the figures from the reference solutions into docs/figures/ (figures.py).
- `on_page_markdown`: inserts a "What you write" section into each module chapter, before its
  pitfalls: the signatures and docstrings of what the module's stub asks for, read from the stub its
  reference generates (not from `exercises/`, where a learner's finished file asks for nothing), so the
  chapter can never drift from the code the learner sees; and fills `contract.md`, every module's
  contract in full (grader/publish/contract.py).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from grader.harness.course import MODULES  # noqa: E402

GUIDES = [
    {"The contract": "contract.md"},
    {"Instructors": "instructors.md"},
    {"Harness reference": "harness.md"},
]


def _chapters(docs_dir: Path) -> list[dict[str, str]]:
    chapters = []
    for module in MODULES:
        path = docs_dir / module.chapter.removeprefix("docs/")
        if path.is_file():
            title = path.read_text().splitlines()[0].lstrip("# ").strip() or module.name
            chapters.append({title: path.name})
    return chapters


def on_config(config, **kwargs):
    docs_dir = Path(config["docs_dir"])
    guides = [g for g in GUIDES if (docs_dir / next(iter(g.values()))).is_file()]
    config["nav"] = [{"Home": "index.md"}, {"Modules": _chapters(docs_dir)}, *guides]
    return config


def on_pre_build(config, **kwargs):
    from grader.publish.release import draw_figures

    missing = draw_figures(ROOT, Path(config["docs_dir"]) / "figures")
    if missing:
        print(f"llmlab docs: no reference solution for {', '.join(missing)}: their figures are not redrawn")


# -- "What you write" and the contract ------------------------------------------------------------


def on_page_markdown(markdown: str, page, config, files, **kwargs):
    from grader.publish.contract import fill_contract_page, insert_section, stub_of, what_you_write

    if page.file.src_uri == "index.md":
        # A module whose chapter is not written yet stays in the table, without a dead link.
        def unlink(m: re.Match) -> str:
            return m.group(0) if (Path(config["docs_dir"]) / m.group(2)).is_file() else m.group(1)

        return re.sub(r"\[([^\]]+)\]\((\d\d_\w+\.md)\)", unlink, markdown)
    if page.file.src_uri == "contract.md":
        return fill_contract_page(markdown, list(MODULES), ROOT)
    match = re.fullmatch(r"(\d\d_\w+)\.md", Path(page.file.src_uri).name)
    module = next((m for m in MODULES if match and m.name == match.group(1)), None)
    stub = stub_of(module, ROOT) if module is not None else None
    if stub is None:
        return markdown
    return insert_section(markdown, what_you_write(module, stub))
