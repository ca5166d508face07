"""Exceptions that the harness turns into teaching messages instead of bare tracebacks."""

from __future__ import annotations


class NotImplementedYet(NotImplementedError):
    """Raised by a stub: the learner has not written this function yet.

    The pytest plugin replaces the traceback of a test that dies on this error with a short message:
    which function to write, in which file, what the test checks, and which chapter to read.
    """

    def __init__(self, name: str):
        self.name = name
        super().__init__(f"{name} is not implemented yet: write it, then run the tests again.")


class ImplementationLoadError(Exception):
    """The learner's file is missing or does not import (syntax error, import error, ...)."""
