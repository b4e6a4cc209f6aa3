"""Keep a child service running: restart it after an unexpected exit or a hang, with backoff, and give up on a crash
loop.

A process that dies once (the OOM killer, a segfault) comes back after a short pause; one that keeps dying waits
longer each time (``backoff_s``), and one that cannot even start ``max_failed_starts`` times in a row is given up
on with its last error, since restarting it further would only hide the cause. A process that is alive but no
longer answers (deadlocked, stopped, spinning) looks healthy to every process check: a probe in the background asks
it, and one silent for ``hang_after_s`` is killed and restarted like a dead one.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence

BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
HANG_AFTER_S = 20.0  # silent this long: hung (the probes answer in milliseconds, even on 2 saturated cores)
PROBE_INTERVAL_S = 2.0


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


def answers(url: str, timeout_s: float = 2.0) -> Callable[[], bool]:
    """A liveness probe: True when ``url`` answers 200 within ``timeout_s``."""
    def probe() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response:
                return response.status == 200
        except OSError:  # refused, reset, timed out, or an HTTP error status
            return False
    return probe


class Liveness:
    """Asks ``probe`` (a call with its own short timeout: True when the service answered) every ``interval_s`` in the
    background, so a probe that hangs never holds up the supervisor; remembers the last answer."""

    def __init__(self, probe: Callable[[], bool], interval_s: float = PROBE_INTERVAL_S) -> None:
        self.probe, self.interval_s = probe, interval_s
        self.last_answer = time.monotonic()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="liveness", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped.wait(self.interval_s):
            if self.probe():
                self.last_answer = time.monotonic()

    def restart(self) -> None:
        """A new process: silence counts from now."""
        self.last_answer = time.monotonic()

    def silent_s(self) -> float:
        return time.monotonic() - self.last_answer

    def stop(self) -> None:
        self._stopped.set()


class Supervised:
    """One service: ``start`` makes it serve (raising on failure), ``exit_status`` is None while it runs, and
    ``cleanup`` releases what a dead one left (ports, processes, shared memory). With ``liveness``, a running service
    silent for ``hang_after_s`` is killed (``kill``, else ``cleanup``) and restarted."""

    def __init__(self, name: str, start: Callable[[], object], exit_status: Callable[[], int | None],
                 cleanup: Callable[[], None], report: Callable[[str], None],
                 stop_requested: Callable[[], bool] = lambda: False, max_failed_starts: int = 3,
                 backoff_s: Sequence[float] = BACKOFF_S, stable_s: float = 60.0,
                 liveness: Liveness | None = None, hang_after_s: float = HANG_AFTER_S,
                 kill: Callable[[], None] | None = None) -> None:
        self.name, self._start, self._exit_status, self._cleanup = name, start, exit_status, cleanup
        self.report, self.stop_requested = report, stop_requested
        self.max_failed_starts, self.backoff_s, self.stable_s = max_failed_starts, tuple(backoff_s), stable_s
        self.liveness, self.hang_after_s, self._kill = liveness, hang_after_s, kill or cleanup
        self.restarts = 0
        self._crashes = 0  # unexpected exits without a stable run between them
        self._started_at = time.monotonic()

    def check(self) -> None:
        """Call periodically: restarts the service if it has exited or hangs (blocking until it serves again);
        GaveUp."""
        status = self._exit_status()
        if status is None:
            silent = self.liveness.silent_s() if self.liveness else 0.0
            if silent < self.hang_after_s:
                if time.monotonic() - self._started_at > self.stable_s:
                    self._crashes = 0
                return
            self.report(f"serve: {self.name} has not answered its liveness probe for {silent:.0f} s; killing it")
            self._kill()
            self._cleanup()
            self.report(f"serve: {self.name} hung (killed after {silent:.0f} s without an answer)")
        else:
            self._cleanup()
            self.report(f"serve: {self.name} exited unexpectedly (status {status})")
        self._restart()

    def _restart(self) -> None:
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
            if self.liveness:
                self.liveness.restart()
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
