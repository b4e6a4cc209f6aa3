"""The CPU image, built and run under Docker as a user runs it: `docker run` with nothing but API keys serves the
default pipelines as the non-root user on a read-only root filesystem with Docker's default /dev/shm; every refusal
at start is one line before Triton starts; a mounted repository replaces the baked one; `docker stop` lets in-flight
requests finish and exits 0."""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest
from support.containers import (
    API_KEY,
    classify,
    digit_png,
    docker,
    inspect,
    logs,
    published_port,
    running,
    wait_exit,
    wait_health,
)
from support.gateway import HeldRequest, metric_value

pytest_plugins = ("support.containers",)

ROOT = Path(__file__).resolve().parent.parent

SERVE_ARGS = ("--read-only", "--tmpfs", "/tmp", "--publish", "127.0.0.1::8080", "--env",
              f"VGG_GATEWAY_API_KEYS={API_KEY}")


@pytest.fixture(scope="module")
def served(cpu_image: str):
    """The image as the README runs it, plus --read-only and a tmpfs at /tmp: no other flag."""
    with running(*SERVE_ARGS) as name:
        wait_health(name)
        yield name


def test_the_image_serves_every_default_pipeline_as_documented(served):
    port = published_port(served)
    pipelines = httpx.get(f"http://127.0.0.1:{port}/v1/pipelines",
                          headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30).json()
    names = {p["name"] for p in pipelines["pipelines"]}
    assert {"fast", "fusion", "multiscale", "cascade"} <= names
    for pipeline in sorted(names):
        response = classify(port, digit_png(), pipeline)
        assert response.status_code == 200, (pipeline, response.text)
        assert response.json()["predictions"][0]["label"] == "0", pipeline
    assert httpx.get(f"http://127.0.0.1:{port}/v1/classify", timeout=10).status_code in (401, 405)


def test_it_runs_as_the_non_root_user_on_a_read_only_root_with_dockers_default_shm(served):
    assert docker("exec", served, "id", "-u").stdout.strip() == "10001"
    config = inspect(served)["HostConfig"]
    assert config["ReadonlyRootfs"] and config["ShmSize"] == 64 * 1024 * 1024
    assert docker("exec", served, "touch", "/opt/vgg-serve/x", check=False).returncode != 0
    # Triton stays on the container's loopback, with a key generated at start
    listening = docker("exec", served, "python3", "-c", "print(open('/proc/net/tcp').read())").stdout
    rows = [line.split() for line in listening.splitlines()[1:] if line.strip()]
    local = {row[1] for row in rows if row[3] == "0A"}  # state 0A: listening
    assert "0100007F:1F40" in local and "00000000:1F40" not in local  # 127.0.0.1:8000 only
    assert "access key in /tmp/vgg-serve/triton-8000.key" in logs(served)


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_image_holds_the_pinned_runtime_packages_and_nothing_to_build_with(cpu_image):
    script = "import importlib.metadata as m, json; print(json.dumps({d.name: d.version for d in m.distributions()}))"
    listed = docker("run", "--rm", "--entrypoint", "python3", cpu_image, "-c", script).stdout
    installed = {normalized(name): version for name, version in json.loads(listed).items()}
    lock = {normalized(name): version for name, version in (line.split("#")[0].strip().split("==") for line in
            (ROOT / "requirements-serve.txt").read_text().splitlines() if "==" in line.split("#")[0])}
    assert installed == lock  # no pip, no setuptools, no PyTorch: the lock, exactly
    tools = docker("run", "--rm", "--entrypoint", "sh", cpu_image, "-c", "command -v gcc cc g++ apt-get || true").stdout
    assert tools.split() in ([], ["/usr/bin/apt-get"])  # no compiler; the base's apt-get only


@pytest.mark.parametrize(("flags", "status", "says"), [
    ((), 2, "without API keys"),
    (("--env", "VGG_GATEWAY_API_KEYS=k", "--env", "VGG_TRITON_KEY_FILE=/run/secrets/absent"), 2,
     "cannot read the Triton key file /run/secrets/absent"),
    (("--env", "VGG_GATEWAY_API_KEYS=k", "--shm-size", "16m"), 1, "--shm-size="),
], ids=["no-api-keys", "unreadable-key-file", "small-shm"])
def test_every_refusal_at_start_is_one_line_before_triton_starts(cpu_image, flags, status, says):
    with running("--read-only", "--tmpfs", "/tmp", *flags) as name:
        assert wait_exit(name) == status
        output = logs(name).strip()
    assert len(output.splitlines()) == 1 and says in output, output
    assert output.startswith("serve: error:")


def test_a_mounted_repository_is_served_instead_of_the_baked_one(cpu_image, triton_repository, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(triton_repository, models, ignore=shutil.ignore_patterns(".optimized"))
    for path in [models, *models.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)  # the container's user reads what the test's user wrote
    with running(*SERVE_ARGS, "--volume", f"{models}:/models:ro") as name:
        wait_health(name)
        port = published_port(name)
        listed = httpx.get(f"http://127.0.0.1:{port}/v1/pipelines", headers={"Authorization": f"Bearer {API_KEY}"},
                           timeout=30).json()["pipelines"]
        served_names = {p["name"] for p in listed}
        expected = {path.parent.name for path in Path(models).glob("*/config.pbtxt")}
        assert served_names and served_names <= expected
        response = classify(port, digit_png(), sorted(served_names)[0])
        assert response.status_code == 200, response.text
        assert response.json()["predictions"][0]["label"].startswith("digit_")  # the mounted labels


def test_a_frozen_triton_inside_is_killed_and_restarted_without_an_orchestrator(served):
    """SIGSTOP of tritonserver inside the container: server.serve's own watchdog restarts it (a HEALTHCHECK alone
    would only mark the container unhealthy)."""
    freeze = ("import os, signal; os.kill(next(int(p) for p in os.listdir('/proc') if p.isdigit() and "
              "open(f'/proc/{p}/comm').read().strip() == 'tritonserver'), signal.SIGSTOP)")
    docker("exec", served, "python3", "-c", freeze)
    deadline = time.monotonic() + 120
    while "serve: tritonserver is back" not in logs(served):
        assert time.monotonic() < deadline, logs(served)[-3000:]
        time.sleep(0.5)
    assert "tritonserver has not answered" in logs(served)
    wait_health(served)
    assert classify(published_port(served), digit_png()).status_code == 200


def test_docker_stop_finishes_in_flight_requests_and_exits_0(served):
    """Last to use the shared container: it stops it. Requests held open mid-body are in flight for sure when
    SIGTERM arrives; they complete after it."""
    url = f"http://127.0.0.1:{published_port(served)}"
    auth = {"Authorization": f"Bearer {API_KEY}"}
    held = [HeldRequest(url, digit_png(), headers=auth) for _ in range(3)]
    deadline = time.monotonic() + 30
    while metric_value(url, "vgg_gateway_in_flight_requests", headers=auth) < 3:
        assert time.monotonic() < deadline, "the held requests never reached the gateway"
        time.sleep(0.05)
    stopping = threading.Thread(target=docker, args=("stop", served), kwargs={"timeout": 60})
    stopping.start()  # Docker's default grace period: SIGKILL 10 s after SIGTERM
    while "Shutting down" not in logs(served):
        assert time.monotonic() < deadline + 30, "SIGTERM never reached the gateway"
        time.sleep(0.05)
    answers = [request.finish() for request in held]
    stopping.join(60)
    assert [answer.status_code for answer in answers] == [200] * 3, [answer.text for answer in answers]
    assert inspect(served)["State"]["ExitCode"] == 0, logs(served)[-2000:]
    assert "Traceback" not in logs(served)


@pytest.fixture(scope="module")
def full_size_repository(tmp_path_factory) -> Path:
    """A user's own repository: full-size VGG-11 (random weights, ImageNet's labels) exported by export/to_onnx.py,
    and a `fast` pipeline of it at Q=224, generated by the project's tools as a user would."""
    from bench.build import export, random_checkpoints
    from server.repository import generate
    from server.spec_file import load_spec

    folder = tmp_path_factory.mktemp("full_size")
    checkpoint = random_checkpoints(folder, {"vgg11": "A"})["vgg11"]
    repository = folder / "models"
    export(checkpoint, repository, "vgg11", 2, "--labels", str(ROOT / "export" / "imagenet1k_labels.txt"))
    (folder / "spec.toml").write_text('[pipelines.fast]\nmembers = ["vgg11"]\nscales = [224]\n')
    generate(load_spec(folder / "spec.toml"), repository)
    for path in [repository, *repository.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)  # the container's user reads what the test's user wrote
    return repository


@pytest.mark.slow
def test_a_mounted_full_size_repository_is_served(cpu_image, full_size_repository, sample_images):
    with running(*SERVE_ARGS, "--volume", f"{full_size_repository}:/models:ro") as name:
        wait_health(name)
        port = published_port(name)
        listed = httpx.get(f"http://127.0.0.1:{port}/v1/pipelines", headers={"Authorization": f"Bearer {API_KEY}"},
                           timeout=30).json()["pipelines"]
        assert [p["name"] for p in listed] == ["fast"]
        response = httpx.post(f"http://127.0.0.1:{port}/v1/classify", params={"top_k": 5},
                              headers={"Authorization": f"Bearer {API_KEY}"},
                              files={"file": ("china.jpg", sample_images["china_500x333.jpg"])}, timeout=120)
        assert response.status_code == 200, response.text
        labels = set((ROOT / "export" / "imagenet1k_labels.txt").read_text().splitlines())
        predictions = response.json()["predictions"]
        assert len(predictions) == 5 and {p["label"] for p in predictions} <= labels
        assert response.json()["models"] == {"vgg11": "1"}
