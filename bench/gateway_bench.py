"""Direct Triton vs through the gateway, same pipeline, same image, one run: median latency and throughput.

    .venv/bin/python -m bench.gateway_bench --repository model_repository [--pipeline fast] [--requests 200]
    .venv/bin/python -m bench.gateway_bench --triton-url 127.0.0.1:8001 --gateway-url http://127.0.0.1:8080

Without URLs it starts Triton on the repository and a gateway in front of it on free loopback ports. Direct calls
use tritonclient gRPC with the encoded image as a BYTES tensor (what the gateway itself sends); gateway calls use
httpx with the raw image body. Rounds alternate direct/gateway so drift on a shared machine hits both alike.
Goal (issue 4): the gateway adds < 5% to median latency and keeps >= 0.95x the throughput.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import tritonclient.grpc as grpcclient


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sample_photo() -> bytes:
    """A real photo (scikit-learn's china.jpg) at an odd size, as JPEG."""
    from PIL import Image
    from sklearn.datasets import load_sample_image

    buffer = io.BytesIO()
    Image.fromarray(load_sample_image("china.jpg")).resize((500, 333)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def direct_caller(url: str, pipeline: str, data: bytes, top_k: int) -> Callable[[], None]:
    client = grpcclient.InferenceServerClient(url)
    tensor = grpcclient.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([data], dtype=np.object_))
    output = grpcclient.InferRequestedOutput("probs", class_count=top_k)
    return lambda: client.infer(pipeline, [tensor], outputs=[output])


def gateway_caller(url: str, pipeline: str, data: bytes, top_k: int) -> Callable[[], None]:
    client = httpx.Client(base_url=url, timeout=120)

    def call() -> None:
        response = client.post("/v1/classify", params={"pipeline": pipeline, "top_k": top_k}, content=data,
                               headers={"content-type": "image/jpeg"})
        response.raise_for_status()
    return call


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


def measure(triton_url: str, gateway_url: str, pipeline: str, requests: int, concurrency: int, rounds: int,
            top_k: int) -> dict:
    data = sample_photo()
    direct = lambda: direct_caller(triton_url, pipeline, data, top_k)  # noqa: E731
    gateway = lambda: gateway_caller(gateway_url, pipeline, data, top_k)  # noqa: E731
    lat = {"direct": [], "gateway": []}
    thr = {"direct": [], "gateway": []}
    for _ in range(rounds):
        for name, make in (("direct", direct), ("gateway", gateway)):
            lat[name] += latency_ms(make, requests)
            thr[name].append(throughput(make, requests, concurrency))
    result = {name: {"median_ms": round(statistics.median(lat[name]), 3),
                     "p90_ms": round(float(np.percentile(lat[name], 90)), 3),
                     "throughput_img_s": round(statistics.median(thr[name]), 2)} for name in lat}
    result["gateway_latency_overhead"] = round(result["gateway"]["median_ms"] / result["direct"]["median_ms"] - 1, 4)
    result["gateway_throughput_ratio"] = round(result["gateway"]["throughput_img_s"]
                                               / result["direct"]["throughput_img_s"], 4)
    result["goals_met"] = result["gateway_latency_overhead"] < 0.05 and result["gateway_throughput_ratio"] >= 0.95
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--triton-url", help="use this running Triton (gRPC) instead of starting one")
    parser.add_argument("--gateway-url", help="use this running gateway instead of starting one")
    parser.add_argument("--pipeline", default="fast")
    parser.add_argument("--requests", type=int, default=200, help="per measurement")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--output", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args(argv)

    triton = gateway = None
    try:
        triton_url = args.triton_url
        if not triton_url:
            from server.triton_launcher import TritonServer
            triton = TritonServer(args.repository, free_port(), free_port(), free_port()).start()
            triton_url = triton.grpc_url
        gateway_url = args.gateway_url
        if not gateway_url:
            port = free_port()
            gateway = subprocess.Popen([sys.executable, "-m", "server.gateway", "--triton-url", triton_url,
                                        "--port", str(port), "--log-level", "warning"])
            gateway_url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(gateway_url + "/readyz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("gateway did not become ready")
                time.sleep(0.2)
        result = measure(triton_url, gateway_url, args.pipeline, args.requests, args.concurrency, args.rounds,
                         args.top_k)
    finally:
        if gateway:
            gateway.terminate()
            gateway.wait(30)
        if triton:
            triton.stop()
    result.update(pipeline=args.pipeline, requests=args.requests, concurrency=args.concurrency, rounds=args.rounds,
                  date=time.strftime("%Y-%m-%d"), machine=f"{platform.machine()} {platform.processor() or ''} "
                  f"{__import__('os').cpu_count()} cores".strip())
    print(json.dumps(result, indent=2))
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
