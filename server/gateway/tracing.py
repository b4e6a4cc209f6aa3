"""The gateway's part of a trace: OpenTelemetry's own FastAPI instrumentation for the request's server span, one
client span per call to Triton whose W3C context goes with the call (Triton's spans for the pipeline, its steps and
its members hang below it), and a cascade's stages as spans with the confidence and threshold that decided.

Built only when the standard ``OTEL_*`` variables name an endpoint (server/telemetry.py); otherwise the gateway gets
``NO_TRACING``, whose methods do nothing, and OpenTelemetry's SDK is never imported. Only sampled requests pass a
context on: Triton traces every request that carries one.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator
from typing import Any

from client.contract import STAGE_REPORT
from server.telemetry import TraceExport

ATTRIBUTE_PREFIX = "vgg."


class TritonCall:
    """The span of one call to Triton: ``headers`` go with the call (its trace context), ``extra_outputs`` are
    what the call must also ask for (a cascade's stage report when traced)."""

    headers = b""
    extra_outputs: tuple[str, ...] = ()

    def failed(self, code: str) -> None:
        """The call ended in this error (the API error code)."""

    def answered(self, extras: dict[str, list[str]]) -> None:
        """The call's extra outputs: a cascade's stage report becomes one span per stage."""


class NoTracing:
    """Tracing off: every method is a no-op, at the cost of a call; ``enabled`` lets a hot path skip even that."""

    enabled = False

    def instrument(self, app: Any) -> None:
        """Nothing to instrument."""

    def triton_call(self, pipeline: str, model: str, cascade: bool) -> contextlib.AbstractContextManager[TritonCall]:
        return _NO_CALL_CONTEXT

    def finish_request(self, fields: dict[str, Any]) -> str:
        """The current trace's ID for the access log ("" when not traced), after tagging the request's span."""
        return ""

    def shutdown(self) -> None:
        """Nothing to flush."""


_NO_CALL_CONTEXT = contextlib.nullcontext(TritonCall())  # reusable: it holds no state
NO_TRACING = NoTracing()


class Tracing(NoTracing):
    """Spans exported over OTLP/HTTP (protobuf) in batches, off the request path."""

    enabled = True

    def __init__(self, export: TraceExport) -> None:
        from opentelemetry import propagate, trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        # The sampler, the batching and the exporter's headers and timeout come from OTEL_* through the SDK itself.
        self.provider = TracerProvider(resource=Resource.create({**export.resource,
                                                                 "service.name": export.service_name}))
        self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=export.endpoint)))
        self.tracer = self.provider.get_tracer("vgg-serve.gateway")
        self.excluded_urls = export.excluded_urls
        self._trace, self._propagate = trace, propagate

    def instrument(self, app: Any) -> None:
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        # One server span per request: the ASGI messages' own spans (receive/send) would add two per chunk; the
        # probes' and scrapes' requests are left out unless OTEL_PYTHON_FASTAPI_EXCLUDED_URLS says otherwise.
        FastAPIInstrumentor.instrument_app(app, tracer_provider=self.provider, exclude_spans=["receive", "send"],
                                           excluded_urls=self.excluded_urls)

    @contextlib.contextmanager
    def triton_call(self, pipeline: str, model: str, cascade: bool) -> Iterator[TritonCall]:
        from opentelemetry.trace import SpanKind

        attributes = {"vgg.pipeline": pipeline, "vgg.triton.model": model}
        with self.tracer.start_as_current_span(f"triton {model}", kind=SpanKind.CLIENT, attributes=attributes,
                                               record_exception=False, set_status_on_exception=False) as span:
            yield _TracedCall(self, span, cascade)

    def finish_request(self, fields: dict[str, Any]) -> str:
        span = self._trace.get_current_span()
        context = span.get_span_context()
        if not (context.is_valid and context.trace_flags.sampled):
            return ""
        span.set_attributes({ATTRIBUTE_PREFIX + name: value for name, value in fields.items() if value})
        if fields.get("error_code"):
            span.set_attribute("error.type", fields["error_code"])
        return f"{context.trace_id:032x}"

    def shutdown(self) -> None:
        """Flush what is batched (the lifespan's end)."""
        self.provider.shutdown()


class _TracedCall(TritonCall):
    def __init__(self, tracing: Tracing, span: Any, cascade: bool) -> None:
        self.tracing, self.span = tracing, span
        context = span.get_span_context()
        if context.trace_flags.sampled:
            carrier: dict[str, str] = {}
            tracing._propagate.inject(carrier)
            self.headers = "".join(f"{name}: {value}\r\n" for name, value in carrier.items()).encode("latin-1")
            self.extra_outputs = (STAGE_REPORT,) if cascade else ()

    def failed(self, code: str) -> None:
        from opentelemetry.trace import Status, StatusCode

        self.span.set_attribute("error.type", code)
        self.span.set_status(Status(StatusCode.ERROR, code))

    def answered(self, extras: dict[str, list[str]]) -> None:
        report = extras.get(STAGE_REPORT)
        if report:
            stage_spans(self.tracing.tracer, self.span, report)


def stage_spans(tracer: Any, parent: Any, report: Iterable[str]) -> None:
    """One child span per stage the cascade ran, timed by the cascade itself. A cached answer's report describes
    the run that filled the cache: it is marked on the call's span instead of drawn as stages that did not run."""
    from opentelemetry import trace

    stages = [json.loads(item) for item in report]
    if stages and stages[0]["start_ns"] < parent.start_time:
        parent.set_attribute("vgg.triton.cached", True)
        return
    context = trace.set_span_in_context(parent)
    for index, stage in enumerate(stages):
        attributes = {"vgg.cascade.stage": stage["stage"], "vgg.cascade.index": index,
                      "vgg.cascade.confidence": stage["confidence"], "vgg.cascade.rule": stage["rule"],
                      "vgg.cascade.answered": index == len(stages) - 1}
        if stage["threshold"] is not None:
            attributes["vgg.cascade.threshold"] = stage["threshold"]
        span = tracer.start_span(f"cascade stage {stage['stage']}", context=context, attributes=attributes,
                                 start_time=stage["start_ns"])
        span.end(end_time=stage["end_ns"])


def tracing_for(export: TraceExport | None) -> NoTracing:
    """The gateway's tracing for these settings: NO_TRACING when off."""
    return Tracing(export) if export else NO_TRACING
