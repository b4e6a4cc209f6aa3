"""How long each Python-backend instance has held the request it is on, so a stuck instance can be told from a slow
one.

A stub that spins in a loop or waits on a call that never returns is running, healthy to every process check, and
holds its requests until their timeouts. Each instance here keeps a 16-byte marker in /dev/shm (named after its
server's shared-memory prefix, so the launcher's clean-up removes it): when its current ``execute`` started, on the
clock every process shares, and its limit. The stub healer (server/stub_healer.py) reads the markers and replaces an
instance past its limit. Importing this costs nothing a stub does not already load.

The limit is the model config's ``step.timeout_s`` parameter, else ``$VGG_STEP_TIMEOUT_S`` (the launcher's
``--step-timeout-s``), else ``DEFAULT_TIMEOUT_S``: generous, since a slow instance that progresses (a large image at
a large scale on two busy cores) must never be taken for a stuck one.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import os
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from server.shared_memory import SHARED_MEMORY

PREFIX_ENV = "VGG_STEP_MARKER_PREFIX"  # the server's shared-memory prefix; unset outside the launcher: no marker
TIMEOUT_ENV = "VGG_STEP_TIMEOUT_S"
TIMEOUT_PARAMETER = "step.timeout_s"
DEFAULT_TIMEOUT_S = 120.0
LAYOUT = struct.Struct("dd")  # (started on CLOCK_MONOTONIC or 0.0 when idle, limit in seconds)


def marker_path(prefix: str, pid: int) -> Path:
    return SHARED_MEMORY / f"{prefix}busy-{pid}"


def read_marker(prefix: str, pid: int) -> tuple[float, float] | None:
    """(seconds the instance has held its current request, its limit), or None when it is idle or unmarked."""
    try:
        started, limit = LAYOUT.unpack(marker_path(prefix, pid).read_bytes()[: LAYOUT.size])
    except (OSError, struct.error):
        return None
    return (time.clock_gettime(time.CLOCK_MONOTONIC) - started, limit) if started else None


class Marker:
    """This process's marker; a no-op where the launcher set no prefix (tests of the steps, other servers)."""

    def __init__(self, model_config: str | dict | None = None, calls_models: bool = False) -> None:
        """``calls_models``: the instance waits on other models (the cascade's BLS calls) and gets twice the limit,
        so that a callee stuck under it is the one found and replaced, not the caller waiting for it."""
        prefix = os.environ.get(PREFIX_ENV)
        self.limit = timeout_for(model_config) * (2 if calls_models else 1)
        self.fd = os.open(marker_path(prefix, os.getpid()), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600) \
            if prefix else None
        self.active: list[float] = []  # an async execute (the cascade) runs several at once: the oldest counts
        self._write()

    def _write(self) -> None:
        if self.fd is not None:
            os.pwrite(self.fd, LAYOUT.pack(min(self.active, default=0.0), self.limit), 0)

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        started = time.clock_gettime(time.CLOCK_MONOTONIC)
        self.active.append(started)
        self._write()
        try:
            yield
        finally:
            self.active.remove(started)
            self._write()


def timeout_for(model_config: str | dict | None) -> float:
    config = json.loads(model_config) if isinstance(model_config, str) else model_config or {}
    value = config.get("parameters", {}).get(TIMEOUT_PARAMETER, {}).get("string_value") \
        or os.environ.get(TIMEOUT_ENV) or DEFAULT_TIMEOUT_S
    return float(value)


def watched(execute: Callable[..., Any]) -> Callable[..., Any]:
    """Marks a TritonPythonModel's ``execute`` (plain or async) busy while it runs; ``initialize`` must have set
    ``self.marker``."""
    if inspect.iscoroutinefunction(execute):
        @functools.wraps(execute)
        async def run_async(self: Any, requests: list) -> list:
            with self.marker.busy():
                return await execute(self, requests)
        return run_async

    @functools.wraps(execute)
    def run(self: Any, requests: list) -> list:
        with self.marker.busy():
            return execute(self, requests)
    return run
