"""GET /v1/pipelines: what Triton serves, as Triton's own configs describe it, with each pipeline's health and
rollout; a pipeline's shadow report; the admin route that promotes or rolls back its canary."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from server.gateway.classify_request import MAX_PIPELINE_NAME
from server.gateway.errors import ApiError
from server.gateway.pipelines import ServedPipeline
from server.gateway.schemas import PipelineInfo, PipelinesResponse, RolloutAction, error_responses
from server.gateway.services import Services


def router(services: Services) -> APIRouter:
    catalog, health, rollouts = services.catalog, services.health, services.rollouts
    routes = APIRouter(tags=["pipelines"])
    user = [Depends(services.check_auth)]

    async def served(name: str) -> ServedPipeline:
        pipeline = await catalog.get(name[:MAX_PIPELINE_NAME])
        if pipeline is None:
            raise ApiError(404, "unknown_pipeline", f"unknown pipeline {name[:100]!r}")
        return pipeline

    @routes.get("/v1/pipelines", response_model=PipelinesResponse, responses=error_responses(401, 503),
                dependencies=user)
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
                         degraded_reason=health.reason(p.name), maps=p.maps is not None,
                         rollout=rollouts.status(p) or None)
            for p in sorted(found.values(), key=lambda p: p.name)])

    @routes.get("/v1/pipelines/{name}/shadow", responses=error_responses(401, 404, 503), dependencies=user)
    async def shadow(name: str) -> dict[str, Any]:
        """The pipeline's comparisons with its shadow candidate: since start and over the rolling window."""
        return rollouts.shadow_report(await served(name))

    @routes.post("/v1/pipelines/{name}/rollout", responses=error_responses(401, 403, 404, 409, 503),
                 dependencies=[Depends(services.check_admin)])
    async def rollout(name: str, body: RolloutAction) -> dict[str, Any]:
        """Promote, roll back or resume the pipeline's canary, now (needs an admin key)."""
        return rollouts.act(await served(name), body.action)

    return routes
