"""One request followed end to end through real OpenTelemetry exports: the client's context, the gateway's spans
(FastAPI's instrumentation, the Triton call, a cascade's stages) and Triton's own (the request, the pipeline, its
steps and members, BLS calls included) arrive at an OTLP receiver as one trace, parented as documented in
docs/operations.md, with the request ID and error code on the gateway's span and the trace ID in the access log."""

from __future__ import annotations

import json
import shutil
import time

import httpx
import pytest
from conftest import TESTS, free_port
from support.gateway import start_gateway
from support.otlp import Receiver, Span

from client import Client, ClientError
from server.repository import generate
from server.spec_file import load_spec
from server.telemetry import BEHIND_GATEWAY, TRITON_SERVICE, trace_export
from server.triton_launcher import TritonServer

pytestmark = pytest.mark.integration
FUSION_MEMBERS = {"vgg_a", "vgg_d", "vgg_e"}
# a cascade that always escalates: no posterior's top-1 exceeds 1.0
CASCADE = '\n[pipelines.cascade_up]\nstages = ["fast", "fusion"]\nrule = "max"\nthresholds = [1.0]\n'


@pytest.fixture(scope="module")
def receiver():
    with Receiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def traced(receiver, triton_repository, tmp_path_factory):
    """Triton with a cascade, in OpenTelemetry mode as the launcher sets it behind a gateway, and a traced gateway."""
    folder = tmp_path_factory.mktemp("tracing")
    repository = folder / "repository"
    shutil.copytree(triton_repository, repository)
    (folder / "spec.toml").write_text((TESTS / "pipelines.toml").read_text() + CASCADE)
    generate(load_spec(folder / "spec.toml"), repository)
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    with TritonServer(repository, free_port(), free_port(), free_port(), log_path=folder / "triton.log",
                      heal=False, tracing=trace_export({**env, **BEHIND_GATEWAY}, TRITON_SERVICE)) as triton:
        gateway = start_gateway(tmp_path_factory, [triton.http_url], wait_ready=True, env=env)
        yield triton, gateway
        gateway.stop()


def complete(trace_id: str, *names: str):
    """Done when the trace holds a span of each name (Triton's and the gateway's batches arrive separately)."""
    return lambda spans: {s.name for s in spans if s.trace_id == trace_id} >= set(names)


def one(spans: list[Span], name: str) -> Span:
    [found] = [span for span in spans if span.name == name]
    return found


def children(spans: list[Span], parent: Span) -> list[Span]:
    return [span for span in spans if span.parent_id == parent.span_id]


def access_line(gateway, request_id: str) -> dict:
    """The request's access-log line: written once the response is sent, so it may land a moment after."""
    deadline = time.monotonic() + 10
    while True:
        for line in gateway.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{") and f'"request_id":"{request_id}"' in line:
                return json.loads(line)
        if time.monotonic() > deadline:
            raise AssertionError(f"no access-log line for {request_id}")
        time.sleep(0.05)


def test_a_fusion_request_is_one_trace_from_the_caller_through_every_member(traced, receiver, sample_images):
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    _, gateway = traced
    caller = SpanContext(0xC0FFEE << 64 | 0x1, 0xCA11E2, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    trace_id, caller_id = f"{caller.trace_id:032x}", f"{caller.span_id:016x}"
    with Client(gateway.url) as client, trace.use_span(NonRecordingSpan(caller)):
        answer = client.classify(sample_images["china_500x333.jpg"], pipeline="fusion")
    spans = receiver.wait_for(complete(trace_id, "POST /v1/classify", "triton fusion", "InferRequest", "fusion",
                                       "preprocess", "fuse", *FUSION_MEMBERS))
    spans = [span for span in spans if span.trace_id == trace_id]
    server = one(spans, "POST /v1/classify")
    assert server.parent_id == caller_id and server.service == "vgg-serve-gateway"
    assert server.attributes["vgg.request_id"] == answer.request_id
    assert server.attributes["vgg.pipeline"] == "fusion"
    call = one(spans, "triton fusion")
    assert call.parent_id == server.span_id and call.attributes["vgg.triton.model"] == "fusion"
    request = one(spans, "InferRequest")
    assert request.parent_id == call.span_id and request.service == TRITON_SERVICE
    ensemble = one(spans, "fusion")
    assert ensemble.parent_id == request.span_id
    below = children(spans, ensemble)
    assert {span.name for span in below} == {"preprocess", "fuse", *FUSION_MEMBERS}
    assert len([span for span in below if span.name == "vgg_d"]) == 3  # one run per scale, mirrors batched in
    for step in below:  # each model's own run is its compute span
        assert [span.name for span in children(spans, step)] == ["compute"], step.name
    assert access_line(gateway, answer.request_id)["trace_id"] == trace_id


def test_an_escalating_cascade_shows_its_stages_and_every_member_it_called(traced, receiver, sample_images):
    _, gateway = traced
    response = httpx.post(gateway.url + "/v1/classify", params={"pipeline": "cascade_up"}, timeout=60,
                          content=sample_images["rocket_1000x224.png"], headers={"content-type": "image/png"})
    assert response.status_code == 200 and response.json()["stages"] == ["fast", "fusion"]
    trace_id = access_line(gateway, response.headers["x-request-id"])["trace_id"]
    assert len(trace_id) == 32
    spans = receiver.wait_for(complete(trace_id, "cascade stage fast", "cascade stage fusion", "cascade_up",
                                       *FUSION_MEMBERS))
    spans = [span for span in spans if span.trace_id == trace_id]
    call = one(spans, "triton cascade_up")
    first, second = one(spans, "cascade stage fast"), one(spans, "cascade stage fusion")
    assert first.parent_id == second.parent_id == call.span_id
    assert first.attributes["vgg.cascade.threshold"] == 1.0 and first.attributes["vgg.cascade.answered"] is False
    assert 0.0 < first.attributes["vgg.cascade.confidence"] <= 1.0
    assert second.attributes["vgg.cascade.answered"] is True and "vgg.cascade.threshold" not in second.attributes
    assert call.start_ns <= first.start_ns <= first.end_ns <= second.start_ns <= second.end_ns <= call.end_ns
    assert one(spans, "POST /v1/classify").attributes["vgg.cascade.stage"] == "fusion"
    cascade = one(spans, "cascade_up")  # Triton's span of the BLS model, with every member call below it
    assert cascade.parent_id == one(spans, "InferRequest").span_id
    assert {span.name for span in children(spans, cascade)} >= FUSION_MEMBERS


def test_a_bad_image_s_spans_carry_the_error_code(traced, receiver):
    _, gateway = traced
    with Client(gateway.url) as client, pytest.raises(ClientError) as refused:
        client.classify(b"not an image at all", pipeline="fast")
    assert refused.value.code == "invalid_image"
    trace_id = access_line(gateway, refused.value.request_id)["trace_id"]
    spans = receiver.wait_for(complete(trace_id, "POST /v1/classify", "triton fast", "preprocess"))
    server = one([span for span in spans if span.trace_id == trace_id], "POST /v1/classify")
    assert server.attributes["vgg.error_code"] == server.attributes["error.type"] == "invalid_image"
    call = one([span for span in spans if span.trace_id == trace_id], "triton fast")
    assert call.status == 2 and call.attributes["error.type"] == "invalid_image"


def test_tracing_off_sends_nothing_even_when_the_caller_has_a_context(traced, receiver, sample_images,
                                                                      tmp_path_factory):
    """A gateway with tracing disabled neither exports nor passes the caller's context to Triton (which traces
    whatever arrives with one); a traced request sent after it proves that the receiver was listening."""
    triton, gateway = traced
    off = start_gateway(tmp_path_factory, [triton.http_url], wait_ready=True,
                        env={"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_SDK_DISABLED": "true"})
    untraced = f"{0xAB5E17:032x}"
    try:
        response = httpx.post(off.url + "/v1/classify", params={"pipeline": "fast"}, timeout=60,
                              content=sample_images["china_500x333.jpg"],
                              headers={"content-type": "image/jpeg", "traceparent": f"00-{untraced}-{'3' * 16}-01"})
        assert response.status_code == 200
        assert access_line(off, response.headers["x-request-id"])["trace_id"] == ""
    finally:
        off.stop()
    later = httpx.post(gateway.url + "/v1/classify", params={"pipeline": "fast"}, timeout=60,
                       content=sample_images["china_500x333.jpg"], headers={"content-type": "image/jpeg"})
    later_trace = access_line(gateway, later.headers["x-request-id"])["trace_id"]
    receiver.wait_for(complete(later_trace, "POST /v1/classify", "fuse"))
    assert receiver.trace(untraced) == []
    assert "/healthz" not in {span.attributes.get("http.route") for span in receiver.spans}  # probes: untraced
