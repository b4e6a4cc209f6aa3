"""What a classification request may say, defined once for `/v1/classify`'s two routes (FastAPI's and the
raw-body route of raw_body.py) and for `/v1/classify/batch`: the query parameters with their defaults and bounds,
and the admission (a service slot, the resolved pipeline) that comes before any image is read."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

from fastapi import Query
from starlette.requests import Request

from server.gateway.admission import Admission
from server.gateway.pipelines import ServedPipeline

DEFAULT_TOP_K = 5
MAX_PIPELINE_NAME = 128
TOP_K_HELP = "Number of classes to return"
PIPELINE_HELP = "Pipeline name (default: the configured default)"
MAPS_HELP = "Also return the top-k classes' score maps per member, scale and mirror, and fused (docs/maps.md)"


@dataclasses.dataclass(frozen=True)
class ClassifyQuery:
    pipeline: str | None = None
    top_k: int = DEFAULT_TOP_K
    maps: bool = False


def pipeline_parameter() -> Any:
    return Query(None, max_length=MAX_PIPELINE_NAME, description=PIPELINE_HELP)


def top_k_parameter(max_top_k: int) -> Any:
    return Query(DEFAULT_TOP_K, ge=1, le=max_top_k, description=TOP_K_HELP)


def maps_parameter() -> Any:
    return Query(False, description=MAPS_HELP)


def parse_raw_query(query: bytes, max_top_k: int) -> ClassifyQuery | None:
    """The query of a raw-body request when it is one the raw-body route serves exactly like FastAPI's: each parameter
    once and valid, no score maps. None sends the request on to the route, which answers or refuses it."""
    pipeline: str | None = None
    top_k = DEFAULT_TOP_K
    seen: set[str] = set()
    for key, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True) if query else ():
        if key in seen:
            return None
        seen.add(key)
        if key == "pipeline":
            if not value or len(value) > MAX_PIPELINE_NAME:
                return None
            pipeline = value
        elif key == "top_k":
            if not (value.isascii() and value.isdigit() and len(value) <= 9):
                return None
            top_k = int(value)
            if not 1 <= top_k <= max_top_k:
                return None
        elif key == "maps":
            return None
    return ClassifyQuery(pipeline, top_k)


@dataclasses.dataclass(frozen=True)
class Admitted:
    pipeline: ServedPipeline
    started: float  # time.perf_counter() on arrival: the answer's timing_ms includes the wait for a slot


@contextlib.asynccontextmanager
async def admitted(admission: Admission, resolve: Callable[[str | None], Awaitable[ServedPipeline]], request: Request,
                   name: str | None) -> AsyncIterator[Admitted]:
    """A service slot and the resolved pipeline, named in the request's metrics label as soon as it is known."""
    started = time.perf_counter()
    request.state.pipeline = "unknown"
    async with admission.slot():
        chosen = await resolve(name)
        request.state.pipeline = chosen.name
        yield Admitted(chosen, started)
