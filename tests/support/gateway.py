"""Start the real gateway (``python -m server.gateway`` under uvicorn) in a subprocess on a free loopback port.

A pytest plugin (``pytest_plugins = ("support.gateway",)`` in a test module) so the session-wide gateway fixture
exists once however many modules use it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import pytest

from server.supervisor import terminate

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Gateway:
    """One gateway process; ``url`` once started, stopped with SIGTERM (uvicorn's graceful shutdown)."""

    def __init__(self, triton_urls: Sequence[str], *flags: str, env: dict[str, str] | None = None,
                 log_path: Path | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [sys.executable, "-m", "server.gateway", "--host", "127.0.0.1", "--port", str(self.port)]
        for triton_url in triton_urls:
            self.args += ["--triton-url", triton_url]
        self.args += list(flags)
        self.env = {**os.environ, **(env or {})}
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self._log = None

    def start(self, wait_ready: bool = False, timeout: float = 30.0) -> Gateway:
        self._log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(self.args, cwd=PROJECT_ROOT, env=self.env, stdout=self._log,
                                        stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        path = "/readyz" if wait_ready else "/healthz"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.process.returncode}: {self.log_tail()}")
            try:
                if httpx.get(self.url + path, timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"gateway not up on {self.url} within {timeout} s: {self.log_tail()}")

    def log_tail(self) -> str:
        if self.log_path and self.log_path.exists():
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-30:])
        return ""

    def stop(self) -> None:
        terminate(self.process, 15)
        if self._log not in (None, subprocess.DEVNULL):
            self._log.close()
            self._log = None

    @staticmethod
    def metrics_text(url: str) -> str:
        return httpx.get(url + "/metrics", timeout=10).text

    def __enter__(self) -> Gateway:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_gateway(tmp_path_factory: pytest.TempPathFactory, triton_urls: Sequence[str], *flags: str,
                  wait_ready: bool = False, env: dict[str, str] | None = None) -> Gateway:
    log = tmp_path_factory.mktemp("gateway") / "gateway.log"
    return Gateway(triton_urls, *flags, env=env, log_path=log).start(wait_ready=wait_ready)


@pytest.fixture(scope="session")
def gateway(triton, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """The gateway in front of the session's Triton, default settings, no API keys (loopback)."""
    server = start_gateway(tmp_path_factory, [triton.http_url], wait_ready=True)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def secured_gateway(triton, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gateway requiring one of two API keys, the second given through the environment."""
    server = start_gateway(tmp_path_factory, [triton.http_url], "--api-key", "key-one",
                           env={"VGG_GATEWAY_API_KEYS": "key-two"}, wait_ready=True)
    yield server
    server.stop()


def assert_error(response: httpx.Response, status: int, code: str) -> dict:
    """The response is the gateway's error shape with this status and code, and leaks no internals."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "request_id"}, body
    assert body["error"]["request_id"] == response.headers["x-request-id"], body  # the same ID as the response's
    assert body["error"]["code"] == code, body
    assert body["error"]["message"], body
    assert "Traceback" not in response.text and 'File "' not in response.text, response.text
    return body["error"]


def metric_value(gateway_url: str, name: str, headers: dict[str, str] | None = None, **labels: str) -> float:
    """Sum of the samples of one Prometheus metric whose labels include ``labels``."""
    text = httpx.get(gateway_url + "/metrics", headers=headers, timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        series, _, value = line.rpartition(" ")
        if all(f'{key}="{val}"' in series for key, val in labels.items()):
            total += float(value)
    return total


class HeldRequest:
    """A classify request whose body trickles in until released: it holds one of the gateway's service slots."""

    def __init__(self, url: str, data: bytes, hold_s: float = 30, headers: dict[str, str] | None = None) -> None:
        import threading

        self.release = threading.Event()
        self.response: httpx.Response | None = None

        def body():
            yield data[:10]
            self.release.wait(hold_s)
            yield data[10:]

        def send() -> None:
            self.response = httpx.post(url + "/v1/classify", content=body(),
                                       headers={"content-type": "image/jpeg", **(headers or {})}, timeout=60)

        self.thread = threading.Thread(target=send, daemon=True)
        self.thread.start()

    def finish(self, release: bool = True) -> httpx.Response:
        if release:
            self.release.set()
        self.thread.join(60)
        assert self.response is not None
        return self.response


def wait_for_metric(gateway_url: str, name: str, value: float, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if metric_value(gateway_url, name) == value:
            return
        time.sleep(0.02)
    raise AssertionError(f"{name} never reached {value}")
