"""Which pipelines are degraded: a step answered "stub not healthy", and no clean answers have followed yet.

Triton keeps reporting a model ready while one of its stub processes is dead, so readiness cannot come from Triton
alone. The gateway sees the truth in the answers: a pipeline is degraded from the first unhealthy-step error until
``clean_answers`` answers in a row reached no broken step. While it is degraded, a canary request (a small image,
no retries) goes to it every ``canary_interval_s`` so its state is re-learnt without waiting for traffic; a pipeline
that nothing is wrong with is never sent canaries, so healthy serving costs nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from PIL import Image

log = logging.getLogger("server.gateway")
CANARY_SIDE = 64


@dataclass
class Degraded:
    reason: str
    since: float
    clean: int = 0


def canary_image(side: int = CANARY_SIDE) -> bytes:
    """A small PNG every pipeline accepts (a smooth gradient: decodes, rescales and classifies like a photo)."""
    down = Image.linear_gradient("L").resize((side, side))  # dark at the top, light at the bottom
    across = down.transpose(Image.Transpose.ROTATE_90)  # dark on the left
    mirrored = across.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    buffer = io.BytesIO()
    Image.merge("RGB", (Image.blend(down, across, 0.5), Image.blend(down, mirrored, 0.5), across)).save(buffer, "PNG")
    return buffer.getvalue()


class PipelineHealth:
    """Degraded pipelines by name, learnt from answers, confirmed clean by canaries."""

    def __init__(self, clean_answers: int = 3, canary_interval_s: float = 0.5) -> None:
        self.clean_answers = clean_answers
        self.canary_interval_s = canary_interval_s
        self.degraded: dict[str, Degraded] = {}
        self._task: asyncio.Task[None] | None = None

    def unhealthy_step(self, pipeline: str, message: str) -> None:
        entry = self.degraded.get(pipeline)
        if entry is None:
            log.warning("pipeline %s is degraded: %s", pipeline, message)
            self.degraded[pipeline] = Degraded(message, time.monotonic())
        else:
            entry.reason, entry.clean = message, 0

    def clean_answer(self, pipeline: str) -> None:
        entry = self.degraded.get(pipeline)
        if entry is None:
            return
        entry.clean += 1
        if entry.clean >= self.clean_answers:
            del self.degraded[pipeline]
            log.info("pipeline %s answers cleanly again after %.1f s", pipeline, time.monotonic() - entry.since)

    def reason(self, pipeline: str) -> str | None:
        entry = self.degraded.get(pipeline)
        return entry.reason if entry else None

    def start(self, canary: Callable[[str], Awaitable[object]]) -> None:
        """``canary(name)`` sends one request without retries; its outcome is recorded by the caller's hooks."""
        self._task = asyncio.create_task(self._canaries(canary), name="pipeline-canaries")

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _canaries(self, canary: Callable[[str], Awaitable[object]]) -> None:
        while True:
            await asyncio.sleep(self.canary_interval_s)
            for name in list(self.degraded):
                try:
                    await canary(name)
                except Exception as exc:  # recorded through the hooks; a canary must never kill the loop
                    log.debug("canary to %s: %s", name, exc)
