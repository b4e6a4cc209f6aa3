"""The gateway finds every Triton behind one DNS name, as behind a Kubernetes headless Service: two real Tritons on
127.0.0.1 and 127.0.0.2, one name in a hosts file that only the gateway's process sees (a private mount namespace:
the machine's /etc/hosts is untouched), the real system resolver, the real gateway."""

from __future__ import annotations

import shutil
import socket
import sys
import time
from pathlib import Path

import httpx
import pytest
from support.gateway import Gateway, free_port, metric_value

from server.triton_launcher import TritonServer

NAME = "vgg-triton-pods.test"
HOSTS = "127.0.0.1 localhost\n"


def port_free_on_both() -> int:
    while True:
        port = free_port()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.2", port))
            except OSError:
                continue
        return port


def write_hosts(path: Path, *addresses: str) -> None:
    """In place (same inode): the bind mount shows the file, not the name."""
    with path.open("r+") as handle:
        handle.truncate(0)
        handle.write(HOSTS + "".join(f"{address} {NAME}\n" for address in addresses))


def readiness(url: str) -> tuple[int, list[tuple[str, bool]]]:
    response = httpx.get(url + "/readyz", timeout=10)
    body = response.json()
    return response.status_code, [(ep["url"], ep["ready"]) for ep in body.get("endpoints", [])]


def wait_until(check, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"never: {what}")


def served_requests(server: TritonServer) -> float:
    text = httpx.get(f"http://{server.metrics_url}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("nv_inference_request_success{") and 'model="fast"' in line)


@pytest.fixture(scope="module")
def fast_repository(tmp_path_factory, triton_repository) -> Path:
    repository = tmp_path_factory.mktemp("discovery-repository")
    for model in ("fast", "preprocess", "fuse", "vgg_d"):
        shutil.copytree(triton_repository / model, repository / model)
    return repository


def test_gateway_discovers_spreads_over_and_fails_over_across_tritons_behind_one_name(
        tmp_path, fast_repository, sample_images):
    port = port_free_on_both()
    hosts = tmp_path / "hosts"
    hosts.write_text(HOSTS)  # the name does not resolve yet
    image = sample_images["china_500x333.jpg"]
    first = TritonServer(fast_repository, port, free_port(), free_port(), address="127.0.0.1",
                         log_path=tmp_path / "a.log")
    second = TritonServer(fast_repository, port, free_port(), free_port(), address="127.0.0.2",
                          log_path=tmp_path / "b.log")
    gateway = Gateway([], log_path=tmp_path / "gateway.log")
    gateway.args = ["unshare", "--mount", "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"', str(hosts),
                    sys.executable, "-m", "server.gateway", "--host", "127.0.0.1", "--port", str(gateway.port),
                    "--triton-url", f"{NAME}:{port}", "--dns-refresh-s", "0.3", "--health-interval-s", "0.2"]
    a, b = f"127.0.0.1:{port}", f"127.0.0.2:{port}"

    def classify() -> int:
        return httpx.post(gateway.url + "/v1/classify?pipeline=fast", content=image, timeout=60,
                          headers={"content-type": "image/jpeg"}).status_code

    try:
        first.start()
        gateway.start()
        status, endpoints = readiness(gateway.url)
        assert status == 503 and endpoints == []  # an unresolvable name: up, not ready, nothing to call

        write_hosts(hosts, "127.0.0.1")
        wait_until(lambda: readiness(gateway.url) == (200, [(a, True)]), "the first pod found")

        second.start()  # a new pod: ready first, then in the Service's DNS answer
        write_hosts(hosts, "127.0.0.1", "127.0.0.2")
        wait_until(lambda: readiness(gateway.url) == (200, [(a, True), (b, True)]), "the second pod found")
        before = served_requests(first), served_requests(second)
        assert [classify() for _ in range(10)] == [200] * 10
        spread = served_requests(first) - before[0], served_requests(second) - before[1]
        assert spread == (5, 5), spread  # round robin over both pods, not one pinned keep-alive connection

        second.stop()  # a pod dies before DNS has caught up: its requests go to the other
        assert [classify() for _ in range(6)] == [200] * 6
        write_hosts(hosts, "127.0.0.1")  # and then it is gone from the answer
        wait_until(lambda: readiness(gateway.url) == (200, [(a, True)]), "the dead pod retired")
        assert metric_value(gateway.url, "vgg_gateway_triton_endpoint_up", endpoint=a) == 1
        up_series = [line for line in Gateway.metrics_text(gateway.url).splitlines()
                     if line.startswith("vgg_gateway_triton_endpoint_up{")]
        assert up_series and not [line for line in up_series if f'endpoint="{b}"' in line], up_series
        assert classify() == 200
    finally:
        gateway.stop()
        second.stop()
        first.stop()
