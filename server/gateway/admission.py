"""Admission control: a bounded number of requests in service and a bounded queue in front of them.

Without it an overload grows Triton's queue and everyone's latency without limit; with it the excess is refused
at once (429, queue full) or after a bounded wait (503), both with Retry-After so well-behaved clients back off.
A slot is taken before the request body is read, so the memory held by bodies is bounded too.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from server.gateway.errors import ApiError


class Admission:
    """A semaphore with a cap on waiters and a wait timeout."""

    def __init__(self, max_inflight: int, max_queue: int, queue_timeout_s: float, retry_after_s: int = 1) -> None:
        self.max_inflight = max_inflight
        self.max_queue = max_queue
        self.queue_timeout_s = queue_timeout_s
        self.retry_after = str(retry_after_s)
        self._slots = asyncio.Semaphore(max_inflight)
        self.waiting = 0
        self.active = 0

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one service slot for the duration of the block."""
        if self._slots.locked():
            if self.waiting >= self.max_queue:
                raise ApiError(429, "overloaded", "too many requests queued; retry later",
                               {"Retry-After": self.retry_after})
            self.waiting += 1
            try:
                async with asyncio.timeout(self.queue_timeout_s):
                    await self._slots.acquire()
            except TimeoutError:
                raise ApiError(503, "queue_timeout", "the gateway is saturated; retry later",
                               {"Retry-After": self.retry_after}) from None
            finally:
                self.waiting -= 1
        else:
            await self._slots.acquire()
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1
            self._slots.release()

