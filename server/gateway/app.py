"""The FastAPI application: routes only; limits, Triton access, metrics and errors live in their own modules."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Depends, FastAPI, Query, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from server.gateway.admission import Admission, admitted
from server.gateway.auth import bearer_auth
from server.gateway.classifier import Classifier
from server.gateway.config import Settings
from server.gateway.errors import ApiError, TritonUnavailable, install_handlers
from server.gateway.fastpath import ClassifyFastPath
from server.gateway.metrics import GatewayMetrics, MetricsMiddleware
from server.gateway.pipeline_health import PipelineHealth
from server.gateway.pipelines import PipelineCatalog
from server.gateway.schemas import (
    BatchItem,
    BatchResponse,
    ClassifyResponse,
    ErrorBody,
    ErrorResponse,
    HealthResponse,
    PipelineInfo,
    PipelinesResponse,
    ReadyResponse,
)
from server.gateway.triton_pool import Endpoint, TritonPool
from server.gateway.uploads import IMAGE_TYPES, read_images

METADATA_TIMEOUT_S = 5.0  # health probes and pipeline metadata; inference has its own --triton-timeout-s
_BINARY = {"schema": {"type": "string", "format": "binary"}}


def _image_body(many: bool) -> dict[str, Any]:
    """OpenAPI request body: a multipart form or a raw image body (FastAPI can't infer it from our manual read)."""
    file_schema: dict[str, Any] = {"type": "string", "format": "binary"}
    field = {"type": "array", "items": file_schema} if many else file_schema
    content: dict[str, Any] = {"multipart/form-data": {"schema": {
        "type": "object", "properties": {"file": field}, "required": ["file"]}}}
    for kind in sorted(IMAGE_TYPES - {"image/jpg", "image/pjpeg", "image/x-bmp", "image/x-ms-bmp"}):
        content[kind] = _BINARY
    content["application/octet-stream"] = _BINARY
    return {"requestBody": {"required": True, "content": content}}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorResponse} for code in codes}


async def refuse_repeated_parameters(request: Request) -> None:
    """``?top_k=1&top_k=2`` would silently mean 2 (FastAPI keeps the last value): refuse the ambiguity instead."""
    keys = [key for key, _ in request.query_params.multi_items()]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise ApiError(422, "invalid_request", f"query parameter {repeated[0][:100]!r} is given more than once")


def create_app(settings: Settings) -> FastAPI:
    """Build the gateway for these settings; Triton connections open when the app starts (its lifespan)."""
    metrics = GatewayMetrics()
    pool = TritonPool(settings.triton_urls, probe_timeout_s=1.0,
                      on_error=lambda url, code: metrics.triton_errors.labels(url, code).inc(),
                      on_state=lambda ep: metrics.endpoint_up.labels(ep.url).set(1 if ep.healthy else 0),
                      key=settings.triton_key)
    catalog = PipelineCatalog(pool, settings.catalog_refresh_s, METADATA_TIMEOUT_S, settings.default_pipeline)
    health = PipelineHealth()
    classifier = Classifier(pool, catalog, metrics, settings.triton_timeout_s, max_abandoned=settings.max_inflight,
                            health=health)
    admission = Admission(settings.max_inflight, settings.max_queue, settings.queue_timeout_s,
                          settings.retry_after_s)
    metrics.queued.set_function(lambda: admission.waiting)
    metrics.active.set_function(lambda: admission.active)
    metrics.abandoned.set_function(lambda: len(classifier.abandoned))
    check_auth = bearer_auth(settings.api_keys)
    auth = Depends(check_auth)
    single_values = Depends(refuse_repeated_parameters)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await pool.start(settings.health_interval_s)
        health.start(classifier.canary)
        with contextlib.suppress(ApiError):
            await catalog.refresh()
        try:
            yield
        finally:
            await health.close()
            await classifier.drain(timeout_s=10.0)
            await pool.close()

    app = FastAPI(title="vgg-serve gateway", version="1.0.0", lifespan=lifespan,
                  description="Classify images with VGG pipelines (multi-scale dense evaluation, model fusion) "
                              "served by Triton Inference Server. Errors are always "
                              '`{"error": {"code": ..., "message": ...}}`.')
    app.state.settings, app.state.pool, app.state.catalog = settings, pool, catalog
    app.state.metrics, app.state.admission = metrics, admission
    install_handlers(app)
    top_k_query = Query(5, ge=1, le=settings.max_top_k, description="Number of classes to return")
    pipeline_query = Query(None, max_length=128, description="Pipeline name (default: the configured default)")

    @app.post("/v1/classify", response_model=ClassifyResponse, response_model_exclude_none=True,
              dependencies=[auth, single_values], tags=["classify"],
              openapi_extra=_image_body(many=False),
              responses=_errors(400, 401, 404, 408, 413, 415, 422, 429, 502, 503, 504))
    async def classify(request: Request, pipeline: str | None = pipeline_query,
                       top_k: int = top_k_query) -> ClassifyResponse:
        """Classify one image: multipart field `file`, or the raw body with an image content type."""
        started = time.perf_counter()
        async with admitted(admission, classifier, request, pipeline) as chosen:
            part = (await read_images(request, settings.max_body_bytes, settings.body_timeout_s, 1))[0]
            if part.error:
                raise part.error
            result = await classifier.classify(chosen, part.data, top_k)
        result.timing_ms = round((time.perf_counter() - started) * 1000, 3)
        return result

    @app.post("/v1/classify/batch", response_model=BatchResponse, dependencies=[auth, single_values], tags=["classify"],
              openapi_extra=_image_body(many=True),
              responses=_errors(400, 401, 404, 408, 413, 415, 422, 429, 502, 503, 504))
    async def classify_batch(request: Request, pipeline: str | None = pipeline_query,
                             top_k: int = top_k_query) -> BatchResponse:
        """Classify several images (repeated multipart field `file`); a bad image fails only its own entry."""
        started = time.perf_counter()
        async with admitted(admission, classifier, request, pipeline) as chosen:
            parts = await read_images(request, settings.max_body_bytes, settings.body_timeout_s,
                                      settings.max_batch_files)
            gate = asyncio.Semaphore(settings.batch_concurrency)

            async def one(index: int, filename: str | None, data: bytes, error: ApiError | None) -> BatchItem:
                if error is None:
                    try:
                        async with gate:
                            result = await classifier.classify(chosen, data, top_k)
                        return BatchItem(index=index, filename=filename, status=200, result=result)
                    except ApiError as exc:
                        if exc.status >= 500 or exc.status == 429:
                            raise  # the service, not this image, failed: fail the batch so the client retries
                        error = exc
                return BatchItem(index=index, filename=filename, status=error.status,
                                 error=ErrorBody(code=error.code, message=error.message))

            outcomes = await asyncio.gather(*(one(i, p.filename, p.data, p.error) for i, p in enumerate(parts)),
                                            return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        items = [o for o in outcomes if isinstance(o, BatchItem)]
        return BatchResponse(results=items, pipeline=chosen.name,
                             timing_ms=round((time.perf_counter() - started) * 1000, 3))

    @app.get("/v1/pipelines", response_model=PipelinesResponse, dependencies=[auth], tags=["pipelines"],
             responses=_errors(401, 503))
    async def pipelines() -> PipelinesResponse:
        """The pipelines Triton serves, as Triton describes them (members, scales, mode, classes, versions)."""
        found = await catalog.current()
        default = catalog.default
        return PipelinesResponse(default=default, pipelines=[
            PipelineInfo(name=p.name, description=p.description, members=list(p.members),
                         weights=list(p.weights) if p.weights else None,
                         scales=list(p.scales), mode=p.mode, flips=p.flips, num_classes=p.num_classes,
                         versions=dict(p.versions), default=p.name == default,
                         status="degraded" if health.reason(p.name) else "ready",
                         degraded_reason=health.reason(p.name))
            for p in sorted(found.values(), key=lambda p: p.name)])

    @app.get("/healthz", response_model=HealthResponse, tags=["health"])
    async def healthz() -> HealthResponse:
        """The gateway process is alive (says nothing about Triton: see /readyz)."""
        return HealthResponse(status="ok")

    @app.get("/readyz", response_model=ReadyResponse, tags=["health"], responses=_errors(503))
    async def readyz() -> ReadyResponse:
        """Ready when a Triton endpoint answers and every pipeline is ready on at least one endpoint and not
        degraded (a step of it answering "stub not healthy")."""
        up = await pool.probe_all()
        ready_endpoints = [ep for ep, ok in zip(pool.endpoints, up, strict=True) if ok]
        try:
            names = sorted(await catalog.refresh(force=True)) if ready_endpoints else []
        except TritonUnavailable:
            names = []
        pipeline_state = {name: health.reason(name) is None
                          and await _model_ready(ready_endpoints, name, METADATA_TIMEOUT_S) for name in names}
        ready = bool(ready_endpoints) and bool(names) and all(pipeline_state.values())
        if not ready:
            missing = [name for name, ok in pipeline_state.items() if not ok]
            raise ApiError(503, "not_ready", f"Triton endpoints ready: {len(ready_endpoints)}/{len(pool.endpoints)}; "
                           f"pipelines: {len(names)}" + (f"; not ready: {', '.join(missing)}" if missing else ""),
                           {"Retry-After": str(settings.retry_after_s)})
        return ReadyResponse(status="ready", pipelines=pipeline_state, endpoints=[
            {"url": ep.url, "ready": ok} for ep, ok in zip(pool.endpoints, up, strict=True)])

    @app.get("/metrics", dependencies=[auth], tags=["health"], response_class=Response,
             responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
    async def prometheus_metrics() -> Response:
        """Prometheus exposition: requests and latency by route, pipeline and status; in flight; Triton errors."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # Outermost last: metrics see every request, including those the fast path answers without FastAPI's routing.
    classify_route = next(r for r in app.routes if getattr(r, "path", None) == "/v1/classify")
    app.add_middleware(ClassifyFastPath, settings=settings, admission=admission, classifier=classifier,
                       auth=check_auth, route=classify_route)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app


async def _model_ready(endpoints: list[Endpoint], name: str, timeout_s: float) -> bool:
    for endpoint in endpoints:
        with contextlib.suppress(Exception):
            if await asyncio.wait_for(endpoint.client.is_model_ready(name), min(timeout_s, 2.0)):
                return True
    return False
