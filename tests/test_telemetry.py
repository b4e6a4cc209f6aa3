"""Tracing's configuration from the standard OTEL_* variables (server/telemetry.py) as the gateway and Triton's flags
read it, the refusals of what can't be honoured, the client's context propagation, and the tests' own OTLP
receiver decoding real exports."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from support.otlp import Receiver, decode_json

from server.gateway.config import ConfigError, load_settings
from server.telemetry import BEHIND_GATEWAY, GATEWAY_SERVICE, TRITON_SERVICE, TelemetryConfigError, trace_export
from server.triton_launcher import TritonServer
from server.triton_launcher import main as launcher_main

ENDPOINT = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/"}


@pytest.mark.parametrize("env", [{}, {"OTEL_EXPORTER_OTLP_ENDPOINT": ""}, {**ENDPOINT, "OTEL_SDK_DISABLED": "true"},
                                 {**ENDPOINT, "OTEL_TRACES_EXPORTER": "none"}])
def test_off_unless_an_endpoint_is_named_and_nothing_disables_it(env):
    assert trace_export(env, GATEWAY_SERVICE) is None
    assert TritonServer("repo", tracing=None).tracing is None  # and so no --trace-config flag (below)


def test_endpoint_service_resource_and_batching():
    export = trace_export({**ENDPOINT, "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod, service.name=x",
                           "OTEL_BSP_SCHEDULE_DELAY": "250"}, TRITON_SERVICE)
    assert export.endpoint == "http://collector:4318/v1/traces"
    assert export.service_name == "x" and export.resource == {"deployment.environment": "prod"}
    flags = export.triton_flags()
    assert "--trace-config=mode=opentelemetry" in flags and "--trace-config=count=-1" in flags
    assert "--trace-config=opentelemetry,url=http://collector:4318/v1/traces" in flags
    assert "--trace-config=opentelemetry,resource=service.name=x" in flags
    assert "--trace-config=opentelemetry,resource=deployment.environment=prod" in flags
    assert "--trace-config=opentelemetry,bsp_schedule_delay=250" in flags
    named = trace_export({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://t.example/otlp", "OTEL_SERVICE_NAME": "s"},
                         GATEWAY_SERVICE)
    assert (named.endpoint, named.service_name) == ("https://t.example/otlp", "s")
    assert trace_export(ENDPOINT, GATEWAY_SERVICE).service_name == GATEWAY_SERVICE


@pytest.mark.parametrize(("sampler", "argument", "rate"), [
    ("", "", 1), ("parentbased_always_on", "", 1), ("always_off", "", 0), ("parentbased_always_off", "", 0),
    ("traceidratio", "0.1", 10), ("parentbased_traceidratio", "0.25", 4), ("traceidratio", "0", 0)])
def test_the_sampler_s_rule_for_roots_is_triton_s_rate(sampler, argument, rate):
    env = {**ENDPOINT, "OTEL_TRACES_SAMPLER": sampler, "OTEL_TRACES_SAMPLER_ARG": argument}
    assert trace_export(env, TRITON_SERVICE).root_rate == rate
    assert f"--trace-config=rate={rate}" in trace_export(env, TRITON_SERVICE).triton_flags()


def test_behind_the_gateway_triton_traces_only_what_the_gateway_sampled():
    env = {**ENDPOINT, "OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.5"}
    assert trace_export({**env, **BEHIND_GATEWAY}, TRITON_SERVICE).root_rate == 0


@pytest.mark.parametrize(("env", "named"), [
    ({"OTEL_TRACES_SAMPLER": "sometimes"}, "OTEL_TRACES_SAMPLER"),
    ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"}, "OTEL_TRACES_SAMPLER_ARG"),
    ({"OTEL_RESOURCE_ATTRIBUTES": "novalue"}, "OTEL_RESOURCE_ATTRIBUTES"),
    ({"OTEL_BSP_SCHEDULE_DELAY": "soon"}, "OTEL_BSP_SCHEDULE_DELAY"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"}, "OTEL_EXPORTER_OTLP_ENDPOINT")])
def test_what_cannot_be_honoured_is_refused_naming_the_variable(env, named, capsys):
    with pytest.raises(TelemetryConfigError, match=named):
        trace_export({**ENDPOINT, **env}, GATEWAY_SERVICE)
    with pytest.raises(ConfigError, match=named):  # the gateway refuses to start
        load_settings([], {**ENDPOINT, **env})
    with pytest.MonkeyPatch.context() as patch:  # and so does Triton's launcher, in one line, before Triton starts
        for name, value in {**ENDPOINT, **env}.items():
            patch.setenv(name, value)
        assert launcher_main(["--repository", "does-not-matter"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("triton_launcher: error:") and named in error and "\n" not in error


def test_with_tracing_off_the_gateway_loads_neither_the_sdk_nor_the_instrumentation():
    script = ("import sys; from server.gateway.app import create_app; from server.gateway.config import Settings; "
              "create_app(Settings()); print(sorted({m.split('.')[1] for m in sys.modules "
              "if m.startswith(('opentelemetry.sdk', 'opentelemetry.instrumentation', 'opentelemetry.exporter'))}))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_gateway_reads_the_export_from_its_environment():
    settings, _ = load_settings([], {**ENDPOINT, "OTEL_SERVICE_NAME": "edge"})
    assert settings.tracing.service_name == "edge" and settings.tracing.endpoint.endswith("/v1/traces")
    assert load_settings([], {})[0].tracing is None


def test_the_client_passes_on_the_caller_s_context_and_imports_nothing_without_one():
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    from client import _http
    from client.trace_context import trace_headers

    caller = SpanContext(0x1111, 0x2222, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    with trace.use_span(NonRecordingSpan(caller)):
        assert trace_headers()["traceparent"] == f"00-{0x1111:032x}-{0x2222:016x}-01"
        assert _http.classify_request(b"x", "image/png", 5, None)["headers"]["traceparent"].startswith("00-")
    assert trace_headers() == {}  # no current span: nothing to pass on
    script = ("import sys; from client import Client; from client.trace_context import trace_headers; "
              "print(trace_headers(), any(m.startswith('opentelemetry') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["{}", "False"]


def test_the_receiver_decodes_the_sdk_s_protobuf_export():
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    with Receiver() as receiver:
        provider = TracerProvider(resource=Resource.create({"service.name": "probe"}))
        provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=receiver.url + "/v1/traces")))
        tracer = provider.get_tracer("test")
        with tracer.start_as_current_span("outer") as outer, tracer.start_as_current_span("inner") as inner:
            inner.set_attribute("vgg.pipeline", "fast")
        provider.shutdown()
        spans = {span.name: span for span in receiver.spans}
    assert receiver.exports and set(receiver.exports) == {"application/x-protobuf"}
    assert spans["inner"].parent_id == f"{outer.get_span_context().span_id:016x}"
    assert spans["inner"].trace_id == f"{outer.get_span_context().trace_id:032x}"
    assert spans["inner"].attributes == {"vgg.pipeline": "fast"} and spans["inner"].service == "probe"


def test_the_receiver_reads_json_ids_as_hex_where_protobuf_s_json_format_would_scramble_them():
    from google.protobuf import json_format
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    trace_id, span_id = "1" * 32, "2" * 16
    body = json.dumps({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "triton"}}]},
        "scopeSpans": [{"spans": [{"traceId": trace_id, "spanId": span_id, "parentSpanId": "", "name": "fast",
                                   "startTimeUnixNano": "1", "endTimeUnixNano": "2", "status": {"code": 2},
                                   "attributes": [{"key": "model_version", "value": {"intValue": "1"}}]}]}]}]})
    [span] = decode_json(body.encode())
    assert (span.trace_id, span.span_id, span.service, span.status) == (trace_id, span_id, "triton", 2)
    assert span.attributes == {"model_version": 1}
    scrambled = json_format.Parse(body, ExportTraceServiceRequest())  # base64 read of a hex string
    assert scrambled.resource_spans[0].scope_spans[0].spans[0].trace_id.hex() != trace_id
