"""Following one request: every gateway response carries an X-Request-ID (the caller's when well-formed), error
bodies and the Triton request carry the same ID, and the gateway writes one access-log line per request that never
holds an image, an API key or Triton's key."""

from __future__ import annotations

import json
import re
import time

import httpx
import pytest
from support.gateway import start_gateway

from server.gateway.triton_http import classification_request

API_KEY = "access-log-test-api-key"
TRITON_KEY = "access-log-test-triton-key-0123"
MARKER = b"NOT-AN-IMAGE-BUT-PRIVATE-BYTES-4711"

pytest_plugins = ("support.gateway",)


@pytest.fixture(scope="module")
def keyed_gateway(triton, tmp_path_factory):
    server = start_gateway(tmp_path_factory, [triton.http_url], "--api-key", API_KEY, wait_ready=True,
                           env={"VGG_TRITON_KEY": TRITON_KEY})
    yield server
    server.stop()


def access_lines(gateway, *wanted: str) -> list[dict]:
    """The access log's lines, once the ``wanted`` request IDs are among them: a line is written after its response
    is sent, so it may land a moment after the client has its answer."""
    deadline = time.monotonic() + 10
    while True:
        lines = [json.loads(line) for line in gateway.log_path.read_text(errors="replace").splitlines()
                 if line.startswith("{") and '"request_id"' in line]
        if set(wanted) <= {line["request_id"] for line in lines} or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def classify(gateway, content: bytes, headers: dict[str, str] | None = None, **params: str) -> httpx.Response:
    return httpx.post(gateway.url + "/v1/classify", content=content, params=params, timeout=60,
                      headers={"Authorization": f"Bearer {API_KEY}", "content-type": "image/jpeg", **(headers or {})})


def test_every_response_carries_a_request_id_and_keeps_a_well_formed_one(keyed_gateway, sample_images):
    new = httpx.get(keyed_gateway.url + "/healthz", timeout=10).headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", new)
    kept = classify(keyed_gateway, sample_images["china_500x333.jpg"], {"X-Request-ID": "client-7.run:42"})
    assert kept.status_code == 200 and kept.headers["x-request-id"] == "client-7.run:42"
    for bad in ("has spaces in it", "x" * 200, "quote\"d"):
        replaced = httpx.get(keyed_gateway.url + "/healthz", headers={"X-Request-ID": bad}, timeout=10)
        assert re.fullmatch(r"[0-9a-f]{32}", replaced.headers["x-request-id"]), bad
    unauthorized = httpx.get(keyed_gateway.url + "/v1/pipelines", timeout=10)  # refused requests are followed too
    assert unauthorized.status_code == 401 and unauthorized.headers["x-request-id"]


def test_error_bodies_carry_the_same_id(keyed_gateway):
    refused = classify(keyed_gateway, MARKER, {"X-Request-ID": "bad-image-1"})
    assert refused.status_code == 422
    assert refused.json()["error"]["request_id"] == "bad-image-1" == refused.headers["x-request-id"]
    assert refused.json()["error"]["code"] == "invalid_image"


def test_one_access_log_line_per_request_with_what_happened(keyed_gateway, sample_images):
    image = sample_images["coffee_600x400.webp"]
    classify(keyed_gateway, image, {"X-Request-ID": "logged-ok"}, pipeline="fusion")
    classify(keyed_gateway, MARKER, {"X-Request-ID": "logged-bad"}, pipeline="fast")
    lines = {line["request_id"]: line for line in access_lines(keyed_gateway, "logged-ok", "logged-bad")}
    ok, bad = lines["logged-ok"], lines["logged-bad"]
    assert (ok["route"], ok["pipeline"], ok["status"], ok["error_code"]) == ("/v1/classify", "fusion", 200, "")
    assert ok["bytes_in"] == len(image) and 0 < ok["triton_ms"] <= ok["gateway_ms"]
    assert (bad["status"], bad["error_code"], bad["pipeline"]) == (422, "invalid_image", "fast")
    assert set(ok) == {"time", "request_id", "trace_id", "method", "route", "pipeline", "stage", "status",
                       "error_code", "bytes_in", "gateway_ms", "triton_ms"}
    assert ok["trace_id"] == ""  # tracing is off here (tests/test_tracing.py has it on)


def test_the_logs_never_hold_images_or_keys(keyed_gateway):
    classify(keyed_gateway, MARKER)
    text = keyed_gateway.log_path.read_bytes()
    for secret in (API_KEY.encode(), TRITON_KEY.encode(), MARKER):
        assert secret not in text, secret


def test_the_access_log_can_be_plain_text_or_off(triton, tmp_path_factory):
    for form in ("text", "off"):
        server = start_gateway(tmp_path_factory, [triton.http_url], "--access-log", form, wait_ready=True)
        try:
            httpx.get(server.url + "/healthz", headers={"X-Request-ID": f"plain-{form}"}, timeout=10)
        finally:
            server.stop()
        log = server.log_path.read_text()
        assert (f"plain-{form}" in log) == (form == "text") and '"request_id"' not in log, log[-500:]


def test_the_triton_request_carries_the_id():
    body, header_length = classification_request("image", "probs", b"\xff\xd8", 3, (), "req-9")
    assert json.loads(body[:header_length])["id"] == "req-9"
    plain, plain_length = classification_request("image", "probs", b"\xff\xd8", 3)
    assert "id" not in json.loads(plain[:plain_length])


def test_the_client_sdk_and_client_score_carry_the_id(gateway, sample_images, tmp_path):
    import csv
    import subprocess
    import sys

    from client import Client, ClientError

    with Client(gateway.url) as client:
        result = client.classify(sample_images["china_500x333.jpg"], top_k=1, pipeline="fast")
        assert result.request_id and re.fullmatch(r"[0-9a-f]{32}", result.request_id)
        with pytest.raises(ClientError) as refused:
            client.classify(MARKER, pipeline="fast")
        assert refused.value.request_id and refused.value.request_id != result.request_id
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "photo.jpg").write_bytes(sample_images["china_500x333.jpg"])
    (folder / "broken.jpg").write_bytes(MARKER)
    out = tmp_path / "scores.csv"
    subprocess.run([sys.executable, "-m", "client", "--url", gateway.url, "score", str(folder), "-o", str(out),
                    "--pipeline", "fast"], capture_output=True, timeout=120)
    rows = list(csv.DictReader(out.open()))
    assert {row["status"] for row in rows} == {"ok", "error"}
    ids = [row["request_id"] for row in rows]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids) and len(set(ids)) == 2
    logged = {line["request_id"] for line in access_lines(gateway, *ids)}
    assert set(ids) <= logged  # each row leads to its line in the gateway's access log


def test_a_csv_from_an_older_client_is_rewritten_before_rows_are_appended(tmp_path):
    from client.output import CSV_FIELDS, ResultFile

    old = tmp_path / "old.csv"
    old.write_text(",".join(CSV_FIELDS[:-1]) + "\n" + "a.jpg,ok,fast,7,7,0.9,,,,,\n")
    file = ResultFile(old)
    assert file.resume() == {"a.jpg"}
    assert old.read_text().splitlines()[0] == ",".join(CSV_FIELDS)
