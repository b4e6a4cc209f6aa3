"""`make serve`'s command: Triton and the gateway together, answering over loopback, stopping together."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from conftest import free_port

ROOT = Path(__file__).resolve().parent.parent


def test_serve_runs_triton_and_gateway_and_stops_both(triton_repository, sample_images, tmp_path):
    ports = {name: free_port() for name in ("http", "grpc", "metrics", "gateway")}
    process = subprocess.Popen(
        [sys.executable, "-m", "server.serve", "--repository", str(triton_repository), "--http-port",
         str(ports["http"]), "--grpc-port", str(ports["grpc"]), "--metrics-port", str(ports["metrics"]),
         "--gateway-port", str(ports["gateway"]), "--log", str(tmp_path / "triton.log")],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    gateway = f"http://127.0.0.1:{ports['gateway']}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{gateway}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None, process.stdout.read()
            time.sleep(0.5)
        response = httpx.post(f"{gateway}/v1/classify", params={"pipeline": "fusion", "top_k": 3},
                              files={"file": ("photo.jpg", sample_images["china_500x333.jpg"], "image/jpeg")},
                              timeout=60)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["pipeline"] == "fusion" and len(body["predictions"]) == 3
        assert set(body["models"]) == {"vgg_a", "vgg_d", "vgg_e"}
        key_file = tmp_path / f"triton-{ports['http']}.key"  # the run's own key, beside the log
        assert key_file.stat().st_mode & 0o777 == 0o600
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
        assert not key_file.exists(), "the key outlived its Triton"
        for port in ports.values():
            with socket.socket() as probe:
                assert probe.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still open"
    finally:
        if process.poll() is None:
            process.kill()
