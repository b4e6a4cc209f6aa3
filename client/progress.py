"""A dependency-free progress line for the terminal (stderr), redrawn at most ten times a second."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, total: int | None, enabled: bool, stream: TextIO = sys.stderr) -> None:
        self.total = total
        self.enabled = enabled
        self.stream = stream
        self.done = 0
        self.errors = 0
        self.started = time.monotonic()
        self._drawn = 0.0

    def update(self, ok: bool) -> None:
        self.done += 1
        self.errors += 0 if ok else 1
        now = time.monotonic()
        if self.enabled and (now - self._drawn > 0.1 or self.done == self.total):
            self._drawn = now
            self.stream.write("\r" + self.line(now) + "\033[K")
            self.stream.flush()

    def line(self, now: float | None = None) -> str:
        elapsed = max((now or time.monotonic()) - self.started, 1e-9)
        rate = self.done / elapsed
        if self.total:
            filled = int(30 * self.done / self.total)
            eta = (self.total - self.done) / rate if rate else 0.0
            return (f"[{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total} "
                    f"{100 * self.done / self.total:3.0f}% {rate:6.1f} img/s ETA {eta:5.0f}s errors {self.errors}")
        return f"{self.done} scored, {rate:.1f} img/s, errors {self.errors}"

    def close(self) -> None:
        if self.enabled and self.done:
            self.stream.write("\n")
            self.stream.flush()
