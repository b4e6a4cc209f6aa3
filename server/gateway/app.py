"""The gateway's app factory: the services, their lifespan, the routers, the page and the outer middlewares."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI

from server.gateway.config import Settings
from server.gateway.errors import install_handlers
from server.gateway.metrics import MetricsMiddleware
from server.gateway.page import add_page
from server.gateway.raw_body import RawBodyClassify
from server.gateway.request_context import RequestContext
from server.gateway.routes import classify, health, pipelines
from server.gateway.services import build_services


def create_app(settings: Settings) -> FastAPI:
    """Build the gateway for these settings; Triton connections open when the app starts (its lifespan)."""
    services = build_services(settings)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await services.start()
        try:
            yield
        finally:
            await services.close()

    app = FastAPI(title="vgg-serve gateway", version="1.0.0", lifespan=lifespan,
                  description="Classify images with VGG pipelines (multi-scale dense evaluation, model fusion) "
                              "served by Triton Inference Server. Errors are always "
                              '`{"error": {"code": ..., "message": ...}}`.')
    app.state.services = services
    install_handlers(app)
    classify_routes = classify.router(services)
    for routes in (classify_routes, pipelines.router(services), health.router(services)):
        app.router.routes.extend(routes.routes)  # their own routes, complete: include_router would add a lookup
    add_page(app)
    # Outermost last: metrics see every request, including those the raw-body route answers without FastAPI's routing;
    # the request's context (its ID, the access log) wraps them all.
    classify_route = next(r for r in classify_routes.routes if getattr(r, "path", None) == "/v1/classify")
    app.add_middleware(RawBodyClassify, services=services, route=classify_route)
    app.add_middleware(MetricsMiddleware, metrics=services.metrics)
    app.add_middleware(RequestContext, log_format=settings.access_log, tracing=services.tracing)
    services.tracing.instrument(app)  # outermost of all: the request's server span (server/gateway/tracing.py)
    return app
