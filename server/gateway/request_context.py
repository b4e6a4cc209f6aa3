"""One request, followed: its ID (the caller's ``X-Request-ID`` when well-formed, else a new one) on the response, in
error bodies and in the Triton request, and one access-log line when it is answered.

The outermost middleware opens a ``Record`` for each HTTP request in a context variable; the routes, the classifier
and the error handlers add what they learn (pipeline, Triton's time, the cascade's stage, the error code) without
passing it around. When traced, the request's span gets the same fields and the log line its trace ID.
The access log is one JSON object per line (``--access-log json``, the default), a plain line
(``text``) or nothing (``off``); it never holds image bytes, API keys or Triton's key: only the fields below.
"""

from __future__ import annotations

import contextvars
import json
import re
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, TextIO

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.gateway.metrics import route_template
from server.gateway.tracing import NO_TRACING, NoTracing

HEADER = "x-request-id"
_WELL_FORMED = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_current: contextvars.ContextVar[Record | None] = contextvars.ContextVar("vgg_gateway_request", default=None)


@dataclass
class Record:
    request_id: str
    method: str
    path: str
    started: float = field(default_factory=time.perf_counter)
    status: int = 0
    bytes_in: int = 0
    pipeline: str = ""
    stage: str = ""
    error_code: str = ""
    triton_ms: float = 0.0
    trace_id: str = ""  # "" when the request is not traced


def request_id() -> str | None:
    """The ID of the request being served in this context, if any."""
    record = _current.get()
    return record.request_id if record else None


def note(**fields: Any) -> None:
    """Add what this part of the gateway knows to the current request's record (no-op outside a request)."""
    record = _current.get()
    if record is not None:
        for name, value in fields.items():
            setattr(record, name, value)


def add_triton_ms(milliseconds: float) -> None:
    record = _current.get()
    if record is not None:
        record.triton_ms += milliseconds


def pipeline_of(record: Record, scope: Scope) -> str:
    """The pipeline that answered, else the one the admission resolved (also the metrics' label)."""
    return record.pipeline or scope.get("state", {}).get("pipeline", "")


def incoming_id(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == HEADER.encode():
            text = value.decode("latin-1")
            if _WELL_FORMED.fullmatch(text):
                return text
    return uuid.uuid4().hex


class RequestContext:
    """Outermost: every response carries its request's ID, and every request ends in one access-log line."""

    def __init__(self, app: ASGIApp, log_format: str = "json", stream: TextIO | None = None,
                 tracing: NoTracing = NO_TRACING) -> None:
        """Lines go straight to ``stream`` (stdout), one write and flush each: the logging module's machinery cost
        more than the line (bench/results/gateway.md)."""
        self.app, self.log_format, self.stream = app, log_format, stream or sys.stdout
        self.tracing = tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        record = Record(incoming_id(scope), scope["method"], scope["path"])
        token = _current.set(record)
        header = (HEADER.encode(), record.request_id.encode())

        async def counting_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                record.bytes_in += len(message.get("body", b""))
            return message

        async def tagging_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                record.status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), header]}
                if self.tracing.enabled:  # the request's span ends with the response's last byte: tag it now
                    record.trace_id = self.tracing.finish_request({
                        "request_id": record.request_id, "pipeline": pipeline_of(record, scope),
                        "cascade.stage": record.stage, "error_code": record.error_code})
            await send(message)

        try:
            await self.app(scope, counting_receive, tagging_send)
        finally:
            _current.reset(token)
            if self.log_format != "off":
                self.write(record, route_template(scope), pipeline_of(record, scope))

    def write(self, record: Record, route: str, pipeline: str) -> None:
        line = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + "Z", "request_id": record.request_id,
                "trace_id": record.trace_id, "method": record.method, "route": route or record.path,
                "pipeline": pipeline, "stage": record.stage, "status": record.status, "error_code": record.error_code,
                "bytes_in": record.bytes_in, "gateway_ms": round((time.perf_counter() - record.started) * 1000, 3),
                "triton_ms": round(record.triton_ms, 3)}
        if self.log_format == "json":
            text = json.dumps(line, separators=(",", ":"))
        else:
            text = ("{time} {request_id} {method} {route} {status} {pipeline} {error_code} "
                    "{gateway_ms:.1f}ms").format(**line)
        self.stream.write(text + "\n")
        self.stream.flush()
