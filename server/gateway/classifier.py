"""Classify one image with one pipeline through the Triton pool: the only place that builds inference requests.

Triton's classification extension does the top-k and the label lookup on the server (``class_count``), so only
k short strings come back instead of the whole probability vector.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Iterable
from typing import Any

from client.contract import CASCADE_OUTPUTS, INPUT, PROBS, parse_class
from server.gateway.errors import ApiError, from_triton
from server.gateway.metrics import GatewayMetrics
from server.gateway.pipeline_health import PipelineHealth, canary_image
from server.gateway.pipelines import PipelineCatalog, ServedPipeline
from server.gateway.request_context import add_triton_ms, note, request_id
from server.gateway.schemas import ClassifyResponse
from server.gateway.tracing import NO_TRACING, NoTracing
from server.gateway.triton_http import TritonHttpClient, TritonHttpError
from server.gateway.triton_pool import UNHEALTHY_STEP_RETRIES, TritonPool


def parse_class_dicts(raw: Iterable[bytes | str]) -> list[dict[str, Any]]:
    """Decode Triton's "score:index:label" strings (the label itself may contain colons) as plain dicts in the
    order of the Prediction model's fields (the JSON body)."""
    return [{"label": found.label, "index": found.index, "score": found.score}
            for found in map(parse_class, raw)]


class Classifier:
    """Resolves pipeline names and runs inferences, translating Triton errors to API errors."""

    def __init__(self, pool: TritonPool, catalog: PipelineCatalog, metrics: GatewayMetrics,
                 timeout_s: float, max_abandoned: int, health: PipelineHealth | None = None,
                 tracing: NoTracing = NO_TRACING) -> None:
        self.pool = pool
        self.tracing = tracing
        self.catalog = catalog
        self.metrics = metrics
        self.health = health or PipelineHealth()
        self._canary_image = canary_image()
        self.timeout_s = timeout_s
        self.max_abandoned = max_abandoned
        self.abandoned: set[asyncio.Future[Any]] = set()

    async def resolve(self, name: str | None) -> ServedPipeline:
        """The named pipeline (or the default); 404 if Triton doesn't serve it, 503 if Triton can't be asked."""
        if name is None:
            await self.catalog.current()
            name = self.catalog.default
            if name is None:
                raise ApiError(503, "no_pipelines", "Triton serves no pipeline yet", {"Retry-After": "1"})
        pipeline = await self.catalog.get(name)
        if pipeline is None:
            known = ", ".join(sorted(self.catalog.pipelines)) or "none"
            raise ApiError(404, "unknown_pipeline", f"unknown pipeline {name[:100]!r}; available: {known}")
        return pipeline

    async def classify(self, pipeline: ServedPipeline, image: bytes, top_k: int,
                       maps: bool = False) -> ClassifyResponse:
        """Top-k for one image as the response model (see classify_to_dict)."""
        return ClassifyResponse(**await self.classify_to_dict(pipeline, image, top_k, maps=maps))

    async def canary(self, name: str) -> None:
        """One request to a degraded pipeline, without retries, so its state follows what its steps can do."""
        pipeline = await self.catalog.get(name)
        if pipeline is not None:
            await self.classify_to_dict(pipeline, self._canary_image, 1, step_retries=0, count=False)

    async def classify_to_dict(self, pipeline: ServedPipeline, image: bytes, top_k: int,
                           step_retries: int = UNHEALTHY_STEP_RETRIES, count: bool = True,
                           maps: bool = False) -> dict[str, Any]:
        """Top-k for one image as the plain JSON-ready body of ClassifyResponse, with the top-k classes' score
        maps when ``maps`` (from the pipeline's maps ensemble); 504 after the timeout, without ever cancelling the
        call on the Triton side.

        Triton 2.51's Python backend can crash (SIGSEGV in TRITONBACKEND_ResponseSend) when a request it is
        executing is cancelled, which is what a client deadline or a dropped connection can do. So inference calls
        carry no deadline: the gateway stops waiting, answers 504, and lets the call finish in the background. Such
        abandoned calls are capped; past the cap the gateway answers 503 instead of piling more work on Triton.
        """
        if len(self.abandoned) >= self.max_abandoned:
            raise ApiError(503, "triton_saturated", "the inference server is not keeping up; retry later",
                           {"Retry-After": "1"})
        if maps and pipeline.maps is None:
            raise ApiError(422, "maps_unavailable", f"pipeline {pipeline.name!r} has no score maps (only dense "
                           "views have them; a multi-crop pipeline has none)")
        started = time.perf_counter()
        k = min(top_k, pipeline.num_classes) if pipeline.num_classes else top_k
        unhealthy: list[str] = []

        def broken_step(message: str) -> None:
            unhealthy.append(message)
            self.health.unhealthy_step(pipeline.name, message)

        cascade = pipeline.mode == "cascade"
        model = pipeline.maps["model"] if maps else pipeline.name
        tracing = self.tracing if count else NO_TRACING  # the canary's own calls are not users' requests
        with tracing.triton_call(pipeline.name, model, cascade) as traced:
            try:
                result, extras = await self._call(pipeline, image, k, maps, traced.headers,
                                                  (*CASCADE_OUTPUTS, *traced.extra_outputs) if cascade else (),
                                                  broken_step, step_retries, count)
            except ApiError as error:
                traced.failed(error.code)
                raise
            traced.answered(extras)
        elapsed = time.perf_counter() - started
        if count:
            add_triton_ms(elapsed * 1000)
            note(pipeline=pipeline.name)
        if not unhealthy:
            self.health.clean_answer(pipeline.name)
        if count:
            self.metrics.triton_latency.labels(pipeline.name).observe(elapsed)
            self.metrics.images.labels(pipeline.name, "ok").inc()
        body = {"predictions": parse_class_dicts(result), "pipeline": pipeline.name,
                "models": dict(pipeline.versions), "timing_ms": round(elapsed * 1000, 3)}
        if maps:
            from server.gateway.score_maps import lay_out, upright_size  # loaded with the request that needs it

            classes = [p["index"] for p in body["predictions"]]
            body["maps"] = lay_out(pipeline.maps, extras, classes, upright_size(image))
        if cascade:  # which stage answered, and which ran
            body["stage"], body["stages"] = (extras["stage"] or [""])[0], extras["stages"]
            note(stage=body["stage"])
            if count:
                self.metrics.cascade_answers.labels(pipeline.name, body["stage"]).inc()
        return body

    async def _call(self, pipeline: ServedPipeline, image: bytes, k: int, maps: bool, headers: bytes,
                    extra: tuple[str, ...], broken_step: Callable[[str], None], step_retries: int,
                    count: bool) -> tuple[list[str], dict[str, Any]]:
        """(top-k, the extra outputs or the maps' tensors) from Triton, its errors as API errors, abandoned in
        the background after the timeout."""
        rid = request_id()
        if maps:  # score maps need numpy, ~12 MB the gateway does not hold until a map is asked for
            from server.gateway.score_maps import infer_maps

            request = functools.partial(infer_maps, model=pipeline.maps["model"], data=image, top_k=k,
                                        outputs=[view["tensor"] for view in pipeline.maps["views"]], request_id=rid,
                                        headers=headers)
        else:
            request = functools.partial(TritonHttpClient.classify_with, model=pipeline.name, input_name=INPUT,
                                        output_name=PROBS, data=image, top_k=k, extra=extra, request_id=rid,
                                        headers=headers)
        call = asyncio.ensure_future(self.pool.call(request, on_unhealthy_step=broken_step,
                                                    step_retries=step_retries))
        outcome = "ok"
        try:
            return await asyncio.wait_for(asyncio.shield(call), self.timeout_s)
        except TimeoutError:
            self._abandon(call)
            self.metrics.triton_errors.labels("", "timeout").inc()
            outcome = "triton_timeout"
            raise ApiError(504, "triton_timeout", "the inference server did not answer in time") from None
        except asyncio.CancelledError:
            self._abandon(call)
            raise
        except TritonHttpError as exc:
            error = from_triton(exc)
            outcome = error.code
            raise error from None
        except ApiError as error:
            outcome = error.code
            raise
        finally:
            if count and outcome != "ok":
                self.metrics.images.labels(pipeline.name, outcome).inc()

    def _abandon(self, call: asyncio.Future[Any]) -> None:
        if call.done():
            if not call.cancelled():
                call.exception()  # retrieved: no "exception never retrieved" warning
            return
        self.abandoned.add(call)
        call.add_done_callback(self._forget)

    def _forget(self, call: asyncio.Future[Any]) -> None:
        self.abandoned.discard(call)
        if not call.cancelled():
            call.exception()

    async def drain(self, timeout_s: float) -> None:
        """Let abandoned calls finish before the connections close (closing could cancel them in Triton)."""
        if self.abandoned:
            await asyncio.wait(list(self.abandoned), timeout=timeout_s)
