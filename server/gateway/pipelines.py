"""What pipelines Triton serves, read from Triton itself: the ensembles carrying a ``pipeline.spec`` parameter.

The gateway keeps no copy of the pipeline definitions; it caches what Triton reports and refreshes it, so a
repository change on the Triton side shows up here without a redeploy.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any

from client.contract import (
    CASCADE_KIND,
    KIND_PARAMETER,
    PROBS,
    ROLLOUT_PARAMETER,
    SPEC_PARAMETER,
    default_pipeline,
)
from server.gateway.errors import ApiError, from_triton
from server.gateway.triton_http import TritonHttpClient, TritonHttpError
from server.gateway.triton_pool import TritonPool
from server.maps import MAPS_GEOMETRY, MAPS_OF
from server.rollout_spec import Rollout

log = logging.getLogger("server.gateway")


@dataclass(frozen=True)
class ServedPipeline:
    """One servable pipeline as Triton describes it."""

    name: str
    members: tuple[str, ...]
    weights: tuple[float, ...] | None
    scales: tuple[int, ...]
    mode: str
    flips: bool
    num_classes: int
    description: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    spec: dict[str, Any] = field(default_factory=dict)
    maps: dict[str, Any] | None = None  # the geometry of its `<name>_maps` ensemble, when Triton serves one
    rollout: Rollout | None = None  # its shadow and canary (server/rollout_spec.py)


def parse_pipeline(config: dict[str, Any], ready_versions: dict[str, list[str]]) -> ServedPipeline | None:
    """A ServedPipeline from a model config (JSON form), or None when the model is not a pipeline.

    The pipeline's helper models (preprocess, fuse) carry the same spec; only the ensemble is the public entry, or
    the Python model of a cascade (``pipeline.kind`` = cascade), which is its own entry.
    """
    parameters = config.get("parameters", {})
    raw = parameters.get(SPEC_PARAMETER, {}).get("string_value")
    cascade = parameters.get(KIND_PARAMETER, {}).get("string_value") == CASCADE_KIND
    if not raw or (config.get("platform") != "ensemble" and not cascade):
        return None
    spec = json.loads(raw)
    outputs = {out["name"]: out for out in config.get("output", [])}
    dims = [int(d) for d in outputs.get(PROBS, {}).get("dims", [])]
    members = tuple(str(m) for m in spec.get("members", []))
    weights = spec.get("weights")
    versions = {m: _latest(ready_versions.get(m, [])) for m in members}
    rollout = parameters.get(ROLLOUT_PARAMETER, {}).get("string_value")
    return ServedPipeline(
        name=config["name"], members=members,
        weights=tuple(float(w) for w in weights) if weights else None,
        scales=tuple(int(s) for s in spec.get("scales", [])), mode=str(spec.get("mode", "dense")),
        flips=bool(spec.get("flips", False)), num_classes=dims[-1] if dims else 0,
        description=str(spec.get("description", "")),
        versions={m: v for m, v in versions.items() if v}, spec=spec,
        rollout=Rollout.from_json(rollout) if rollout else None)


def _latest(versions: list[str]) -> str:
    numeric = sorted((v for v in versions if v.isdigit()), key=int)
    return numeric[-1] if numeric else (versions[-1] if versions else "")


class PipelineCatalog:
    """Cached pipeline metadata; refreshed on a timer and on demand, one reader at a time."""

    def __init__(self, pool: TritonPool, refresh_s: float, timeout_s: float, default: str | None = None) -> None:
        self.pool = pool
        self.refresh_s = refresh_s
        self.timeout_s = timeout_s
        self.configured_default = default
        self.pipelines: dict[str, ServedPipeline] = {}
        self.loaded_at = 0.0
        self._lock = asyncio.Lock()
        self._background: asyncio.Task[None] | None = None

    @property
    def default(self) -> str | None:
        return default_pipeline(self.pipelines, self.configured_default)

    def stale(self) -> bool:
        return not self.pipelines or time.monotonic() - self.loaded_at > self.refresh_s

    async def refresh(self, force: bool = False) -> dict[str, ServedPipeline]:
        """Re-read the catalog from Triton unless another caller just did; raises ApiError (503, 504...)."""
        started = time.monotonic()
        async with self._lock:
            if self.loaded_at >= started and self.pipelines:
                return self.pipelines
            if not force and not self.stale():
                return self.pipelines
            try:
                self.pipelines = await asyncio.wait_for(self.pool.call(self._load), self.timeout_s)
            except TritonHttpError as exc:
                raise from_triton(exc) from None
            except TimeoutError:
                raise ApiError(504, "triton_timeout", "the inference server did not list its models in time") from None
            self.loaded_at = time.monotonic()
            return self.pipelines

    async def current(self) -> dict[str, ServedPipeline]:
        """The catalog; loaded now if empty, refreshed in the background if stale so no request waits for it."""
        if not self.pipelines:
            return await self.refresh()
        if self.stale() and (self._background is None or self._background.done()):
            self._background = asyncio.create_task(self._refresh_quietly())
        return self.pipelines

    async def get(self, name: str) -> ServedPipeline | None:
        """The pipeline called ``name``; an unknown name triggers one refresh in case it was just added."""
        pipelines = await self.current()
        if name not in pipelines and time.monotonic() - self.loaded_at > 1.0:
            pipelines = await self.refresh(force=True)
        return pipelines.get(name)

    async def _refresh_quietly(self) -> None:
        try:
            await self.refresh()
        except Exception as exc:  # keep serving the cached catalog; the next request tries again
            log.warning("pipeline catalog refresh failed: %s", exc)

    async def _load(self, client: TritonHttpClient) -> dict[str, ServedPipeline]:
        ready: dict[str, list[str]] = {}
        for model in await client.repository_index():
            if model.get("state") == "READY":
                ready.setdefault(model["name"], []).append(str(model.get("version", "")))
        configs = await asyncio.gather(*(client.model_config(name) for name in sorted(ready)))
        found: dict[str, ServedPipeline] = {}
        for config in configs:
            try:
                pipeline = parse_pipeline(config, ready)
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("ignoring model with an unreadable %s: %s", SPEC_PARAMETER, exc)
                continue
            if pipeline:
                found[pipeline.name] = pipeline
        for config in configs:
            parameters = config.get("parameters", {})
            of = parameters.get(MAPS_OF, {}).get("string_value")
            if of in found and config.get("name") in ready:
                found[of] = replace(found[of], maps=json.loads(parameters[MAPS_GEOMETRY]["string_value"]))
        return found
