"""Keep a child service running: restart it after an unexpected exit, with backoff, and give up on a crash loop.

A process that dies once (the OOM killer, a segfault) comes back after a short pause; one that keeps dying waits
longer each time (``backoff_s``), and one that cannot even start ``max_failed_starts`` times in a row is given up
on with its last error, since restarting it further would only hide the cause.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Sequence

BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0)


def terminate(process: subprocess.Popen | None, timeout_s: float) -> None:
    """SIGTERM for a graceful shutdown, SIGKILL if it is not over within ``timeout_s``."""
    if process and process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def one_line(exc: BaseException, limit: int = 400) -> str:
    """An error's message as one log line: multi-line start errors carry their cause on the later lines."""
    text = "; ".join(line.strip().rstrip(":") for line in str(exc).splitlines() if line.strip())
    text = text or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


class GaveUp(RuntimeError):
    """The service failed to start ``max_failed_starts`` times in a row; the message has its last error."""


class Supervised:
    """One service: ``start`` makes it serve (raising on failure), ``exit_status`` is None while it runs, and
    ``cleanup`` releases what a dead one left (ports, processes, shared memory)."""

    def __init__(self, name: str, start: Callable[[], object], exit_status: Callable[[], int | None],
                 cleanup: Callable[[], None], report: Callable[[str], None],
                 stop_requested: Callable[[], bool] = lambda: False, max_failed_starts: int = 3,
                 backoff_s: Sequence[float] = BACKOFF_S, stable_s: float = 60.0) -> None:
        self.name, self._start, self._exit_status, self._cleanup = name, start, exit_status, cleanup
        self.report, self.stop_requested = report, stop_requested
        self.max_failed_starts, self.backoff_s, self.stable_s = max_failed_starts, tuple(backoff_s), stable_s
        self.restarts = 0
        self._crashes = 0  # unexpected exits without a stable run between them
        self._started_at = time.monotonic()

    def check(self) -> None:
        """Call periodically: restarts the service if it has exited (blocking until it serves again); GaveUp."""
        status = self._exit_status()
        if status is None:
            if time.monotonic() - self._started_at > self.stable_s:
                self._crashes = 0
            return
        self._cleanup()
        self.report(f"serve: {self.name} exited unexpectedly (status {status})")
        failed = 0
        while not self.stop_requested():
            delay = self.backoff_s[min(self._crashes, len(self.backoff_s) - 1)]
            self._crashes += 1
            self.report(f"serve: restarting {self.name} in {delay:g} s (restart {self.restarts + 1})")
            if not self._sleep(delay):
                return
            started = time.monotonic()
            try:
                self._start()
            except Exception as exc:
                self._cleanup()
                failed += 1
                reason = one_line(exc)
                if failed >= self.max_failed_starts:
                    raise GaveUp(f"{self.name} failed to start {failed} times in a row; giving up: {reason}") \
                        from None
                self.report(f"serve: {self.name} did not start ({reason})")
                continue
            self.restarts += 1
            self._started_at = time.monotonic()
            self.report(f"serve: {self.name} is back after a restart, serving {time.monotonic() - started:.1f} s "
                        "after it was started")
            return

    def _sleep(self, seconds: float) -> bool:
        """False if a stop was requested meanwhile."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.stop_requested():
                return False
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
        return not self.stop_requested()
