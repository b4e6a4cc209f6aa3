"""Measuring served pipelines: latency one request at a time, throughput with concurrent clients, Triton's memory."""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

from bench.common import median_ms


def classify(client: grpcclient.InferenceServerClient, pipeline: str, image: bytes) -> np.ndarray:
    tensor = grpcclient.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([image], dtype=np.object_))
    return client.infer(pipeline, [tensor]).as_numpy("probs")


def latency_ms(url: str, pipeline: str, image: bytes, repeats: int) -> float:
    """Median of one request at a time, after a warm-up."""
    client = grpcclient.InferenceServerClient(url)
    return median_ms(lambda: classify(client, pipeline, image), repeats)


def under_load(url: str, pipeline: str, image: bytes, requests: int, concurrency: int) -> tuple[float, float]:
    """(images/s, median latency ms) as a server sees them: `concurrency` clients, each sending its next request when
    its last returns, so Triton can overlap one request's decoding with another's convolutions and batch equal
    shapes."""
    clients = [grpcclient.InferenceServerClient(url) for _ in range(concurrency)]
    per_client = max(1, requests // concurrency)
    latencies: list[float] = []

    def work(client: grpcclient.InferenceServerClient) -> None:
        for _ in range(per_client):
            start = time.perf_counter()
            classify(client, pipeline, image)
            latencies.append((time.perf_counter() - start) * 1000)

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(lambda c: classify(c, pipeline, image), clients))  # warm-up, every instance included
        start = time.perf_counter()
        list(pool.map(work, clients))
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
