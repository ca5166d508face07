"""The course's contract, read from the stubs: what each module asks the learner to write.

The stub (generated from the reference, `grader/publish/stubs.py`) holds the contract: the names, the
signatures and the docstrings (shapes, dtypes, the errors to raise). The docs show it twice, both built
from the stub the reference generates (never from the learner's file, which loses its `NotImplementedYet`
as it is written):

- a "What you write" section in each chapter: the headers and the first paragraph of each docstring;
- `docs/contract.md`, the page that lists every module's contract in full.
"""

from __future__ import annotations

import ast
import copy
from pathlib import Path

from grader.harness.course import REPO_ROOT, Module
from grader.harness.loader import functions_still_to_write
from grader.publish.stubs import make_stub, solution_path

CONTRACT_MARKER = "<!-- llmlab: the contract of every module, generated from the stubs -->"


def stub_of(module: Module, root: Path = REPO_ROOT) -> str | None:
    """The stub the module's reference generates (None without a reference)."""
    reference = solution_path(module, root)
    return make_stub(reference.read_text(), str(reference)) if reference.is_file() else None


def _header(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    bare = copy.copy(fn)
    bare.body, bare.decorator_list = [ast.Pass()], []
    return ast.unparse(bare).splitlines()[0]


def _docstring(node: ast.AST, indent: str, whole: bool) -> list[str]:
    doc = ast.get_docstring(node)
    if not doc:
        return []
    if not whole:
        return [f'{indent}"""{" ".join(doc.split(chr(10) * 2)[0].split())}"""']
    lines = doc.splitlines()
    body = [f"{indent}{line}" if line.strip() else "" for line in lines[1:]]
    return [f'{indent}"""{lines[0]}', *body, f'{indent}"""'] if len(lines) > 1 else [f'{indent}"""{lines[0]}"""']


def signatures(stub: str, whole_docstrings: bool = False) -> str:
    """The `class` and `def` headers of what the stub asks for, each with its docstring (or its first paragraph)."""
    tree = ast.parse(stub)
    wanted = set(functions_still_to_write(stub))
    blocks = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in wanted:
            blocks.append("\n".join([_header(node), *_docstring(node, "    ", whole_docstrings)]))
        elif isinstance(node, ast.ClassDef) and any(name.startswith(node.name + ".") for name in wanted):
            bases = ", ".join(ast.unparse(b) for b in node.bases)
            lines = [f"class {node.name}({bases}):" if bases else f"class {node.name}:"]
            lines += _docstring(node, "    ", whole_docstrings)
            for method in node.body:
                if isinstance(method, (ast.FunctionDef, ast.AsyncFunctionDef)) and f"{node.name}.{method.name}" in wanted:
                    lines += ["    " + _header(method), *_docstring(method, "        ", whole_docstrings)]
            blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def what_you_write(module: Module, stub: str) -> str:
    """The chapter's "What you write" section."""
    return (
        "## What you write\n\n"
        f"The stub `exercises/{module.name}/{module.file}` asks for these (its docstrings say more; "
        f"`pytest exercises/{module.name}` checks them; [the contract](contract.md) lists them in full):\n\n"
        f"```python\n{signatures(stub)}\n```\n\n"
    )


def insert_section(markdown: str, section: str) -> str:
    """`section` before the chapter's pitfalls (or its further reading), else at the end."""
    for heading in ("## Pitfalls", "## Further reading"):
        at = markdown.find(f"\n{heading}")
        if at != -1:
            return markdown[: at + 1] + section + markdown[at + 1 :]
    return markdown.rstrip() + "\n\n" + section


def contract_markdown(modules: list[Module], root: Path = REPO_ROOT) -> str:
    """Every module's contract in full: each function and class the learner writes, with its whole docstring."""
    parts = []
    for module in modules:
        stub = stub_of(module, root)
        if stub is None:
            continue
        parts.append(
            f"## {module.name}: {module.title}\n\n"
            f"`exercises/{module.name}/{module.file}` · chapter: [{module.name}]({module.name}.md)\n\n"
            f"```python\n{signatures(stub, whole_docstrings=True)}\n```\n"
        )
    return "\n".join(parts)


def fill_contract_page(markdown: str, modules: list[Module], root: Path = REPO_ROOT) -> str:
    """`docs/contract.md` with its marker replaced by the generated contract."""
    return markdown.replace(CONTRACT_MARKER, contract_markdown(modules, root))
