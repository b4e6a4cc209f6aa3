"""Is Triton's inference core still getting work done? A cheap probe of a real inference path, from Triton's own
metrics instead of a request of ours.

A Triton whose HTTP frontend still answers `/v2/health/live` can have a core that completes nothing (a deadlock in
a scheduler, a backend call that never returns under a lock). Its metrics endpoint, a separate server, still counts:
requests pending but no request completed, successfully or not, for ``stall_after_s`` is such a stall. An idle
Triton (nothing pending) is never stalled, and a loaded one completes something every few seconds, so the limit is
generous by default: the slowest honest request (a large image at Q=512 on two busy cores) takes seconds, not
minutes. Sending a probe inference instead would queue behind users' requests and cost a full-size net's compute.
"""

from __future__ import annotations

import re
import time
import urllib.request
from collections.abc import Callable

DEFAULT_STALL_AFTER_S = 120.0
_SAMPLE = re.compile(r"^(nv_inference_request_success|nv_inference_request_failure|"
                     r"nv_inference_pending_request_count)\{[^}]*\} (\S+)$", re.MULTILINE)


def counts(metrics_text: str) -> tuple[float, float]:
    """(requests completed, successfully or not; requests pending), summed over every model."""
    done = pending = 0.0
    for name, value in _SAMPLE.findall(metrics_text):
        if name == "nv_inference_pending_request_count":
            pending += float(value)
        else:
            done += float(value)
    return done, pending


class Progress:
    """A liveness probe (server/supervisor.py's Liveness calls it): False once requests have been pending for
    ``stall_after_s`` without any completing; True otherwise, including when the metrics cannot be read (the
    health probe judges an unreachable Triton)."""

    def __init__(self, metrics_url: str, stall_after_s: float = DEFAULT_STALL_AFTER_S, timeout_s: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.url, self.stall_after_s, self.timeout_s = f"http://{metrics_url}/metrics", stall_after_s, timeout_s
        self.clock = clock
        self.done = -1.0
        self.progressed_at = clock()

    def __call__(self) -> bool:
        try:
            with urllib.request.urlopen(self.url, timeout=self.timeout_s) as response:
                done, pending = counts(response.read().decode())
        except OSError:
            return True
        now = self.clock()
        if done != self.done or pending == 0:
            self.done, self.progressed_at = done, now
            return True
        return now - self.progressed_at < self.stall_after_s

