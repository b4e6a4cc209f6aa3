"""The gateway over real Triton: every endpoint, every limit and error, auth, metrics, OpenAPI.

Real processes throughout: Triton from the session fixture, the gateway in a uvicorn subprocess, httpx over loopback.
"""

from __future__ import annotations

import io
import json
import socket
import struct
import subprocess
import sys
import threading
import zlib

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from conftest import NUM_CLASSES, TESTS
from PIL import Image
from support.gateway import (
    PROJECT_ROOT,
    HeldRequest,
    assert_error,
    free_port,
    metric_value,
    start_gateway,
    wait_for_metric,
)

from server.gateway.pipeline_health import canary_image
from server.spec_file import load_spec

pytest_plugins = ("support.gateway",)
SPEC = load_spec(TESTS / "pipelines.toml")
CONTENT_TYPES = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp", "bmp": "image/bmp"}
TIMEOUT = 60


def content_type(name: str) -> str:
    return CONTENT_TYPES[name.rsplit(".", 1)[1]]


def triton_probs(triton, pipeline: str, data: bytes) -> np.ndarray:
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    tensor = grpcclient.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([data], dtype=np.object_))
    return client.infer(pipeline, [tensor]).as_numpy("probs")


def png(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buffer, "PNG")
    return buffer.getvalue()


def png_bomb(width: int, height: int) -> bytes:
    """A tiny PNG declaring a huge canvas: the decompression-bomb signature."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def limited_gateway(triton, tmp_path_factory):
    """Small limits, so the limit paths run with small inputs."""
    server = start_gateway(tmp_path_factory, [triton.http_url], "--max-body-bytes", "100000",
                           "--max-batch-files", "2", "--max-inflight", "1", "--max-queue", "1",
                           "--queue-timeout-s", "0.5", "--body-timeout-s", "2", wait_ready=True)
    yield server
    server.stop()


# --- classify -----------------------------------------------------------------------------------------------------

def test_classify_multipart_matches_triton(gateway, triton, sample_images):
    for name, data in sample_images.items():
        response = httpx.post(gateway.url + "/v1/classify", files={"file": (name, data, content_type(name))},
                              params={"top_k": 3}, timeout=TIMEOUT)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["pipeline"] == "fast" and body["models"] == {"vgg_d": "1"} and body["timing_ms"] > 0
        probs = triton_probs(triton, "fast", data)
        expected = np.argsort(-probs)[:3]
        assert [p["index"] for p in body["predictions"]] == list(expected), name
        assert [p["label"] for p in body["predictions"]] == [f"digit_{i}" for i in expected]
        np.testing.assert_allclose([p["score"] for p in body["predictions"]], probs[expected], atol=1e-5)


def test_classify_raw_body_and_pipeline_choice(gateway, triton, sample_images):
    data = sample_images["coffee_600x400.webp"]
    response = httpx.post(gateway.url + "/v1/classify", params={"pipeline": "fusion", "top_k": NUM_CLASSES},
                          content=data, headers={"content-type": "image/webp"}, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["pipeline"] == "fusion"
    assert body["models"] == {"vgg_a": "1", "vgg_d": "1", "vgg_e": "1"}
    scores = [p["score"] for p in body["predictions"]]
    assert len(scores) == NUM_CLASSES and scores == sorted(scores, reverse=True)
    assert abs(sum(scores) - 1) < 1e-4
    probs = triton_probs(triton, "fusion", data)
    np.testing.assert_allclose(scores, np.sort(probs)[::-1], atol=1e-5)


def test_every_pipeline_takes_the_canary_image(gateway):
    """What the gateway sends a degraded pipeline to learn whether it heals must never be refused itself."""
    for name in SPEC.pipelines:
        response = httpx.post(gateway.url + "/v1/classify", params={"pipeline": name}, content=canary_image(),
                              headers={"content-type": "image/png"}, timeout=TIMEOUT)
        assert response.status_code == 200, (name, response.text)


def test_raw_body_route_answers_exactly_like_the_multipart_route(gateway, sample_images):
    """Raw bodies are served by server/gateway/raw_body.py, multipart by the FastAPI route: same answers."""
    for name, data in sample_images.items():
        raw = httpx.post(gateway.url + "/v1/classify", params={"pipeline": "multiscale", "top_k": 4}, content=data,
                         headers={"content-type": content_type(name)}, timeout=TIMEOUT)
        form = httpx.post(gateway.url + "/v1/classify", params={"pipeline": "multiscale", "top_k": 4},
                          files={"file": (name, data, content_type(name))}, timeout=TIMEOUT)
        assert raw.status_code == form.status_code == 200, (raw.text, form.text)
        assert raw.headers["content-type"] == form.headers["content-type"]
        raw_body, form_body = raw.json(), form.json()
        assert raw_body.keys() == form_body.keys()
        for key in raw_body.keys() - {"timing_ms"}:
            assert raw_body[key] == form_body[key], key


def test_octet_stream_is_accepted_and_top_k_is_clamped_to_the_classes(gateway, sample_images):
    response = httpx.post(gateway.url + "/v1/classify", params={"top_k": 500},
                          content=sample_images["china_500x333.jpg"],
                          headers={"content-type": "application/octet-stream"}, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"]) == NUM_CLASSES


@pytest.mark.parametrize(("params", "where"), [({"top_k": 0}, "top_k"), ({"top_k": "many"}, "top_k"),
                                               ({"top_k": 10**6}, "top_k")])
def test_bad_parameters(gateway, sample_images, params, where):
    response = httpx.post(gateway.url + "/v1/classify", params=params, content=sample_images["china_500x333.jpg"],
                          headers={"content-type": "image/jpeg"}, timeout=TIMEOUT)
    assert where in assert_error(response, 422, "invalid_request")["message"]


def test_a_repeated_parameter_is_refused_not_guessed(gateway, sample_images):
    for how in ({"content": sample_images["china_500x333.jpg"], "headers": {"content-type": "image/jpeg"}},
                {"files": {"file": ("a.jpg", sample_images["china_500x333.jpg"], "image/jpeg")}}):
        response = httpx.post(gateway.url + "/v1/classify?top_k=1&top_k=2", timeout=TIMEOUT, **how)
        assert "'top_k' is given more than once" in assert_error(response, 422, "invalid_request")["message"]


def raw_exchange(url: str, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Bytes no HTTP client library would send, and the answer: (status, headers, body)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(request)
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


@pytest.mark.parametrize("request_line", [
    b"GET /v1/pipelines?pipeline=" + b"x" * 200_000 + b" HTTP/1.1",  # past the parser's URL limit
    "POST /v1/classify?pipeline=élève HTTP/1.1".encode(),  # raw, not percent-encoded, UTF-8 in the URL
    b"NOT HTTP AT ALL",
])
def test_unparseable_requests_get_the_json_error_shape(gateway, sample_images, request_line):
    status, headers, body = raw_exchange(gateway.url, request_line + b"\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    assert status == 400 and headers["content-type"] == "application/json"
    assert json.loads(body)["error"]["code"] == "bad_request"
    ok = httpx.post(gateway.url + "/v1/classify", content=sample_images["china_500x333.jpg"],
                    headers={"content-type": "image/jpeg"}, timeout=TIMEOUT)
    assert ok.status_code == 200


def test_unknown_pipeline_is_404(gateway, sample_images):
    response = httpx.post(gateway.url + "/v1/classify", params={"pipeline": "nope"},
                          content=sample_images["china_500x333.jpg"], headers={"content-type": "image/jpeg"})
    assert "fast" in assert_error(response, 404, "unknown_pipeline")["message"]


@pytest.mark.parametrize(("headers", "files"), [
    ({"content-type": "text/plain"}, None),
    ({"content-type": "image/svg+xml"}, None),
    ({}, None),
    (None, {"file": ("a.txt", b"hello", "text/plain")}),
])
def test_unsupported_media_type_is_415(gateway, headers, files):
    if files:
        response = httpx.post(gateway.url + "/v1/classify", files=files)
    else:
        response = httpx.post(gateway.url + "/v1/classify", content=b"hello", headers=headers)
    message = assert_error(response, 415, "unsupported_media_type")["message"]
    assert message.startswith("no content type") if headers == {} else "is not a supported image type" in message


def test_a_malformed_multipart_body_is_400(gateway):
    response = httpx.post(gateway.url + "/v1/classify", content=b"no boundary anywhere",
                          headers={"content-type": "multipart/form-data; boundary=xyz"})
    message = assert_error(response, 400, "invalid_form")["message"]
    assert message.startswith("malformed multipart form: ") and "400:" not in message


BAD_IMAGES = {
    "garbage": (b"definitely not an image " * 20, 422, "invalid_image"),
    "empty": (b"", 422, "invalid_image"),
    "truncated": (png((300, 200))[:60], 422, "invalid_image"),
    "too small": (png((8, 8)), 422, "image_too_small"),
    "decompression bomb": (png_bomb(30000, 30000), 413, "image_too_large"),
}


@pytest.mark.parametrize("case", list(BAD_IMAGES))
def test_bad_images_map_to_clear_errors(gateway, sample_images, case):
    data, status, code = BAD_IMAGES[case]
    response = httpx.post(gateway.url + "/v1/classify", files={"file": ("x.png", data, "image/png")},
                          timeout=TIMEOUT)
    assert_error(response, status, code)
    ok = httpx.post(gateway.url + "/v1/classify", content=sample_images["china_500x333.jpg"],
                    headers={"content-type": "image/jpeg"}, timeout=TIMEOUT)
    assert ok.status_code == 200


def test_missing_file_field_and_several_files(gateway, sample_images):
    response = httpx.post(gateway.url + "/v1/classify", data={"other": "x"},
                          files={"not_file": ("a.jpg", b"x", "image/jpeg")})
    assert_error(response, 422, "missing_file")
    two = [("file", ("a.jpg", sample_images["china_500x333.jpg"], "image/jpeg"))] * 2
    assert_error(httpx.post(gateway.url + "/v1/classify", files=two), 413, "too_many_files")


# --- batch --------------------------------------------------------------------------------------------------------

def test_batch_returns_one_entry_per_file_in_order(gateway, sample_images):
    names = list(sample_images)
    files = [("file", (name, sample_images[name], content_type(name))) for name in names[:2]]
    files += [("file", ("bad.png", b"garbage bytes", "image/png")), ("file", ("notes.txt", b"text", "text/plain"))]
    files += [("file", (name, sample_images[name], content_type(name))) for name in names[2:]]
    response = httpx.post(gateway.url + "/v1/classify/batch", files=files, params={"pipeline": "multiscale",
                                                                                  "top_k": 2}, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["pipeline"] == "multiscale"
    results = body["results"]
    assert [r["index"] for r in results] == list(range(len(files)))
    assert [r["filename"] for r in results] == [f[1][0] for f in files]
    assert [r["status"] for r in results] == [200, 200, 422, 415] + [200] * (len(names) - 2)
    assert results[2]["error"]["code"] == "invalid_image" and results[2]["result"] is None
    assert results[3]["error"]["code"] == "unsupported_media_type"
    for entry in results:
        if entry["status"] != 200:
            continue
        single = httpx.post(gateway.url + "/v1/classify", params={"pipeline": "multiscale", "top_k": 2},
                            files={"file": (entry["filename"], sample_images[entry["filename"]])}, timeout=TIMEOUT)
        assert entry["result"]["predictions"] == single.json()["predictions"]


def test_batch_limits(limited_gateway, sample_images):
    three = [("file", ("a.png", png((80, 80)), "image/png"))] * 3
    assert_error(httpx.post(limited_gateway.url + "/v1/classify/batch", files=three), 413, "too_many_files")
    big = np.random.default_rng(0).integers(0, 255, (300, 300, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(big).save(buffer, "PNG")
    assert len(buffer.getvalue()) > 100_000
    assert_error(httpx.post(limited_gateway.url + "/v1/classify/batch", files={"file": ("a.png", buffer.getvalue())}),
                 413, "payload_too_large")


# --- limits -------------------------------------------------------------------------------------------------------

def test_body_over_the_limit_is_413(limited_gateway):
    response = httpx.post(limited_gateway.url + "/v1/classify", content=b"\xff\xd8\xff" + b"\0" * 150_000,
                          headers={"content-type": "image/jpeg"})
    assert_error(response, 413, "payload_too_large")

    def chunks():  # no Content-Length: the limit is enforced while reading
        for _ in range(20):
            yield b"\0" * 10_000
    response = httpx.post(limited_gateway.url + "/v1/classify", content=chunks(),
                          headers={"content-type": "image/jpeg"})
    assert_error(response, 413, "payload_too_large")


def test_bounded_queue_refuses_with_429_then_503_and_retry_after(limited_gateway, sample_images):
    data = sample_images["china_500x333.jpg"]
    held = HeldRequest(limited_gateway.url, data)  # takes the only service slot
    wait_for_metric(limited_gateway.url, "vgg_gateway_active_requests", 1)
    queued: dict[str, httpx.Response] = {}
    waiter = threading.Thread(target=lambda: queued.update(r=httpx.post(
        limited_gateway.url + "/v1/classify", content=data, headers={"content-type": "image/jpeg"}, timeout=30)))
    waiter.start()  # takes the only queue place, and times out there
    wait_for_metric(limited_gateway.url, "vgg_gateway_queued_requests", 1)
    full = httpx.post(limited_gateway.url + "/v1/classify", content=data, headers={"content-type": "image/jpeg"})
    assert_error(full, 429, "overloaded")
    assert full.headers["retry-after"] == "1"
    waiter.join(30)
    assert_error(queued["r"], 503, "queue_timeout")
    assert queued["r"].headers["retry-after"] == "1"
    released = held.finish()
    assert released.status_code == 200, released.text
    assert metric_value(limited_gateway.url, "vgg_gateway_requests_total", status="429") == 1
    assert metric_value(limited_gateway.url, "vgg_gateway_requests_total", status="503") == 1


def test_slow_body_is_408(limited_gateway, sample_images):
    held = HeldRequest(limited_gateway.url, sample_images["china_500x333.jpg"], hold_s=3)
    assert_error(held.finish(release=False), 408, "request_timeout")  # --body-timeout-s 2


def test_triton_timeout_is_504(triton, tmp_path_factory, sample_images):
    server = start_gateway(tmp_path_factory, [triton.http_url], "--triton-timeout-s", "0.001", wait_ready=True)
    try:
        response = httpx.post(server.url + "/v1/classify", params={"pipeline": "fusion"},
                              content=sample_images["rocket_1000x224.png"], headers={"content-type": "image/png"},
                              timeout=TIMEOUT)
        assert_error(response, 504, "triton_timeout")
        assert metric_value(server.url, "vgg_gateway_triton_errors_total", code="timeout") >= 1
        # the timed-out call was left to finish, never cancelled in Triton (cancellation crashes Triton 2.51)
        wait_for_metric(server.url, "vgg_gateway_abandoned_triton_calls", 0)
        ok = httpx.get(server.url + "/readyz", timeout=TIMEOUT)
        assert ok.status_code == 200, ok.text
    finally:
        server.stop()


def test_triton_down_is_503_and_not_ready(tmp_path_factory, sample_images):
    server = start_gateway(tmp_path_factory, [f"127.0.0.1:{free_port()}"])
    try:
        assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}
        ready = httpx.get(server.url + "/readyz")
        assert "0/1" in assert_error(ready, 503, "not_ready")["message"]
        response = httpx.post(server.url + "/v1/classify", content=sample_images["china_500x333.jpg"],
                              headers={"content-type": "image/jpeg"}, timeout=TIMEOUT)
        assert_error(response, 503, "triton_unavailable")
        assert response.headers["retry-after"]
        assert_error(httpx.get(server.url + "/v1/pipelines"), 503, "triton_unavailable")
    finally:
        server.stop()


# --- metadata, health, metrics, OpenAPI ---------------------------------------------------------------------------

def test_pipelines_are_read_from_triton(gateway):
    body = httpx.get(gateway.url + "/v1/pipelines").json()
    assert body["default"] == "fast"
    served = {p["name"]: p for p in body["pipelines"]}
    assert set(served) == set(SPEC.pipelines)
    for name, spec in SPEC.pipelines.items():
        info = served[name]
        assert info["members"] == list(spec.members)
        assert info["scales"] == list(spec.scales)
        assert info["mode"] == spec.mode and info["flips"] == spec.flips
        assert info["num_classes"] == NUM_CLASSES
        assert info["versions"] == {m: "1" for m in spec.members}
        assert info["default"] == (name == "fast")
        np.testing.assert_allclose(info["weights"], spec.member_weights())


def test_health_and_readiness(gateway):
    assert httpx.get(gateway.url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(gateway.url + "/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert body["status"] == "ready" and all(body["pipelines"].values()) and set(body["pipelines"]) == set(
        SPEC.pipelines)


def test_metrics_count_requests_latency_and_triton_errors(gateway, sample_images):
    before = metric_value(gateway.url, "vgg_gateway_requests_total", route="/v1/classify", pipeline="fast",
                          status="200")
    errors_before = metric_value(gateway.url, "vgg_gateway_triton_errors_total", code="invalid_argument")
    httpx.post(gateway.url + "/v1/classify", content=sample_images["china_500x333.jpg"],
               headers={"content-type": "image/jpeg"}, timeout=TIMEOUT)
    httpx.post(gateway.url + "/v1/classify", content=b"garbage", headers={"content-type": "image/jpeg"})
    assert metric_value(gateway.url, "vgg_gateway_requests_total", route="/v1/classify", pipeline="fast",
                        status="200") == before + 1
    assert metric_value(gateway.url, "vgg_gateway_request_duration_seconds_count", route="/v1/classify",
                        pipeline="fast", status="422") >= 1
    assert metric_value(gateway.url, "vgg_gateway_triton_errors_total", code="invalid_argument") == errors_before + 1
    text = httpx.get(gateway.url + "/metrics").text
    for name in ("vgg_gateway_in_flight_requests", "vgg_gateway_queued_requests", "vgg_gateway_triton_endpoint_up",
                 "vgg_gateway_triton_duration_seconds_bucket", "vgg_gateway_images_total"):
        assert name in text


def test_openapi_documents_the_real_models(gateway):
    schema = httpx.get(gateway.url + "/openapi.json").json()
    classify = schema["paths"]["/v1/classify"]["post"]
    assert classify["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("ClassifyResponse")
    assert classify["responses"]["413"]["content"]["application/json"]["schema"]["$ref"].endswith("ErrorResponse")
    assert {"multipart/form-data", "image/jpeg", "image/png"} <= set(classify["requestBody"]["content"])
    names = {p["name"] for p in classify["parameters"]}
    assert names == {"pipeline", "top_k", "maps"}
    components = schema["components"]["schemas"]
    assert set(components["ClassifyResponse"]["properties"]) == {"predictions", "pipeline", "models", "timing_ms",
                                                                 "maps", "stage", "stages"}
    assert {"views", "fused", "classes"} <= set(components["ScoreMaps"]["properties"])
    assert {"BatchResponse", "PipelinesResponse", "ReadyResponse"} <= set(components)
    assert httpx.get(gateway.url + "/docs").status_code == 200


def test_unknown_routes_and_methods_use_the_error_shape(gateway):
    assert_error(httpx.get(gateway.url + "/v1/nothing"), 404, "not_found")
    assert_error(httpx.get(gateway.url + "/v1/classify"), 405, "method_not_allowed")


# --- security -----------------------------------------------------------------------------------------------------

def test_api_keys(secured_gateway, sample_images):
    url = secured_gateway.url
    data = sample_images["china_500x333.jpg"]
    headers = {"content-type": "image/jpeg"}
    missing = httpx.post(url + "/v1/classify", content=data, headers=headers)
    assert_error(missing, 401, "unauthorized")
    assert missing.headers["www-authenticate"].startswith("Bearer")
    wrong = httpx.post(url + "/v1/classify", content=data, headers={**headers, "authorization": "Bearer nope"})
    assert_error(wrong, 401, "unauthorized")
    for key in ("key-one", "key-two"):  # the flag's key and the environment's key
        ok = httpx.post(url + "/v1/classify", content=data, headers={**headers, "authorization": f"Bearer {key}"},
                        timeout=TIMEOUT)
        assert ok.status_code == 200, ok.text
    assert_error(httpx.get(url + "/v1/pipelines"), 401, "unauthorized")
    assert_error(httpx.get(url + "/metrics"), 401, "unauthorized")
    assert httpx.get(url + "/metrics", headers={"authorization": "Bearer key-one"}).status_code == 200
    assert httpx.get(url + "/healthz").status_code == 200  # probes stay open
    assert httpx.get(url + "/readyz").status_code == 200


def run_gateway_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VGG_GATEWAY_")}
    return subprocess.run([sys.executable, "-m", "server.gateway", *args], cwd=PROJECT_ROOT, text=True,
                          capture_output=True, timeout=60, env={**clean, **(env or {})})


def test_refuses_open_non_loopback_bind(tmp_path):
    refused = run_gateway_cli("--host", "0.0.0.0", "--port", str(free_port()))
    assert refused.returncode == 2 and "refusing" in refused.stderr and "--allow-open" in refused.stderr
    from_env = run_gateway_cli(env={"VGG_GATEWAY_HOST": "192.0.2.10"})
    assert from_env.returncode == 2 and "refusing" in from_env.stderr
    keys = tmp_path / "keys"
    keys.write_text("# one per line\nsecret-a\n")
    for args in (["--api-key", "k"], ["--allow-open"], ["--api-keys-file", str(keys)]):
        checked = run_gateway_cli("--host", "0.0.0.0", *args, "--check-config")
        assert checked.returncode == 0, checked.stderr
    assert run_gateway_cli("--check-config", env={"VGG_GATEWAY_HOST": "0.0.0.0",
                                                   "VGG_GATEWAY_ALLOW_OPEN": "true"}).returncode == 0
    assert run_gateway_cli("--max-inflight", "0", "--check-config").returncode == 2


@pytest.mark.parametrize(("url", "reason"), [
    ("not a url", "is not HOST:PORT"), ("localhost:abc", "is not HOST:PORT"), ("http://:8000", "is not HOST:PORT"),
    ("127.0.0.1:0", "is not HOST:PORT"), ("http://example.com:8000/v2", "is not HOST:PORT"),
    ("https://127.0.0.1:8000", "only plain http://"),
])
def test_a_malformed_triton_url_is_refused_at_start(url, reason):
    from server.gateway.config import ConfigError, load_settings

    with pytest.raises(ConfigError, match=reason):
        load_settings(["--triton-url", "127.0.0.1:8000", "--triton-url", url], environ={})
    assert load_settings(["--triton-url", "http://triton.internal:8000/"], environ={})[0].triton_urls


def test_a_malformed_triton_url_is_one_line_and_status_2():
    refused = run_gateway_cli("--triton-url", "not a url", "--port", str(free_port()))
    assert refused.returncode == 2
    assert refused.stderr == "gateway: --triton-url 'not a url' is not HOST:PORT of Triton's HTTP endpoint " \
                             "(e.g. 127.0.0.1:8000)\n"
