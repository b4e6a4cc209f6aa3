"""One error shape for every failure, {"error": {"code", "message"}}, and the mapping from Triton's errors to HTTP.

Clients branch on ``code``; ``message`` is for humans. Nothing here ever puts a traceback in a response.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from client.contract import INVALID_IMAGE, find_image_error
from server.gateway.request_context import note, request_id
from server.gateway.triton_http import TritonHttpError

log = logging.getLogger("server.gateway")
SHARED_MEMORY_FULL = "Failed to increase the shared memory pool size"  # Triton's Python backend, /dev/shm full

# Codes the preprocess step puts in brackets at the start of its message (the Triton side's contract).
_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 406: "not_acceptable", 408: "request_timeout", 413: "payload_too_large",
               415: "unsupported_media_type", 422: "invalid_request", 429: "overloaded"}


class ApiError(Exception):
    """An expected failure with its HTTP status, stable code and human message."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def body(self) -> dict[str, dict[str, str]]:
        return {"error": {"code": self.code, "message": self.message}}

    def response(self) -> JSONResponse:
        """The HTTP answer: the body, with the request's ID when there is one (server/gateway/request_context.py)."""
        body = self.body()
        rid = request_id()
        if rid:
            body["error"]["request_id"] = rid
        note(error_code=self.code)
        return JSONResponse(body, status_code=self.status, headers=self.headers)


class TritonUnavailable(ApiError):
    """No Triton endpoint answered."""

    def __init__(self, message: str = "no Triton server is reachable", retry_after: int = 1) -> None:
        super().__init__(503, "triton_unavailable", message, {"Retry-After": str(retry_after)})


def from_triton(exc: TritonHttpError) -> ApiError:
    """Translate a Triton error: the image's own faults to 4xx, an unavailable server to 503, the rest to 502."""
    found = find_image_error(exc.message)
    if found:
        return ApiError(found.status, found.code, found.message)
    if exc.unhealthy_step:
        return TritonUnavailable("a step of this pipeline is being restarted; retry shortly")
    if exc.unavailable:
        return TritonUnavailable()
    if SHARED_MEMORY_FULL in exc.message:  # a request's tensors outgrew the stubs' /dev/shm: the server's limit
        log.warning("Triton is out of shared memory: %s", _first_line(exc.message))
        return ApiError(503, "insufficient_shared_memory", "the inference server's shared memory (/dev/shm) is too "
                        "small for this request now; retry later, or give the server more (--shm-size)",
                        {"Retry-After": "1"})
    if exc.status == 400:
        return ApiError(422, INVALID_IMAGE, _first_line(exc.message))
    log.warning("Triton error %s: %s", exc.status, exc.message)
    return ApiError(502, "triton_error", "the inference server failed to process the request")


def _first_line(message: str) -> str:
    return message.strip().splitlines()[0][:500] if message.strip() else "rejected by the inference server"


def install_handlers(app: FastAPI) -> None:
    """Route every exception, including framework ones, into the single error shape."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        return ApiError(exc.status_code, code, message, dict(exc.headers or {})).response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors()[:5]:
            where = ".".join(str(part) for part in err.get("loc", ()) if part != "body")
            problems.append(f"{where}: {err.get('msg', 'invalid')}")
        return ApiError(422, "invalid_request", "; ".join(problems) or "invalid request").response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return ApiError(500, "internal_error", "internal server error").response()
