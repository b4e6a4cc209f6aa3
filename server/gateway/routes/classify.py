"""POST /v1/classify (one image) and /v1/classify/batch (several): the documented routes. Raw-body requests to
/v1/classify are mostly answered before routing by server/gateway/raw_body.py, under the same rules."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Depends, Request

from server.gateway.classify_request import (
    Admitted,
    ClassifyQuery,
    admitted,
    maps_parameter,
    pipeline_parameter,
    top_k_parameter,
)
from server.gateway.errors import ApiError
from server.gateway.schemas import BatchItem, BatchResponse, ClassifyResponse, ErrorBody, error_responses
from server.gateway.services import Services
from server.gateway.uploads import IMAGE_TYPES, read_images

ERRORS = error_responses(400, 401, 404, 408, 413, 415, 422, 429, 502, 503, 504)
_BINARY = {"schema": {"type": "string", "format": "binary"}}


def image_body(many: bool) -> dict[str, Any]:
    """OpenAPI request body: a multipart form or a raw image body (FastAPI can't infer it from our manual read)."""
    file_schema: dict[str, Any] = {"type": "string", "format": "binary"}
    field = {"type": "array", "items": file_schema} if many else file_schema
    content: dict[str, Any] = {"multipart/form-data": {"schema": {
        "type": "object", "properties": {"file": field}, "required": ["file"]}}}
    for kind in sorted(IMAGE_TYPES - {"image/jpg", "image/pjpeg", "image/x-bmp", "image/x-ms-bmp"}):
        content[kind] = _BINARY
    content["application/octet-stream"] = _BINARY
    return {"requestBody": {"required": True, "content": content}}


async def refuse_repeated_parameters(request: Request) -> None:
    """``?top_k=1&top_k=2`` would silently mean 2 (FastAPI keeps the last value): refuse the ambiguity instead."""
    keys = [key for key, _ in request.query_params.multi_items()]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise ApiError(422, "invalid_request", f"query parameter {repeated[0][:100]!r} is given more than once")


def admission_dependencies(services: Services) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """FastAPI dependencies for `/v1/classify` and `/v1/classify/batch` (which has no maps): the query read and
    checked, then a slot and its pipeline, held until the route function returns. One dependency each, declaring
    the parameters itself: FastAPI validates them all before admitting the request."""
    max_top_k = services.settings.max_top_k
    admission, resolve = services.admission, services.classifier.resolve

    async def single(request: Request, pipeline: str | None = pipeline_parameter(),
                     top_k: int = top_k_parameter(max_top_k),
                     maps: bool = maps_parameter()) -> AsyncIterator[tuple[Admitted, ClassifyQuery]]:
        async with admitted(admission, resolve, request, pipeline) as slot:
            yield slot, ClassifyQuery(pipeline, top_k, maps)

    async def batch(request: Request, pipeline: str | None = pipeline_parameter(),
                    top_k: int = top_k_parameter(max_top_k)) -> AsyncIterator[tuple[Admitted, ClassifyQuery]]:
        async with admitted(admission, resolve, request, pipeline) as slot:
            yield slot, ClassifyQuery(pipeline, top_k)

    return single, batch


def router(services: Services) -> APIRouter:
    settings, rollouts = services.settings, services.rollouts
    admit_single, admit_batch = admission_dependencies(services)
    routes = APIRouter(tags=["classify"], responses=ERRORS,
                       dependencies=[Depends(services.check_auth), Depends(refuse_repeated_parameters)])
    single = Depends(admit_single, scope="function")
    batch = Depends(admit_batch, scope="function")

    @routes.post("/v1/classify", response_model=ClassifyResponse, openapi_extra=image_body(many=False),
                 response_model_exclude_none=True)
    async def classify(request: Request, admission: tuple[Admitted, ClassifyQuery] = single) -> ClassifyResponse:
        """Classify one image: multipart field `file`, or the raw body with an image content type."""
        (slot, query) = admission
        part = (await read_images(request, settings.max_body_bytes, settings.body_timeout_s, 1))[0]
        if part.error:
            raise part.error
        result = ClassifyResponse(**await rollouts.classify(slot.pipeline, part.data, query.top_k, query.maps,
                                                            request.headers))
        result.timing_ms = round((time.perf_counter() - slot.started) * 1000, 3)
        return result

    @routes.post("/v1/classify/batch", response_model=BatchResponse, openapi_extra=image_body(many=True))
    async def classify_batch(request: Request, admission: tuple[Admitted, ClassifyQuery] = batch) -> BatchResponse:
        """Classify several images (repeated multipart field `file`); a bad image fails only its own entry."""
        (slot, query) = admission
        parts = await read_images(request, settings.max_body_bytes, settings.body_timeout_s, settings.max_batch_files)
        gate = asyncio.Semaphore(settings.batch_concurrency)

        async def one(index: int, filename: str | None, data: bytes, error: ApiError | None) -> BatchItem:
            if error is None:
                try:
                    async with gate:
                        result = ClassifyResponse(**await rollouts.classify(slot.pipeline, data, query.top_k,
                                                                            headers=request.headers))
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
        return BatchResponse(results=items, pipeline=slot.pipeline.name,
                             timing_ms=round((time.perf_counter() - slot.started) * 1000, 3))

    return routes
