"""benchmarks/RESULTS.md in sections, each rewritten alone by the command that measured it.

A section sits between `<!-- section: NAME -->` and `<!-- end section: NAME -->`; writing one replaces it in
place (or appends it), so `run.py --only grading` or `gpu_check.py` never erases the other numbers.
"""

from __future__ import annotations

import re
from pathlib import Path

HEADER = "# Benchmark results\n\nEach section names the command that produced it; every number is a median, every ratio side by side.\n"


def write_section(path: Path, name: str, title: str, body: str) -> None:
    """Put `## title` and `body` in section `name` of the file at `path` (created if missing)."""
    path = Path(path)
    text = path.read_text() if path.is_file() else HEADER
    block = f"<!-- section: {name} -->\n## {title}\n\n{body.strip()}\n<!-- end section: {name} -->"
    pattern = re.compile(rf"<!-- section: {re.escape(name)} -->.*?<!-- end section: {re.escape(name)} -->", re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.rstrip("\n") + "\n")
