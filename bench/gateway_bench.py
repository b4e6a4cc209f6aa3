"""Direct Triton vs through the gateway, same pipeline, same image, one run: median latency and throughput.

    .venv/bin/python -m bench.gateway_bench --repository model_repository [--pipeline fast] [--requests 200]
    .venv/bin/python -m bench.gateway_bench --triton-url 127.0.0.1:8000 --gateway-url http://127.0.0.1:8080
    .venv/bin/python -m bench.gateway_bench --vgg11 --requests 30 --concurrency 4

Without URLs it starts Triton on the repository and a gateway in front of it on free loopback ports. With --vgg11
the repository is built first, in a temporary folder: a full-size VGG-11 (configuration A, the smallest of the
paper's nets; random weights, speed does not depend on them) behind a `fast` pipeline at Q=224, exported by the
project's exporter: the smallest real VGG, where the demo nets make 4-5 ms pipelines.

Direct calls send Triton's HTTP endpoint exactly the request the gateway itself sends (the encoded image as a BYTES
tensor, top-k from the classification extension), gateway calls the raw image body; both with http.client over a
keep-alive connection (see keep_alive_poster), so the difference is what the gateway adds. Rounds alternate
direct/gateway so drift on a shared machine hits both alike.
Goal (issue 4): the gateway adds < 5% to median latency and keeps >= 0.95x the throughput.

CPU time per request (Linux, from /proc) is reported for each side: the gateway process, Triton's process tree
(server and Python backend stubs) and this benchmark's own clients. When this work alone saturates the cores, the
throughput ratio tends to ``cpu_bound_throughput_ratio`` = direct CPU per image / gateway-path CPU per image (other
load on the machine blurs it: measured ratios then land on either side).
Processes it did not start are measured when given with --gateway-pid / --triton-pid.

With --bare-proxy a third side goes through bench.bare_proxy, a forwarder with nothing but the hop (uvicorn and the
gateway's Triton client): the floor any Python gateway pays, so the report tells the hop's cost from the cost of
the gateway's features.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import numpy as np

from bench.build import export, random_checkpoints
from bench.common import free_port, machine, photo_jpeg, start_gateway
from bench.served import direct_caller, keep_alive_poster

VGG11_SPEC = """
[pipelines.fast]
description = "VGG-11 (configuration A, full size, random weights), single scale Q=224, dense"
members = ["vgg11"]
scales = [224]
"""


def build_vgg11_repository(folder: Path, threads: int) -> Path:
    """A full-size VGG-11 behind a `fast` pipeline, as a user would build it: checkpoint, exporter, generator."""
    from server.repository import generate
    from server.spec_file import load_spec

    repository = folder / "repository"
    export(random_checkpoints(folder, {"vgg11": "A"})["vgg11"], repository, "vgg11", threads)
    spec = folder / "pipelines.toml"
    spec.write_text(VGG11_SPEC)
    generate(load_spec(spec), repository)
    return repository


def gateway_caller(url: str, pipeline: str, data: bytes, top_k: int,
                   multipart: bool = False) -> Callable[[], None]:
    """The raw image body, as a user of the gateway sends it (the raw-body route); or, with ``multipart``, the form
    field `file` that browsers send (FastAPI's route)."""
    target = urlsplit(url)
    path = f"{target.path.rstrip('/')}/v1/classify?{urlencode({'pipeline': pipeline, 'top_k': top_k})}"
    headers = {"content-type": "image/jpeg"}
    if multipart:
        boundary = "vgg-bench-boundary"
        data = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="image.jpg"\r\n'
                f"Content-Type: image/jpeg\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
        headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    return keep_alive_poster(target.hostname or "127.0.0.1", target.port or 80, path, data, headers, "gateway")


class CpuClock:
    """CPU seconds (user + system) of some processes and their children's threads, read from /proc (Linux)."""

    def __init__(self, pids: list[int], tree: bool = False) -> None:
        self.pids = pids
        self.tree = tree

    def seconds(self) -> float | None:
        pids = _descendants(self.pids) if self.tree else self.pids
        total, found = 0.0, False
        for pid in pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            found = True
        return total if found else None


def _descendants(roots: list[int]) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(parent, []).append(int(entry.name))
    found, todo = [], list(roots)
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += parents.get(pid, [])
    return found


class CpuMeter:
    """Accumulates CPU seconds per side over measured phases: this benchmark's clients, Triton, and the hop
    process (gateway or bare proxy) of the side being measured, named after it."""

    def __init__(self, hops: dict[str, CpuClock], triton: CpuClock | None) -> None:
        self.clocks: dict[str, Callable[[], float | None]] = {"client": time.process_time}
        if triton:
            self.clocks["triton"] = triton.seconds
        self.hops = set(hops)
        for name, clock in hops.items():
            self.clocks[name] = clock.seconds
        self.spent: dict[str, dict[str, float]] = {}
        self.requests: dict[str, int] = {}

    def read(self) -> dict[str, float | None]:
        return {name: clock() for name, clock in self.clocks.items()}

    def add(self, mode: str, before: dict[str, float | None], requests: int) -> None:
        after = self.read()
        spent = self.spent.setdefault(mode, {})
        for name, start in before.items():
            if name in self.hops and name != mode:
                continue  # another side's hop, idle meanwhile
            end = after[name]
            if start is not None and end is not None:
                spent[name] = spent.get(name, 0.0) + end - start
        self.requests[mode] = self.requests.get(mode, 0) + requests

    def per_request_ms(self, mode: str) -> dict[str, float]:
        count = max(self.requests.get(mode, 0), 1)
        out = {name: round(seconds * 1000 / count, 3) for name, seconds in self.spent.get(mode, {}).items()}
        out["total"] = round(sum(out.values()), 3)
        return out


def latency_ms(make: Callable[[], Callable[[], None]], requests: int) -> list[float]:
    call = make()
    for _ in range(10):
        call()
    out = []
    for _ in range(requests):
        started = time.perf_counter()
        call()
        out.append((time.perf_counter() - started) * 1000)
    return out


def throughput(make: Callable[[], Callable[[], None]], requests: int, concurrency: int) -> float:
    callers = [make() for _ in range(concurrency)]
    per = requests // concurrency

    def run(call: Callable[[], None]) -> None:
        for _ in range(per):
            call()

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(lambda c: c(), callers))  # warm-up
        started = time.perf_counter()
        list(pool.map(run, callers))
        return per * concurrency / (time.perf_counter() - started)


def measure(triton_url: str, hops: dict[str, str], pipeline: str, requests: int, concurrency: int, rounds: int,
            top_k: int, cpu: CpuMeter | None = None, multipart: bool = False) -> dict:
    """Direct, then through each hop ({"gateway": url, optionally "bare_proxy": url}), alternating each round."""
    data = photo_jpeg((500, 333))
    cpu = cpu or CpuMeter({}, None)
    makers: dict[str, Callable[[], Callable[[], None]]] = {
        "direct": functools.partial(direct_caller, triton_url, pipeline, data, top_k)}
    for name, url in hops.items():
        makers[name] = functools.partial(gateway_caller, url, pipeline, data, top_k,
                                         multipart=multipart and name == "gateway")
    lat: dict[str, list[float]] = {name: [] for name in makers}
    thr: dict[str, list[float]] = {name: [] for name in makers}
    for _ in range(rounds):
        for name, make in makers.items():
            before = cpu.read()
            lat[name] += latency_ms(make, requests)
            thr[name].append(throughput(make, requests, concurrency))
            # warm-ups included in the count: 10 latency calls + one per throughput caller
            cpu.add(name, before, requests + 10 + requests // concurrency * concurrency + concurrency)
    result = {name: {"median_ms": round(statistics.median(lat[name]), 3),
                     "p90_ms": round(float(np.percentile(lat[name], 90)), 3),
                     "throughput_img_s": round(statistics.median(thr[name]), 2),
                     "cpu_ms_per_request": cpu.per_request_ms(name)} for name in lat}
    for name in hops:
        result[f"{name}_latency_overhead"] = round(result[name]["median_ms"] / result["direct"]["median_ms"] - 1, 4)
        result[f"{name}_throughput_ratio"] = round(result[name]["throughput_img_s"]
                                                   / result["direct"]["throughput_img_s"], 4)
    direct_cpu = result["direct"]["cpu_ms_per_request"]
    gateway_cpu = result["gateway"]["cpu_ms_per_request"]
    if "triton" in direct_cpu and "gateway" in gateway_cpu:
        # where the throughput ratio tends when this work saturates the cores: with the clients on this machine
        # too, and with them elsewhere (Triton and gateway alone share the cores)
        result["cpu_bound_throughput_ratio"] = round(direct_cpu["total"] / gateway_cpu["total"], 4)
        result["server_cpu_bound_throughput_ratio"] = round(
            direct_cpu["triton"] / (gateway_cpu["triton"] + gateway_cpu["gateway"]), 4)
    result["goals_met"] = result["gateway_latency_overhead"] < 0.05 and result["gateway_throughput_ratio"] >= 0.95
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--vgg11", action="store_true",
                        help="build and serve a full-size VGG-11 `fast` pipeline instead of --repository")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2,
                        help="onnxruntime intra-op threads of the --vgg11 model")
    parser.add_argument("--triton-url", help="use this running Triton (HTTP host:port) instead of starting one")
    parser.add_argument("--gateway-url", help="use this running gateway instead of starting one")
    parser.add_argument("--pipeline", default="fast")
    parser.add_argument("--requests", type=int, default=200, help="per measurement")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--gateway-pid", type=int, help="measure this gateway process's CPU time (--gateway-url)")
    parser.add_argument("--triton-pid", type=int, help="measure this Triton's CPU time, with its children")
    parser.add_argument("--bare-proxy", action="store_true",
                        help="also measure bench.bare_proxy, the floor of a Python gateway (see above)")
    parser.add_argument("--multipart", action="store_true",
                        help="send the gateway multipart forms (its FastAPI route) instead of raw bodies")
    parser.add_argument("--output", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args(argv)

    triton = gateway = proxy = None
    scratch = tempfile.TemporaryDirectory(prefix="gateway-bench-")
    try:
        triton_url = args.triton_url
        if not triton_url:
            from server.triton_launcher import TritonServer
            repository = build_vgg11_repository(Path(scratch.name), args.threads) if args.vgg11 else args.repository
            triton = TritonServer(repository, free_port(), free_port(), free_port()).start()
            triton_url = triton.http_url
        gateway_url = args.gateway_url
        if not gateway_url:
            gateway, gateway_url = start_gateway(triton_url)
        hops = {"gateway": gateway_url}
        if args.bare_proxy:
            proxy, hops["bare_proxy"] = start_gateway(triton_url, module="bench.bare_proxy")
        gateway_pid = gateway.pid if gateway else args.gateway_pid
        triton_pid = triton.process.pid if triton and triton.process else args.triton_pid
        hop_clocks = {"gateway": CpuClock([gateway_pid])} if gateway_pid else {}
        if proxy:
            hop_clocks["bare_proxy"] = CpuClock([proxy.pid])
        cpu = CpuMeter(hop_clocks, CpuClock([triton_pid], tree=True) if triton_pid else None)
        result = measure(triton_url, hops, args.pipeline, args.requests, args.concurrency, args.rounds,
                         args.top_k, cpu, multipart=args.multipart)
    finally:
        for process in (proxy, gateway):
            if process:
                process.terminate()
                process.wait(30)
        if triton:
            triton.stop()
        scratch.cleanup()
    result.update(model="full-size VGG-11" if args.vgg11 else str(args.repository), pipeline=args.pipeline,
                  requests=args.requests, concurrency=args.concurrency, rounds=args.rounds,
                  gateway_body="multipart" if args.multipart else "raw",
                  date=time.strftime("%Y-%m-%d"), machine=machine())
    print(json.dumps(result, indent=2))
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
