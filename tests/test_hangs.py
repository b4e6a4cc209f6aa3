"""Hangs, not deaths, on the real `python -m server.serve`: a stopped (SIGSTOP) Triton and a stopped gateway are
alive to every process check, yet answer nothing; a step stuck in a computation holds its requests for ever. Each is
found and replaced while the rest keeps serving, and honest slow work is never taken for a hang.

Limits are shortened for the tests (`--hang-after-s 10`; the test-only spinner's `step.timeout_s` 3 s); the time
limits here bound a recovery, they do not benchmark it.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import threading
import time
import tomllib
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton_http
from PIL import Image

from bench.faults import Load, ServeProcess, wait_until

API_KEY = "hang-tests-api-key"
HEADERS = {"Authorization": f"Bearer {API_KEY}"}
SPINNER = Path(__file__).resolve().parent.parent / "bench" / "spinner"
HANG_AFTER_S = 10
STALL_AFTER_S = 6


@pytest.fixture(scope="module")
def serve(triton_repository, tmp_path_factory):
    repository = tmp_path_factory.mktemp("hangs") / "repository"
    shutil.copytree(triton_repository, repository)
    shutil.copytree(SPINNER, repository / "spinner")
    stuck = shutil.copytree(SPINNER, repository / "stuck")  # a spinner no step limit catches: the core stalls
    config = (stuck / "config.pbtxt").read_text().replace('name: "spinner"', 'name: "stuck"')
    (stuck / "config.pbtxt").write_text(config.replace('string_value: "3"', 'string_value: "600"'))
    process = ServeProcess(repository, tmp_path_factory.mktemp("serve") / "serve.log",
                           "--hang-after-s", str(HANG_AFTER_S), "--step-timeout-s", "30",
                           "--stall-after-s", str(STALL_AFTER_S), env={"VGG_GATEWAY_API_KEYS": API_KEY})
    process.start(HEADERS)
    yield process
    process.stop()


@pytest.fixture
def load(serve, sample_images):
    running = Load(serve.url, sample_images["china_500x333.jpg"], ["fast", "fusion"], clients=3,
                   headers=HEADERS).start()
    yield running
    running.stop()


def spinner_call(serve: ServeProcess, data: bytes, model: str = "spinner") -> tuple[float, object]:
    """(seconds, the answer or the exception) of one request to the spinner, straight to Triton with its key."""
    client = triton_http.InferenceServerClient(serve.triton_url, network_timeout=120, connection_timeout=120)
    tensor = triton_http.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([data], dtype=object))
    started = time.monotonic()
    try:
        result: object = client.infer(model, [tensor],
                                      headers={"vgg-triton-key": serve.key_file.read_text().strip()})
        result = int(result.as_numpy("length")[0])
    except Exception as exc:  # the failed-fast answer is what the test wants to see
        result = exc
    return time.monotonic() - started, result


def test_a_stuck_step_instance_is_replaced_while_the_other_answers(serve):
    before = {s.pid for s in serve.stubs("spinner")}
    assert len(before) == 2
    stuck: list[tuple[float, object]] = []
    thread = threading.Thread(target=lambda: stuck.append(spinner_call(serve, b"spin forever")))
    thread.start()
    answered = 0
    while thread.is_alive() and answered < 1000:  # the other instance answers throughout
        seconds, result = spinner_call(serve, b"honest")
        assert result == 6, result
        answered += 1
    thread.join(60)
    assert stuck, "the stuck request never returned"
    seconds, result = stuck[0]
    assert isinstance(result, Exception) and "not healthy" in str(result), result  # failed fast, retryable
    assert 3 <= seconds < 30, seconds  # past its 3 s limit, long before any client timeout
    assert answered > 0
    output = serve.output()
    assert "spinner: stub spinner_0_" in output and "past its limit of 3 s; killed it" in output, output[-2000:]
    assert wait_until(lambda: "spinner reloaded" in serve.output(), 60), serve.output()[-2000:]
    assert wait_until(lambda: len(serve.stubs("spinner")) == 2 and not before & {s.pid for s in serve.stubs("spinner")},
                      60), serve.stubs("spinner")
    assert spinner_call(serve, b"after")[1] == 5


def largest_allowed_jpeg() -> bytes:
    """At the test repository's pixel limit and the largest aspect ratio it allows: the heaviest honest request
    (smooth, so it stays under the body limit)."""
    limits = tomllib.loads((Path(__file__).parent / "pipelines.toml").read_text())["limits"]
    short = int((limits["max_pixels"] / limits["max_aspect_ratio"]) ** 0.5)
    rows, columns = np.mgrid[0:short, 0:int(short * limits["max_aspect_ratio"])]
    pixels = np.stack([rows % 256, columns % 256, (rows + columns) % 256], axis=-1).astype(np.uint8)
    image = Image.fromarray(pixels)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def test_heavy_honest_requests_are_never_taken_for_a_hang(serve):
    heavy = largest_allowed_jpeg()
    statuses: list[int] = []

    def send() -> None:
        for _ in range(2):
            statuses.append(httpx.post(serve.url + "/v1/classify?pipeline=fusion", content=heavy,
                                       headers={**HEADERS, "content-type": "image/jpeg"}, timeout=120).status_code)

    clients = [threading.Thread(target=send) for _ in range(3)]
    for client in clients:
        client.start()
    for client in clients:
        client.join(300)
    assert statuses == [200] * 6, statuses
    stuck = [line for line in serve.output().splitlines() if "held a request" in line and "spinner" not in line]
    assert not stuck, stuck  # only the spinner was ever stuck
    assert "has not answered" not in serve.output()


def test_a_stopped_triton_is_killed_and_restarted_under_load(serve, load):
    assert wait_until(lambda: sum(o.status == 200 for o in load.between(0)) >= 20, 60)
    frozen = serve.triton_pid()
    stopped_at = time.monotonic()
    os.kill(frozen, signal.SIGSTOP)
    # readiness tells the truth while the frozen Triton still stands (the gateway probes it every second; the
    # watchdog waits HANG_AFTER_S)
    assert wait_until(lambda: not serve.ready(HEADERS) and serve.triton_pid() == frozen, HANG_AFTER_S), \
        "readiness said ready while Triton was frozen"
    assert wait_until(lambda: "tritonserver has not answered" in serve.output(), HANG_AFTER_S + 30), \
        serve.output()[-2000:]
    assert wait_until(lambda: serve.ready(HEADERS), 180), serve.output()[-3000:]
    back_at = time.monotonic()
    assert serve.triton_pid() not in (None, frozen)
    assert wait_until(lambda: sum(o.status == 200 for o in load.between(back_at + 1)) >= 20, 60)
    during = load.between(stopped_at, back_at)
    assert {o.status for o in during} <= {200, 503}, Load.statuses(during)  # an answer, or a retryable 503
    after = load.between(back_at + 1)
    assert after and all(o.status == 200 for o in after), Load.statuses(after)


def test_a_triton_whose_core_completes_nothing_is_restarted(serve):
    """Alive, answering health checks, but its requests pending and none completing (both instances of `stuck` spin
    and a third request waits): a stall, found from Triton's own metrics."""
    before, line = serve.triton_pid(), "tritonserver has not answered its liveness probe"
    earlier = serve.output().count(line)  # the frozen Triton of the test before said it too
    for _ in range(3):
        threading.Thread(target=spinner_call, args=(serve, b"spin", "stuck"), daemon=True).start()
    assert wait_until(lambda: serve.output().count(line) > earlier, STALL_AFTER_S + HANG_AFTER_S + 30), \
        serve.output()[-2000:]
    assert wait_until(lambda: serve.triton_pid() not in (None, before) and serve.ready(HEADERS), 180), \
        serve.output()[-3000:]
    assert spinner_call(serve, b"after")[1] == 5


def test_a_stopped_gateway_is_killed_and_restarted(serve):
    frozen = serve.gateway_pid()
    os.kill(frozen, signal.SIGSTOP)
    assert wait_until(lambda: "the gateway has not answered" in serve.output(), HANG_AFTER_S + 30), \
        serve.output()[-2000:]
    assert wait_until(lambda: "serve: the gateway is back" in serve.output(), 120), serve.output()[-2000:]
    assert serve.gateway_pid() not in (None, frozen) and serve.ready(HEADERS)
