"""compose.yaml on a real Docker engine: two Triton replicas and the gateway from the one image, the replicas found
through the service name. Crashes come as a crash or the OOM killer brings them (SIGKILL of the container's main
process from the host; `docker kill` is a deliberate stop that restart policies ignore), under load through the
gateway: the gateway fails over, Docker restarts the container, and the gateway takes the replica back by itself.
`down` leaves nothing behind."""

from __future__ import annotations

import io
import itertools
import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest
from PIL import Image, PngImagePlugin
from support.containers import digit_png, docker, inspect
from support.gateway import free_port

from deploy import compose

pytest_plugins = ("support.containers",)

LOAD_CLIENTS = 4


@dataclass
class Deployment:
    project: str
    port: int
    api_key: str = field(repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def container(self, service: str, index: int = 1) -> dict:
        return next(c for c in compose.containers(self.project)
                    if c["Config"]["Labels"]["com.docker.compose.service"] == service
                    and c["Config"]["Labels"]["com.docker.compose.container-number"] == str(index))

    def crash(self, service: str, index: int = 1) -> tuple[str, int]:
        """SIGKILL of the container's main process, as a crash or the OOM killer does it: (container id,
        restart count before)."""
        container = self.container(service, index)
        os.kill(container["State"]["Pid"], signal.SIGKILL)
        return container["Id"], container["RestartCount"]

    def ready_endpoints(self) -> int:
        try:
            body = httpx.get(self.url + "/readyz", headers=self.auth, timeout=5).json()
        except (httpx.HTTPError, ValueError):
            return 0
        return sum(endpoint["ready"] for endpoint in body.get("endpoints", []))


@pytest.fixture(scope="module")
def deployment(cpu_image: str) -> Iterator[Deployment]:
    project = f"vggtest{uuid.uuid4().hex[:6]}"
    port = free_port()
    try:
        compose.up(project, replicas=2, port=port)
        yield Deployment(project, port, (compose.SECRETS / "api-keys").read_text().strip())
    finally:
        compose.down(project)


class Load:
    """``LOAD_CLIENTS`` clients classifying through the gateway until stopped; every answer kept, in order."""

    def __init__(self, deployment: Deployment, limit_s: float = 300) -> None:
        self.answers: list[tuple[float, int, str]] = []  # (when sent, status or -1 for no answer, Retry-After)
        self.stopped = threading.Event()
        self.digit = Image.open(io.BytesIO(digit_png(3))).copy()  # decoded now: the clients' threads share it
        self.sent = itertools.count(1)  # thread-safe: every image its own number
        self.deadline = time.monotonic() + limit_s
        self.threads = [threading.Thread(target=self.client, args=(deployment,)) for _ in range(LOAD_CLIENTS)]
        for thread in self.threads:
            thread.start()

    def client(self, deployment: Deployment) -> None:
        with httpx.Client(base_url=deployment.url, headers=deployment.auth, timeout=60) as client:
            while not self.stopped.is_set() and time.monotonic() < self.deadline:
                image = self.unique_image()
                sent = time.monotonic()
                try:
                    response = client.post("/v1/classify", params={"pipeline": "fast"},
                                           files={"file": ("digit.png", image)})
                    self.answers.append((sent, response.status_code, response.headers.get("retry-after", "")))
                except httpx.HTTPError:
                    self.answers.append((sent, -1, ""))

    def unique_image(self) -> bytes:
        """The same digit, with bytes of its own (a text chunk), so that Triton's response cache never answers."""
        info = PngImagePlugin.PngInfo()
        info.add_text("request", str(next(self.sent)))
        buffer = io.BytesIO()
        self.digit.save(buffer, "PNG", pnginfo=info)
        return buffer.getvalue()

    def wait_answers(self, count: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while len(self.answers) < count:
            assert time.monotonic() < deadline, f"only {len(self.answers)} answers"
            time.sleep(0.1)

    def stop(self) -> list[tuple[float, int, str]]:
        self.stopped.set()
        for thread in self.threads:
            thread.join(90)
        return self.answers


def wait_restarted(deployment: Deployment, container_id: str, restarts_before: int, timeout: float = 240) -> None:
    """Until Docker has restarted the container and its healthcheck passes again."""
    deadline = time.monotonic() + timeout
    while True:
        state = inspect(container_id)
        if state["RestartCount"] > restarts_before and state["State"].get("Health", {}).get("Status") == "healthy":
            return
        assert time.monotonic() < deadline, f"not restarted and healthy: {state['State']}"
        time.sleep(0.5)


def triton_inferences(container_id: str, model: str = "fast") -> int:
    """Inferences Triton itself counted for ``model`` since it started (asked inside the container, with its key)."""
    script = ("import json, urllib.request; key = open('/run/secrets/triton-key').read().strip(); "
              f"r = urllib.request.Request('http://127.0.0.1:8000/v2/models/{model}/stats', "
              "headers={'vgg-triton-key': key}); print(urllib.request.urlopen(r, timeout=5).read().decode())")
    stats = json.loads(docker("exec", container_id, "python3", "-c", script).stdout)
    return sum(int(s["inference_stats"]["success"]["count"]) for s in stats["model_stats"])


def test_both_replicas_are_found_through_the_service_name(deployment):
    assert deployment.ready_endpoints() == 2
    response = httpx.post(deployment.url + "/v1/classify", headers=deployment.auth,
                          files={"file": ("digit.png", digit_png(7))}, timeout=30)
    assert response.status_code == 200 and response.json()["predictions"], response.text


def test_a_crashed_triton_replica_fails_over_restarts_and_rejoins(deployment):
    load = Load(deployment)
    try:
        load.wait_answers(20)
        container_id, restarts = deployment.crash("triton", 1)
        killed_at = time.monotonic()
        wait_restarted(deployment, container_id, restarts)
        deadline = time.monotonic() + 60
        while deployment.ready_endpoints() < 2:  # the gateway's own probe takes it back
            assert time.monotonic() < deadline, "the restarted replica never rejoined the gateway"
            time.sleep(0.5)
        rejoined_at, served_before = time.monotonic(), triton_inferences(container_id)
        load.wait_answers(len(load.answers) + 40)
    finally:
        answers = load.stop()
    during = [(status, retry) for sent, status, retry in answers if killed_at <= sent < rejoined_at]
    after = [status for sent, status, _ in answers if sent >= rejoined_at]
    failed = [answer for answer in during if answer[0] != 200]
    print(f"{len(answers)} requests: {len(during)} during the fail-over ({len(failed)} not 200), {len(after)} after")
    assert all(status == 503 and retry for status, retry in failed), failed  # never an error, at worst a retry
    assert len(failed) <= 0.01 * len(during), failed
    assert after and set(after) == {200}
    assert triton_inferences(container_id) > served_before  # the restarted replica is in rotation again


def test_a_frozen_triton_replica_is_restarted_by_its_launcher_and_rejoins(deployment):
    """SIGSTOP of a replica's tritonserver (alive, answering nothing): the launcher in the container kills it and
    exits, so Docker's restart policy brings the replica back; the gateway answers from the other meanwhile."""
    container = deployment.container("triton", 2)
    processes = docker("top", container["Id"], "-eo", "pid,comm").stdout.splitlines()[1:]
    frozen = next(int(line.split()[0]) for line in processes if line.split()[1] == "tritonserver")
    load = Load(deployment)
    try:
        load.wait_answers(20)
        os.kill(frozen, signal.SIGSTOP)
        stopped_at = time.monotonic()
        wait_restarted(deployment, container["Id"], container["RestartCount"])
        deadline = time.monotonic() + 60
        while deployment.ready_endpoints() < 2:
            assert time.monotonic() < deadline, "the restarted replica never rejoined the gateway"
            time.sleep(0.5)
        rejoined_at = time.monotonic()
        load.wait_answers(len(load.answers) + 40)
    finally:
        answers = load.stop()
    assert "tritonserver has not answered" in docker("logs", container["Id"]).stderr
    during = [(status, retry) for sent, status, retry in answers if stopped_at <= sent < rejoined_at]
    assert all(status == 200 or (status == 503 and retry) for status, retry in during), \
        [answer for answer in during if answer[0] != 200]
    assert all(status == 200 for sent, status, _ in answers if sent >= rejoined_at)


def test_a_crashed_gateway_is_restarted_and_serves_again(deployment):
    container_id, restarts = deployment.crash("gateway")
    wait_restarted(deployment, container_id, restarts)
    response = httpx.post(deployment.url + "/v1/classify", headers=deployment.auth,
                          files={"file": ("digit.png", digit_png(5))}, timeout=30)
    assert response.status_code == 200 and response.json()["predictions"], response.text


def test_down_leaves_no_container_network_or_volume(deployment):
    """Last in this module: it takes the deployment down (the fixture's own `down` then finds nothing)."""
    compose.down(deployment.project)
    label = f"label=com.docker.compose.project={deployment.project}"
    for kind in ("container ls --all", "network ls", "volume ls"):
        assert docker(*kind.split(), "--quiet", "--filter", label).stdout.strip() == "", kind
