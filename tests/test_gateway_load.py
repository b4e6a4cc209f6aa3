"""Bounded concurrent load through the gateway (zero errors, stable memory) and a schema fuzz run (no 5xx)."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

pytest_plugins = ("support.gateway",)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def run_load(url: str, images: list[bytes], clients: int, per_client: int) -> list[str]:
    def one_client(index: int) -> list[str]:
        failures = []
        with httpx.Client(base_url=url, timeout=60) as client:
            for i in range(per_client):
                data = images[(index + i) % len(images)]
                response = client.post("/v1/classify", content=data, params={"top_k": 3},
                                       headers={"content-type": "application/octet-stream"})
                if response.status_code != 200 or len(response.json()["predictions"]) != 3:
                    failures.append(f"{response.status_code}: {response.text[:200]}")
        return failures

    with ThreadPoolExecutor(clients) as pool:
        return [failure for result in pool.map(one_client, range(clients)) for failure in result]


def test_200_requests_from_16_clients_without_errors_or_memory_growth(gateway, sample_images):
    images = list(sample_images.values())
    assert run_load(gateway.url, images, clients=16, per_client=4) == []  # warm-up: pools, caches, allocator
    warm = rss_mb(gateway.process.pid)
    assert run_load(gateway.url, images, clients=16, per_client=13) == []  # 208 requests
    grown = rss_mb(gateway.process.pid) - warm
    assert grown < 25, f"gateway RSS grew by {grown:.1f} MB over 208 requests"


def test_schema_fuzz_finds_no_server_errors(gateway, tmp_path):
    """Schemathesis generates requests from the gateway's own OpenAPI schema; no response may be a 5xx."""
    command = [sys.executable, "-m", "schemathesis.cli", "run", gateway.url + "/openapi.json",
               "--checks", "not_a_server_error", "--max-examples", "15", "--workers", "2", "--seed", "1",
               "--phases", "examples,coverage,fuzzing", "--generation-database", "none", "--no-color",
               "--request-timeout", "60", "--exclude-path", "/readyz"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "Tested: 7" in result.stdout and "Server error" not in result.stdout, result.stdout[-3000:]
    assert httpx.get(gateway.url + "/readyz", timeout=30).status_code == 200
