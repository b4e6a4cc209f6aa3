"""GET /v1/pipelines: what Triton serves, as Triton's own configs describe it, with each pipeline's health."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from server.gateway.schemas import PipelineInfo, PipelinesResponse, error_responses
from server.gateway.services import Services


def router(services: Services) -> APIRouter:
    catalog, health = services.catalog, services.health
    routes = APIRouter(tags=["pipelines"], dependencies=[Depends(services.check_auth)])

    @routes.get("/v1/pipelines", response_model=PipelinesResponse, responses=error_responses(401, 503))
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
                         degraded_reason=health.reason(p.name), maps=p.maps is not None)
            for p in sorted(found.values(), key=lambda p: p.name)])

    return routes
