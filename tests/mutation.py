"""Mutants: plausible wrong implementations, made by editing the reference's source text.

A module's catalogue, `tests/mutants/NN_name.py`, defines

    MUTANTS = [Mutant("mean_subtracted", "LayerNorm's centring", [("old text", "new text")]), ...]
    ALTERNATIVES = [...]   # correct implementations written another way: they must pass everything

Each (old, new) pair must match the reference exactly once, so a catalogue that drifts from its
reference fails loudly instead of silently testing nothing.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from grader.harness.course import REPO_ROOT, Module

CATALOGUES = Path(__file__).parent / "mutants"


@dataclass(frozen=True)
class Mutant:
    name: str
    mistake: str  # the learner's mistake, in words
    replace: tuple[tuple[str, str], ...] | list[tuple[str, str]]

    def apply(self, source: str) -> str:
        for old, new in self.replace:
            count = source.count(old)
            if count != 1:
                raise ValueError(
                    f"mutant {self.name!r}: {old!r} occurs {count} times in the reference (must be exactly once); "
                    "update the catalogue to match the reference"
                )
            source = source.replace(old, new)
        return source

    def write_root(self, module: Module, root: Path) -> Path:
        """Write the mutated reference as `root/<module>/<file>` and return `root`."""
        reference = (REPO_ROOT / "solutions" / module.name / module.file).read_text()
        target = root / module.name / module.file
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(self.apply(reference))
        return root


@dataclass(frozen=True)
class Catalogue:
    module: Module
    mutants: list[Mutant]
    alternatives: list[Mutant]


def load_catalogue(module: Module) -> Catalogue:
    path = CATALOGUES / f"{module.name}.py"
    if not path.is_file():
        return Catalogue(module, [], [])
    spec = importlib.util.spec_from_file_location(f"mutants_{module.name}", path)
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return Catalogue(module, list(getattr(loaded, "MUTANTS", [])), list(getattr(loaded, "ALTERNATIVES", [])))
