"""An OTLP/HTTP trace receiver for tests (no Collector or Jaeger installs here): it accepts real exports on
``/v1/traces``, protobuf (the Python SDK) and JSON (Triton), and keeps every span.

Triton's JSON carries trace and span IDs as hex strings, as the OTLP/JSON spec says; protobuf's ``json_format``
would read them as base64 (bytes fields) and scramble them, so JSON is decoded here by hand.
"""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest


@dataclass(frozen=True)
class Span:
    service: str
    trace_id: str  # hex, 32 digits
    span_id: str  # hex, 16 digits
    parent_id: str  # hex, "" for a root
    name: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any] = field(default_factory=dict)
    status: int = 0  # 0 unset, 1 ok, 2 error


class Receiver:
    """A loopback OTLP/HTTP endpoint; ``url`` is what OTEL_EXPORTER_OTLP_ENDPOINT takes."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.exports: list[str] = []  # the content type of each export received
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                kind = self.headers.get("Content-Type", "").split(";")[0]
                spans = decode_json(body) if kind == "application/json" else decode_protobuf(body)
                with receiver._lock:
                    receiver.spans += spans
                    receiver.exports.append(kind)
                answer = b"{}" if kind == "application/json" else b""
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def trace(self, trace_id: str) -> list[Span]:
        with self._lock:
            return [span for span in self.spans if span.trace_id == trace_id]

    def wait_for(self, done: Callable[[list[Span]], bool], timeout_s: float = 30.0) -> list[Span]:
        """All spans once ``done(spans)`` holds; AssertionError with what arrived when it never does."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                spans = list(self.spans)
            if done(spans):
                return spans
            if time.monotonic() > deadline:
                raise AssertionError(f"spans never complete; got {[(s.service, s.name) for s in spans]}")
            time.sleep(0.1)


def decode_protobuf(body: bytes) -> list[Span]:
    request = ExportTraceServiceRequest.FromString(body)
    spans = []
    for resource in request.resource_spans:
        service = _protobuf_attributes(resource.resource.attributes).get("service.name", "")
        for scope in resource.scope_spans:
            spans += [Span(service, span.trace_id.hex(), span.span_id.hex(), span.parent_span_id.hex(), span.name,
                           span.start_time_unix_nano, span.end_time_unix_nano,
                           _protobuf_attributes(span.attributes), span.status.code) for span in scope.spans]
    return spans


def _protobuf_attributes(items: Any) -> dict[str, Any]:
    found = {}
    for item in items:
        kind = item.value.WhichOneof("value")
        found[item.key] = getattr(item.value, kind) if kind else None
    return found


def decode_json(body: bytes) -> list[Span]:
    spans = []
    for resource in json.loads(body).get("resourceSpans", []):
        service = _json_attributes(resource.get("resource", {}).get("attributes", [])).get("service.name", "")
        for scope in resource.get("scopeSpans", []) + resource.get("instrumentationLibrarySpans", []):
            spans += [Span(service, span["traceId"].lower(), span["spanId"].lower(),
                           span.get("parentSpanId", "").lower(), span["name"], int(span["startTimeUnixNano"]),
                           int(span["endTimeUnixNano"]), _json_attributes(span.get("attributes", [])),
                           _status(span.get("status", {}).get("code", 0))) for span in scope.get("spans", [])]
    return spans


def _json_attributes(items: list[dict[str, Any]]) -> dict[str, Any]:
    found = {}
    for item in items:
        value = item.get("value", {})
        for kind, read in (("stringValue", str), ("intValue", int), ("doubleValue", float), ("boolValue", bool)):
            if kind in value:
                found[item["key"]] = read(value[kind])
                break
    return found


def _status(code: int | str) -> int:
    """OTLP/JSON writes enums as integers; some exporters write their names."""
    names = {"STATUS_CODE_UNSET": 0, "STATUS_CODE_OK": 1, "STATUS_CODE_ERROR": 2}
    return names[code] if code in names else int(code)
