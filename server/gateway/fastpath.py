"""The hot path, ``POST /v1/classify`` with a raw image body, served as plain ASGI ahead of FastAPI's routing.

A gateway should add almost nothing to a direct Triton call, and FastAPI's per-request machinery (routing,
dependency and query solving, response-model validation and serialisation) is a sizeable share of the gateway's
CPU per request (bench/results/gateway.md). This middleware answers the
common, well-formed case itself, with the same limits, auth, admission, metrics labels, error shape and JSON
body, and passes everything it is not sure about (multipart, other content types, unusual or invalid query
parameters) to the FastAPI route, which stays the documented one (OpenAPI) and produces the errors.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import ClientDisconnect, Request
from starlette.types import ASGIApp, Receive, Scope, Send

from server.gateway.admission import Admission, admitted
from server.gateway.classifier import Classifier
from server.gateway.config import Settings
from server.gateway.errors import ApiError
from server.gateway.uploads import GENERIC_TYPES, IMAGE_TYPES, media_type, read_body

log = logging.getLogger("server.gateway")
PATH = "/v1/classify"
DEFAULT_TOP_K = 5
MAX_PIPELINE_NAME = 128
_JSON_HEADERS = [(b"content-type", b"application/json")]
_RAW_TYPES = IMAGE_TYPES | GENERIC_TYPES


class ClassifyFastPath:
    """Serves well-formed raw-body ``POST /v1/classify`` requests; everything else goes on to ``app``."""

    def __init__(self, app: ASGIApp, settings: Settings, admission: Admission, classifier: Classifier,
                 auth: Callable[[Request], Awaitable[None]], route: Any) -> None:
        self.app = app
        self.settings = settings
        self.admission = admission
        self.classifier = classifier
        self.auth = auth
        self.route = route  # the FastAPI route: metrics label requests by its template, as for routed requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        params = self._params(scope)
        if params is None:
            await self.app(scope, receive, send)
            return
        scope["route"] = self.route
        started = time.perf_counter()
        request = Request(scope, receive)
        request.state.pipeline = "unknown"  # the metrics label, should auth refuse the request
        try:
            await self.auth(request)
            async with admitted(self.admission, self.classifier, request, params[0]) as chosen:
                body = await read_body(request, self.settings.max_body_bytes, self.settings.body_timeout_s)
                if not body:
                    raise ApiError(422, "invalid_image", "the image is empty")
                result = await self.classifier.classify_raw(chosen, body, params[1])
        except ApiError as error:
            await error.response()(scope, receive, send)
            return
        except ClientDisconnect:
            return  # nobody to answer
        except Exception as exc:  # the same last resort as the app's handler: logged, never a traceback
            log.exception("unhandled error on POST %s", PATH, exc_info=exc)
            await ApiError(500, "internal_error", "internal server error").response()(scope, receive, send)
            return
        result["timing_ms"] = round((time.perf_counter() - started) * 1000, 3)
        payload = json.dumps(result, separators=(",", ":"), ensure_ascii=False).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [*_JSON_HEADERS, (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})

    def _params(self, scope: Scope) -> tuple[str | None, int] | None:
        """(pipeline, top_k) when the request is one the fast path serves exactly like the route; else None."""
        kind = b""
        for name, value in scope["headers"]:
            if name == b"content-type":
                if kind:
                    return None
                kind = value
        if media_type(kind.decode("latin-1")) not in _RAW_TYPES:
            return None  # multipart, no type, not an image: the route answers (or refuses) these
        pipeline: str | None = None
        top_k = DEFAULT_TOP_K
        seen: set[str] = set()
        query = scope.get("query_string", b"")
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
                if not 1 <= top_k <= self.settings.max_top_k:
                    return None
            elif key == "maps":
                return None  # score maps: the route serves them
        return pipeline, top_k
