"""What every benchmark needs: free loopback ports, a name for the machine, a median timing."""

from __future__ import annotations

import contextlib
import os
import platform
import socket
import statistics
import time
from collections.abc import Callable
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def machine() -> str:
    """CPU model, cores, kernel and the load average now: results from a shared machine need the latter."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), model)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{model}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, load average {load} at the end"


def median_ms(run: Callable[[], object], repeats: int) -> float:
    run()  # warm-up: first-run allocations and lazy initialisation are not what we measure
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)
