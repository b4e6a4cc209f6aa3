"""The gateway's view of degraded pipelines: a dead step's error marks its pipeline, canaries (and only for
degraded pipelines) bring it back after enough clean answers; the canary image is one every pipeline takes."""

from __future__ import annotations

import asyncio
import io

from PIL import Image

from server.gateway.pipeline_health import CANARY_SIDE, PipelineHealth, canary_image


def test_a_degraded_pipeline_is_canaried_until_it_answers_cleanly_again():
    async def main() -> None:
        health = PipelineHealth(clean_answers=3, canary_interval_s=0.01)
        canaries: list[str] = []
        step_alive = asyncio.Event()

        async def canary(name: str) -> None:
            canaries.append(name)
            if step_alive.is_set():
                health.clean_answer(name)
            else:
                health.unhealthy_step(name, "Stub process 'fuse_0_0' is not healthy.")

        health.start(canary)
        health.clean_answer("fast")  # a healthy pipeline's answers change nothing
        health.unhealthy_step("fast", "Stub process 'fuse_0_0' is not healthy.")
        assert health.reason("fast") == "Stub process 'fuse_0_0' is not healthy." and health.reason("fusion") is None
        for _ in range(500):
            if len(canaries) >= 3:
                break
            await asyncio.sleep(0.01)
        assert len(canaries) >= 3 and health.reason("fast") is not None  # canaries meeting the dead step
        step_alive.set()
        for _ in range(500):
            if health.reason("fast") is None:
                break
            await asyncio.sleep(0.01)
        assert health.reason("fast") is None
        sent = len(canaries)
        await asyncio.sleep(0.05)
        assert len(canaries) == sent and set(canaries) == {"fast"}  # no canaries once nothing is degraded
        await health.close()

    asyncio.run(main())


def test_the_canary_image_is_a_small_smooth_colour_png():
    image = Image.open(io.BytesIO(canary_image()))
    assert image.format == "PNG" and image.mode == "RGB" and image.size == (CANARY_SIDE, CANARY_SIDE)
    low, high = zip(*image.getextrema(), strict=True)
    assert max(low) < 10 and min(high) > 245  # every channel spans the range, like a photo after normalisation
