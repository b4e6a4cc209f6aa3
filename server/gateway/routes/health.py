"""Liveness, readiness and Prometheus metrics: what orchestrators and scrapers ask."""

from __future__ import annotations

import asyncio
import contextlib

from fastapi import APIRouter, Depends, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from server.gateway.errors import ApiError, TritonUnavailable
from server.gateway.schemas import HealthResponse, ReadyResponse, error_responses
from server.gateway.services import METADATA_TIMEOUT_S, Services
from server.gateway.triton_pool import Endpoint


def router(services: Services) -> APIRouter:
    pool, catalog, health, settings = services.pool, services.catalog, services.health, services.settings
    routes = APIRouter(tags=["health"])

    @routes.get("/healthz", response_model=HealthResponse)
    async def healthz() -> HealthResponse:
        """The gateway process is alive (says nothing about Triton: see /readyz)."""
        return HealthResponse(status="ok")

    @routes.get("/readyz", response_model=ReadyResponse, responses=error_responses(503))
    async def readyz() -> ReadyResponse:
        """Ready when a Triton endpoint answers and every pipeline is ready on at least one endpoint and not
        degraded (a step of it answering "stub not healthy")."""
        endpoints = list(pool.endpoints)  # the list discovery may replace meanwhile
        up = await pool.probe_all(endpoints)
        ready_endpoints = [ep for ep, ok in zip(endpoints, up, strict=True) if ok]
        try:
            names = sorted(await catalog.refresh(force=True)) if ready_endpoints else []
        except TritonUnavailable:
            names = []
        pipeline_state = {name: health.reason(name) is None
                          and await model_ready(ready_endpoints, name, METADATA_TIMEOUT_S) for name in names}
        ready = bool(ready_endpoints) and bool(names) and all(pipeline_state.values())
        if not ready:
            missing = [name for name, ok in pipeline_state.items() if not ok]
            raise ApiError(503, "not_ready", f"Triton endpoints ready: {len(ready_endpoints)}/{len(endpoints)}; "
                           f"pipelines: {len(names)}" + (f"; not ready: {', '.join(missing)}" if missing else ""),
                           {"Retry-After": str(settings.retry_after_s)})
        return ReadyResponse(status="ready", pipelines=pipeline_state, endpoints=[
            {"url": ep.url, "ready": ok} for ep, ok in zip(endpoints, up, strict=True)])

    @routes.get("/metrics", dependencies=[Depends(services.check_auth)], response_class=Response,
                responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
    async def prometheus_metrics() -> Response:
        """Prometheus exposition: requests and latency by route, pipeline and status; in flight; Triton errors."""
        return Response(generate_latest(services.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return routes


async def model_ready(endpoints: list[Endpoint], name: str, timeout_s: float) -> bool:
    """Whether any of the endpoints has the model ready, each asked briefly."""
    for endpoint in endpoints:
        with contextlib.suppress(Exception):
            if await asyncio.wait_for(endpoint.client.is_model_ready(name), min(timeout_s, 2.0)):
                return True
    return False
