"""Faults under load, on the real `python -m server.serve` (Triton, its stub healer and supervisor, the gateway):
a killed step heals, a frozen step is replaced, a killed Triton comes back, and nothing is left behind.

The load is a few clients classifying a photo through the gateway; each test injects its fault while it runs and
checks the answers before, during and after. Time limits are generous: they bound a recovery, not a benchmark.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import httpx
import pytest
from conftest import TESTS

from bench.faults import PROJECT_ROOT, Load, ServeProcess, wait_until
from server.repository import main as repository_main

API_KEY = "fault-tests-api-key"
HEADERS = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def serve(triton_repository, tmp_path_factory):
    """make serve's command with the gateway on every address (API keys on), Triton left on loopback."""
    repository = tmp_path_factory.mktemp("faults") / "repository"
    shutil.copytree(triton_repository, repository)
    process = ServeProcess(repository, tmp_path_factory.mktemp("serve") / "serve.log", "--address", "0.0.0.0",
                           env={"VGG_GATEWAY_API_KEYS": API_KEY})
    process.repository = repository
    process.start(HEADERS)
    yield process
    process.stop()


@pytest.fixture
def load(serve, sample_images):
    running = Load(serve.url, sample_images["china_500x333.jpg"], ["fast", "fusion"], clients=3,
                   headers=HEADERS).start()
    yield running
    running.stop()


def served_since(load: Load, start: float, count: int = 20) -> bool:
    return sum(o.status == 200 for o in load.between(start)) >= count


def test_triton_binds_loopback_when_the_gateway_binds_every_address(serve):
    listening = [line.split()[3] for line in os.popen("ss -ltnH").read().splitlines()]
    for name in ("http", "grpc"):
        port = serve.ports[name]
        bound = [address for address in listening if address.rsplit(":", 1)[1] == str(port)]
        assert bound and all(a.startswith(("127.0.0.1:", "[::ffff:127.0.0.1]:")) for a in bound), (name, bound)
    gateway = [a for a in listening if a.rsplit(":", 1)[1] == str(serve.ports["gateway"])]
    assert gateway == [f"0.0.0.0:{serve.ports['gateway']}"], gateway


def test_a_killed_step_heals_and_no_request_fails_after(serve, load):
    assert wait_until(lambda: served_since(load, 0), 60)
    victim = serve.stubs("preprocess")[0]  # one of two: the other serves meanwhile
    killed_at = time.monotonic()
    os.kill(victim.pid, signal.SIGKILL)
    assert wait_until(lambda: "preprocess reloaded" in serve.output(), 30), serve.output()[-2000:]
    healed_at = time.monotonic()
    assert wait_until(lambda: served_since(load, healed_at + 0.5, 40), 60)
    window = load.between(killed_at, killed_at + 10)
    failed = [o for o in window if o.status != 200]
    assert len(failed) <= max(1, len(window) // 100), Load.statuses(window)
    after = load.between(healed_at + 0.5)
    assert after and all(o.status == 200 for o in after), Load.statuses(after)
    assert victim.pid not in {s.pid for s in serve.stubs()}
    assert wait_until(lambda: len(serve.stubs("preprocess")) == 2, 30), serve.stubs("preprocess")


def test_a_frozen_step_is_killed_and_replaced(serve, load):
    assert wait_until(lambda: served_since(load, 0), 60)
    (victim,) = serve.stubs("fuse")  # the only one: every pipeline waits on it
    frozen_at = time.monotonic()
    os.kill(victim.pid, signal.SIGSTOP)
    assert wait_until(lambda: victim.pid not in {s.pid for s in serve.stubs()}, 30), serve.output()[-2000:]
    assert wait_until(lambda: "fuse reloaded" in serve.output(), 30), serve.output()[-2000:]
    healed_at = time.monotonic()
    assert wait_until(lambda: served_since(load, healed_at + 0.5, 40), 60)
    during = load.between(frozen_at, healed_at)
    assert all(o.status in (200, 504) for o in during), Load.statuses(during)
    after = load.between(healed_at + 0.5)
    assert after and all(o.status == 200 for o in after), Load.statuses(after)
    assert not [s for s in serve.stubs() if s.state in "Tt"]


def test_restricted_triton_refuses_calls_without_its_key(serve):
    key = serve.key_file.read_text().strip()
    assert oct(serve.key_file.stat().st_mode & 0o777) == "0o600"
    base = f"http://{serve.triton_url}"
    assert httpx.get(f"{base}/v2/health/ready").status_code == 200  # health stays open
    for method, path in (("POST", "/v2/repository/index"), ("GET", "/v2/models/fast/config"),
                         ("GET", "/v2/models/fast"), ("POST", "/v2/repository/models/fast/unload"),
                         ("POST", "/v2/repository/models/preprocess/load"), ("POST", "/v2/models/fast/infer"),
                         ("GET", "/v2/models/stats")):
        refused = httpx.request(method, base + path, content=b"{}")
        assert refused.status_code == 403 and "restricted" in refused.text, (path, refused.text)
    index = httpx.post(f"{base}/v2/repository/index", content=b"{}", headers={"vgg-triton-key": key})
    assert index.status_code == 200 and {m["name"] for m in index.json()} >= {"fast", "fusion"}
    assert httpx.get(f"{base}/v2/models/fast/ready").status_code == 200


def test_direct_mode_needs_and_uses_the_key(serve, sample_images):
    from client import Client, ClientError

    url = f"grpc://127.0.0.1:{serve.ports['grpc']}"
    with Client(url, triton_key=serve.key_file.read_text().strip()) as client:
        assert client.classify(sample_images["china_500x333.jpg"], top_k=2, pipeline="fast").pipeline == "fast"
    with Client(url) as client, pytest.raises(ClientError) as refused:
        client.classify(sample_images["china_500x333.jpg"], pipeline="fast")
    assert refused.value.status == 401 and refused.value.code == "unauthorized", refused.value


def test_a_killed_triton_comes_back_with_what_it_served_and_a_new_folder_stays_unloaded(serve, load, tmp_path,
                                                                                         sample_images):
    """Including a pipeline added with `--apply` since the start: it comes back with the rest."""
    assert wait_until(lambda: served_since(load, 0), 60)
    spec = tmp_path / "spec.toml"
    added = '\n[pipelines.applied]\nmembers = ["vgg_a"]\nscales = [64]\n'
    spec.write_text((TESTS / "pipelines.toml").read_text() + added)
    assert repository_main(["--spec", str(spec), "--repository", str(serve.repository), "--apply",
                            serve.triton_url, "--triton-key-file", str(serve.key_file)]) == 0
    assert wait_until(lambda: "a restart now loads applied" in serve.output(), 30), serve.output()[-2000:]
    shutil.copytree(serve.repository / "vgg_a", serve.repository / "intruder")
    old_pid = serve.triton_pid()
    old_stubs = {s.pid for s in serve.stubs()}
    killed_at = time.monotonic()
    os.kill(old_pid, signal.SIGKILL)
    assert wait_until(lambda: httpx.get(serve.url + "/readyz", timeout=5).status_code == 503, 30)
    assert httpx.get(serve.url + "/healthz", timeout=5).status_code == 200  # the gateway stayed up
    assert wait_until(lambda: serve.ready(HEADERS), 180), serve.output()[-3000:]
    back_at = time.monotonic()
    assert serve.triton_pid() not in (None, old_pid)
    assert "tritonserver exited unexpectedly" in serve.output()
    assert wait_until(lambda: "tritonserver is back" in serve.output(), 30), serve.output()[-2000:]
    assert wait_until(lambda: served_since(load, back_at + 1, 20), 60)
    outage = load.between(killed_at, back_at)
    assert {o.status for o in outage} <= {200, 503}, Load.statuses(outage)
    assert {o.code for o in outage if o.status == 503} <= {"triton_unavailable"}, Load.statuses(outage)
    assert all(o.status == 200 for o in load.between(back_at + 1)), Load.statuses(load.between(back_at + 1))
    assert not old_stubs & {s.pid for s in serve.stubs()}
    key = {"vgg-triton-key": serve.key_file.read_text().strip()}
    index = httpx.post(f"http://{serve.triton_url}/v2/repository/index", content=b"{}", headers=key).json()
    states = {m["name"]: m.get("state") for m in index}
    assert states["intruder"] != "READY" and states["applied"] == "READY", index
    assert httpx.get(f"http://{serve.triton_url}/v2/models/intruder/ready").status_code != 200
    answer = httpx.post(serve.url + "/v1/classify", params={"pipeline": "applied"}, timeout=60,
                        headers={**HEADERS, "content-type": "image/jpeg"}, content=sample_images["china_500x333.jpg"])
    assert answer.status_code == 200, answer.text


def test_a_killed_gateway_comes_back_while_triton_keeps_running(serve):
    triton, gateway = serve.triton_pid(), serve.gateway_pid()
    os.kill(gateway, signal.SIGKILL)
    assert wait_until(lambda: "serve: the gateway is back" in serve.output(), 120), serve.output()[-2000:]
    assert serve.gateway_pid() not in (None, gateway) and serve.ready(HEADERS)
    assert "serve: the gateway exited unexpectedly (status -9)" in serve.output()
    assert serve.triton_pid() == triton


def test_stopping_leaves_no_stub_or_shared_memory_behind(serve):
    assert serve.stubs() and serve.shared_memory()
    assert serve.stop() == 0
    assert serve.stubs() == [] and serve.shared_memory() == []


def test_exposing_triton_without_a_key_is_refused_in_one_line(tmp_path):
    for module in ("server.serve", "server.triton_launcher"):
        refused = subprocess.run([sys.executable, "-m", module, "--repository", str(tmp_path),
                                  "--triton-address", "0.0.0.0"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                                 env={k: v for k, v in os.environ.items() if not k.startswith("VGG_TRITON_KEY")},
                                 timeout=60)
        assert refused.returncode == 2, (module, refused.stderr)
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1 and "--triton-address 0.0.0.0" in lines[0] and "key" in lines[0], lines


def test_a_triton_that_cannot_start_again_is_given_up_on(triton_repository, tmp_path):
    repository = tmp_path / "repository"
    shutil.copytree(triton_repository, repository)
    serve = ServeProcess(repository, tmp_path / "serve.log").start()
    try:
        (repository / "vgg_a" / "1" / "model.onnx").write_bytes(b"not an onnx model")  # every restart fails
        os.kill(serve.triton_pid(), signal.SIGKILL)
        assert serve.process.wait(240) == 1, serve.output()[-3000:]
    finally:
        serve.stop()
    output = serve.output()
    assert output.count("tritonserver exited unexpectedly") == 1 and output.count("did not start") == 2, output
    errors = [line for line in output.splitlines() if line.startswith("serve: error:")]
    assert len(errors) == 1 and "tritonserver failed to start 3 times in a row; giving up:" in errors[0], output
    assert "vgg_a" in errors[0], errors
    assert serve.stubs() == [] and serve.shared_memory() == []


def test_the_soak_reports_each_fault_and_leaves_nothing_behind(triton_repository, tmp_path):
    out = tmp_path / "soak.md"
    subprocess.run([sys.executable, "-m", "bench.soak", "--repository", str(triton_repository), "--minutes", "0.75",
                    "--clients", "2", "--faults", "stub,hang,step-hang", "--every", "12", "--warm-up", "5",
                    "--out", str(out)], cwd=PROJECT_ROOT, check=True, capture_output=True, timeout=400)
    text = out.read_text()
    faults = [line.split(" | ") for line in text.splitlines() if line.startswith(("| stub |", "| hang |",
                                                                                  "| step-hang |"))]
    assert len(faults) >= 3 and [f[0] for f in faults] == ["| stub", "| hang", "| step-hang"][: len(faults)], text
    assert all(f[2].endswith(" s") and not f[2].startswith("NOT") for f in faults), text
    assert all(f[6] == "0 |" for f in faults), text  # nothing fails once the service has recovered
    assert "422 invalid_image (corrupt file)" in text and "| gateway |" in text, text
    assert "After the stop: 0 stub processes and 0 shared-memory regions left behind." in text
