"""LLM Lab's harness: the pytest plugin, the loader of learner code, the course registry and the CLI.

This package is imported by every stub (for `NotImplementedYet`), so it stays light: no torch here.
"""

from grader.harness.errors import ImplementationLoadError, NotImplementedYet

__all__ = ["ImplementationLoadError", "NotImplementedYet"]
