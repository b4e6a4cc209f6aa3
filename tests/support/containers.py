"""Containers for the tests: the CPU image built once per session (as `make image` builds it), and containers that
are always removed, whatever the test did.

A pytest plugin (``pytest_plugins = ("support.containers",)`` in a test module). Its tests carry the ``container``
marker (conftest), which `pytest -m "not container"` leaves out on a machine without Docker.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence

import httpx
import numpy as np
import pytest
from PIL import Image

from deploy import image as image_builder

API_KEY = "container-test-api-key"


def docker(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed: {result.stderr.strip() or result.stdout.strip()}")
    return result


def inspect(name: str) -> dict:
    return json.loads(docker("inspect", name).stdout)[0]


def published_port(name: str, port: int = 8080) -> int:
    """The host port (on 127.0.0.1) Docker picked for the container's ``port``."""
    bindings = inspect(name)["NetworkSettings"]["Ports"][f"{port}/tcp"]
    return int(bindings[0]["HostPort"])


def wait_health(name: str, status: str = "healthy", timeout: float = 240) -> float:
    """Seconds until the container's HEALTHCHECK reports ``status``; fails early if the container exits."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        state = inspect(name)["State"]
        if state.get("Health", {}).get("Status") == status:
            return time.monotonic() - started
        if state["Status"] == "exited":
            raise AssertionError(f"{name} exited with {state['ExitCode']}: {logs(name)[-2000:]}")
        time.sleep(0.5)
    raise AssertionError(f"{name} not {status} within {timeout:.0f} s: {logs(name)[-2000:]}")


def wait_exit(name: str, timeout: float = 120) -> int:
    return int(docker("wait", name, timeout=timeout).stdout.strip())


def logs(name: str) -> str:
    result = docker("logs", name, check=False)
    return result.stdout + result.stderr


def remove(*names: str) -> None:
    if names:
        docker("rm", "--force", "--volumes", *names, check=False)


@contextlib.contextmanager
def running(*run_args: str, command: Sequence[str] = (), prefix: str = "vgg-test") -> Iterator[str]:
    """``docker run --detach`` of the image with ``run_args``; yields the container's name; removed afterwards."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    docker("run", "--detach", "--name", name, *run_args, image_builder.IMAGE + ":latest", *command)
    try:
        yield name
    finally:
        remove(name)


def digit_png(index: int = 0) -> bytes:
    """A handwritten digit from scikit-learn's bundled set, as the demo nets' inputs look (64x64 RGB PNG)."""
    from sklearn.datasets import load_digits

    pixels = load_digits().images[index] * (255 / 16)
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).convert("RGB").resize((64, 64), Image.BILINEAR).save(buffer, "PNG")
    return buffer.getvalue()


def classify(port: int, image: bytes, pipeline: str = "fusion", timeout: float = 60) -> httpx.Response:
    return httpx.post(f"http://127.0.0.1:{port}/v1/classify", params={"pipeline": pipeline},
                      headers={"Authorization": f"Bearer {API_KEY}"}, files={"file": ("digit.png", image)},
                      timeout=timeout)


@pytest.fixture(scope="session")
def cpu_image() -> str:
    """vgg-serve-cpu:latest built from this tree (docker's layer cache makes an unchanged tree cheap)."""
    built = image_builder.build()
    return built.tags[0]
