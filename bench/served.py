"""Measuring served pipelines: latency one request at a time, throughput with concurrent clients, Triton's memory."""

from __future__ import annotations

import http.client
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.common import median_ms
from client.contract import INPUT, PROBS
from server.gateway.triton_http import classification_request


def keep_alive_poster(host: str, port: int, path: str, body: bytes, headers: dict[str, str],
                      server: str) -> Callable[[], None]:
    """A call that POSTs `body` over one keep-alive connection with the standard library's client.

    Not httpx nor tritonclient: measured here, httpx spends about 1.5 ms of CPU per request, tritonclient's gRPC
    client 0.7-1.5 ms, http.client 0.3-0.5 ms; on a small machine the clients' CPU is taken from the server they
    measure (the gateway's figures, the served images/s).
    """
    connection = http.client.HTTPConnection(host, port, timeout=120)

    def call() -> None:
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        payload = response.read()
        if response.status != 200:
            raise RuntimeError(f"{server} answered {response.status}: {payload[:200]!r}")
    return call


def direct_caller(url: str, pipeline: str, data: bytes, top_k: int) -> Callable[[], None]:
    """The gateway's own request to Triton's HTTP endpoint (server/gateway/triton_http.py), sent from here."""
    host, _, port = url.removeprefix("http://").rpartition(":")
    body, header_length = classification_request(INPUT, PROBS, data, top_k)
    headers = {"content-type": "application/octet-stream", "inference-header-content-length": str(header_length)}
    return keep_alive_poster(host, int(port), f"/v2/models/{pipeline}/infer", body, headers, "Triton")


def latency_ms(url: str, pipeline: str, image: bytes, repeats: int) -> float:
    """Median of one request at a time to Triton's HTTP endpoint ("host:port"), after a warm-up."""
    return median_ms(direct_caller(url, pipeline, image, 5), repeats)


def under_load(url: str, pipeline: str, image: bytes, requests: int, concurrency: int) -> tuple[float, float]:
    """(images/s, median latency ms) as a server sees them: `concurrency` clients, each sending its next request when
    its last returns, so Triton can overlap one request's decoding with another's convolutions and batch equal
    shapes. The clients share the machine's cores with Triton, hence the leanest client (keep_alive_poster)."""
    callers = [direct_caller(url, pipeline, image, 5) for _ in range(concurrency)]
    per_client = max(1, requests // concurrency)
    latencies: list[float] = []

    def work(call: Callable[[], None]) -> None:
        for _ in range(per_client):
            start = time.perf_counter()
            call()
            latencies.append((time.perf_counter() - start) * 1000)

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(lambda call: call(), callers))  # warm-up, every instance included
        start = time.perf_counter()
        list(pool.map(work, callers))
        elapsed = time.perf_counter() - start
    return len(latencies) / elapsed, statistics.median(latencies)


def process_tree_memory_mb(pid: int) -> tuple[float, float]:
    """(resident now, sum of each process's peak) over a process and its descendants: Triton and its Python stubs."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    resident = peak = 0.0
    pending = [pid]
    while pending:
        current = pending.pop()
        pending += children.get(current, [])
        try:
            status = Path(f"/proc/{current}/status").read_text().splitlines()
        except OSError:
            continue
        values = {line.split(":")[0]: int(line.split()[1]) for line in status if line.startswith(("VmRSS", "VmHWM"))}
        resident += values.get("VmRSS", 0) / 1024
        peak += values.get("VmHWM", 0) / 1024
    return resident, peak
