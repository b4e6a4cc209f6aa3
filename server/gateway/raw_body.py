"""The hot path, ``POST /v1/classify`` with a raw image body, served as plain ASGI ahead of FastAPI's routing.

A gateway should add almost nothing to a direct Triton call, and FastAPI's per-request machinery (routing,
dependency and query solving, response-model validation and serialisation) is a sizeable share of the gateway's
CPU per request (bench/results/gateway.md). This middleware answers the common, well-formed case itself under the
rules of server/gateway/classify_request.py (the route's too), with the same auth, admission, limits, metrics
labels, error shape and JSON body, and passes everything it is not sure about (multipart, other content types,
unusual or invalid query parameters, score maps) to the FastAPI route, which stays the documented one (OpenAPI)
and produces the errors.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.types import ASGIApp, Receive, Scope, Send

from server.gateway.classify_request import ClassifyQuery, admitted, parse_raw_query
from server.gateway.errors import ApiError
from server.gateway.services import Services
from server.gateway.uploads import GENERIC_TYPES, IMAGE_TYPES, empty_image, media_type, read_body

log = logging.getLogger("server.gateway")
PATH = "/v1/classify"
_JSON_HEADERS = [(b"content-type", b"application/json")]
_RAW_TYPES = IMAGE_TYPES | GENERIC_TYPES


class RawBodyClassify:
    """Serves well-formed raw-body ``POST /v1/classify`` requests; everything else goes on to ``app``."""

    def __init__(self, app: ASGIApp, services: Services, route: Any) -> None:
        self.app = app
        self.settings = services.settings
        self.services = services
        self.route = route  # the FastAPI route: metrics label requests by its template, as for routed requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        query = self._query(scope)
        if query is None:
            await self.app(scope, receive, send)
            return
        scope["route"] = self.route
        request = Request(scope, receive)
        request.state.pipeline = "unknown"  # the metrics label, should auth refuse the request
        services = self.services
        try:
            await services.check_auth(request)
            async with admitted(services.admission, services.classifier.resolve, request, query.pipeline) as slot:
                body = await read_body(request, self.settings.max_body_bytes, self.settings.body_timeout_s)
                if not body:
                    raise empty_image()
                result = await services.rollouts.classify(slot.pipeline, body, query.top_k,
                                                          headers=request.headers)
        except ApiError as error:
            await error.response()(scope, receive, send)
            return
        except ClientDisconnect:
            return  # nobody to answer
        except Exception as exc:  # the same last resort as the app's handler: logged, never a traceback
            log.exception("unhandled error on POST %s", PATH, exc_info=exc)
            await ApiError(500, "internal_error", "internal server error").response()(scope, receive, send)
            return
        result["timing_ms"] = round((time.perf_counter() - slot.started) * 1000, 3)
        payload = json.dumps(result, separators=(",", ":"), ensure_ascii=False).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [*_JSON_HEADERS, (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})

    def _query(self, scope: Scope) -> ClassifyQuery | None:
        """The query when the request is one the raw-body route serves exactly like FastAPI's; else None."""
        kind = b""
        for name, value in scope["headers"]:
            if name == b"content-type":
                if kind:
                    return None
                kind = value
        if media_type(kind.decode("latin-1")) not in _RAW_TYPES:
            return None  # multipart, no type, not an image: the route answers (or refuses) these
        return parse_raw_query(scope.get("query_string", b""), self.settings.max_top_k)
