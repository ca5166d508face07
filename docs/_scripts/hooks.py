"""MkDocs hooks: the navigation, the figures, and the stub's signatures in every chapter.

- `on_config`: the navigation lists the home page, one chapter per module that has one (in course
  order, so a new module appears with no edit here), then the guides.
- `on_pre_build`: draws the figures from the reference solutions into docs/figures/ (figures.py).
- `on_page_markdown`: inserts a "What you write" section into each module chapter, before its
  pitfalls: the signatures and docstrings of what the module's stub asks for, read from
  `exercises/NN_name/<file>`, so the chapter can never drift from the code the learner sees.
"""

from __future__ import annotations

import ast
import copy
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from grader.harness.course import MODULES  # noqa: E402

GUIDES = [
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


# -- "What you write" ------------------------------------------------------------------------------


def _raises_not_implemented(node: ast.AST) -> bool:
    return any(
        isinstance(n, ast.Raise) and "NotImplementedYet" in ast.unparse(n) for n in ast.walk(node)
    )


def _signature(fn: ast.FunctionDef, indent: str) -> str:
    bare = copy.copy(fn)
    bare.body, bare.decorator_list = [ast.Pass()], []
    header = ast.unparse(bare).splitlines()[0]
    lines = [f"{indent}{header}"]
    doc = ast.get_docstring(fn)
    if doc:
        first = doc.split("\n\n")[0].replace("\n", " ")
        lines.append(f'{indent}    """{first}"""')
    return "\n".join(lines)


def stub_signatures(stub: Path) -> str:
    """The `def` and `class` headers (with their docstrings' first paragraph) of what the stub asks for."""
    tree = ast.parse(stub.read_text())
    blocks = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and _raises_not_implemented(node):
            blocks.append(_signature(node, ""))
        elif isinstance(node, ast.ClassDef) and _raises_not_implemented(node):
            bases = ", ".join(ast.unparse(b) for b in node.bases)
            lines = [f"class {node.name}({bases}):" if bases else f"class {node.name}:"]
            methods = [m for m in node.body if isinstance(m, ast.FunctionDef) and _raises_not_implemented(m)]
            lines += [_signature(m, "    ") for m in methods]
            blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def on_page_markdown(markdown: str, page, config, files, **kwargs):
    if page.file.src_uri == "index.md":
        # A module whose chapter is not written yet stays in the table, without a dead link.
        def unlink(m: re.Match) -> str:
            return m.group(0) if (Path(config["docs_dir"]) / m.group(2)).is_file() else m.group(1)

        return re.sub(r"\[([^\]]+)\]\((\d\d_\w+\.md)\)", unlink, markdown)
    match = re.fullmatch(r"(\d\d_\w+)\.md", Path(page.file.src_uri).name)
    module = next((m for m in MODULES if match and m.name == match.group(1)), None)
    if module is None:
        return markdown
    stub = ROOT / "exercises" / module.name / module.file
    if not stub.is_file():
        return markdown
    section = (
        "## What you write\n\n"
        f"The stub `exercises/{module.name}/{module.file}` asks for these (its docstrings say more; "
        f"`pytest exercises/{module.name}` checks them):\n\n"
        f"```python\n{stub_signatures(stub)}\n```\n\n"
    )
    for heading in ("## Pitfalls", "## Further reading"):
        at = markdown.find(f"\n{heading}")
        if at != -1:
            return markdown[: at + 1] + section + markdown[at + 1 :]
    return markdown.rstrip() + "\n\n" + section
