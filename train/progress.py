"""A tiny text progress bar (tqdm is not a dependency): redrawn in place on a terminal, silent in logs."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    """`[#####.....] 12/40 loss 0.512 acc 83.1% 5.2 it/s`, redrawn at most every `interval` seconds.

    On a non-terminal stream (CI logs, pipes) it prints nothing: the caller's per-epoch summary line is the record,
    and a carriage-return bar would only fill logs with partial lines.
    """

    def __init__(self, total: int, prefix: str = "", stream: TextIO | None = None, width: int = 30,
                 interval: float = 0.2, enabled: bool = True) -> None:
        self.total, self.prefix, self.width, self.interval = max(total, 1), prefix, width, interval
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled and self.stream.isatty()
        self.count, self.started, self.drawn = 0, time.perf_counter(), 0.0

    def update(self, steps: int = 1, **stats: float) -> None:
        self.count += steps
        now = time.perf_counter()
        if self.enabled and (now - self.drawn >= self.interval or self.count >= self.total):
            self.drawn = now
            self.stream.write("\r" + self.render(stats, now - self.started))
            self.stream.flush()

    def render(self, stats: dict[str, float], elapsed: float) -> str:
        filled = self.width * min(self.count, self.total) // self.total
        bar = "#" * filled + "." * (self.width - filled)
        rate = self.count / elapsed if elapsed > 0 else 0.0
        text = " ".join(f"{k} {v:.3f}" if k != "acc" else f"acc {v:.1%}" for k, v in stats.items())
        return f"{self.prefix}[{bar}] {self.count}/{self.total} {text} {rate:.1f} it/s"

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r\033[K")  # clear the bar; the summary line takes its place
            self.stream.flush()
