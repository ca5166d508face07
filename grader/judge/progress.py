"""The progress bar of `llmlab grade`: one line on stderr, redrawn on a terminal, a line per learner otherwise."""

from __future__ import annotations

import sys
import threading
import time


class Progress:
    """A one-line progress bar on stderr (redrawn on a terminal, a line per learner otherwise)."""

    def __init__(self, learners: int, tests: int, stream=None, enabled: bool = True) -> None:
        self.learners, self.tests = learners, max(tests, 1)
        self.done_learners, self.done_tests = 0, 0
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = self.stream.isatty()
        self.lock = threading.Lock()
        self.start = time.monotonic()

    def test_done(self, count: int = 1) -> None:
        with self.lock:
            self.done_tests += count
            if self.tty:
                self._draw("")

    def learner_done(self, learner: str, note: str, tests: int) -> None:
        with self.lock:
            self.done_learners += 1
            self.done_tests = max(self.done_tests, 0)
            if self.tty:
                self._draw(f"{learner}: {note}", newline=self.done_learners == self.learners)
            elif self.enabled:
                print(f"[{self.done_learners}/{self.learners}] {learner}: {note}", file=self.stream, flush=True)

    def _draw(self, note: str, newline: bool = False) -> None:
        if not self.enabled:
            return
        fraction = min(self.done_tests / self.tests, 1.0)
        bar = "#" * int(30 * fraction) + "-" * (30 - int(30 * fraction))
        line = f"\r[{bar}] {self.done_learners}/{self.learners} learners {time.monotonic() - self.start:5.0f}s {note}"[:120]
        self.stream.write(line.ljust(120) + ("\n" if newline else ""))
        self.stream.flush()
