"""What one inference call to Triton costs its caller, for each asyncio client the gateway could use, side by side.

    python -m bench.triton_clients [--repository model_repository] [--pipeline fast] [--calls 400]

The gateway reaches Triton through its own HTTP client (server/gateway/triton_http.py) rather than tritonclient,
which issue 4 names; this benchmark is the measurement behind that choice. On one Triton, each client sends the
gateway's request (the encoded photo as one BYTES element, top-k from the classification extension) and gets the
same k strings back: the gateway's client, tritonclient's ``http.aio`` (aiohttp) and ``grpc.aio``. Reported per
call: this process's CPU time (what the gateway would spend; on a small machine it is taken from Triton) and wall
time, one call at a time and at concurrency 8, rounds alternating between the clients so drift hits all alike.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import tritonclient.grpc.aio as grpc_aio
import tritonclient.http.aio as http_aio
import uvloop

from bench.common import free_port, machine, photo_jpeg, publish
from client.contract import INPUT, PROBS
from server.gateway.triton_http import TritonHttpClient
from server.triton_launcher import TritonServer

ROOT = Path(__file__).resolve().parent.parent
Call = Callable[[], Awaitable[list[str]]]


def own_call(url: str, pipeline: str, data: bytes, top_k: int) -> tuple[Call, Callable]:
    """The gateway's call (server/gateway/classifier.py makes the same one)."""
    client = TritonHttpClient(url)
    return (lambda: client.classify(pipeline, INPUT, PROBS, data, top_k)), client.close


def tritonclient_call(module: ModuleType, url: str, pipeline: str, data: bytes, top_k: int) -> tuple[Call, Callable]:
    """tritonclient's documented way: InferInput from numpy, InferRequestedOutput with class_count, as_numpy."""
    client = module.InferenceServerClient(url)
    image = np.array([data], dtype=np.object_)
    binary = {"binary_data": False} if module is http_aio else {}

    async def call() -> list[str]:
        tensor = module.InferInput(INPUT, [1], "BYTES")
        tensor.set_data_from_numpy(image)
        output = module.InferRequestedOutput(PROBS, class_count=top_k, **binary)
        result = await client.infer(pipeline, [tensor], outputs=[output])
        return [x.decode() if isinstance(x, bytes) else str(x) for x in result.as_numpy(PROBS)]
    return call, client.close


async def cost_ms(call: Call, calls: int, concurrency: int) -> tuple[float, float]:
    """(CPU ms, wall ms) per call of this process, `concurrency` calls in flight."""
    for _ in range(10):
        await call()

    async def worker() -> None:
        for _ in range(calls // concurrency):
            await call()
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    done = calls // concurrency * concurrency
    return (time.process_time() - cpu) * 1000 / done, (time.perf_counter() - wall) * 1000 / done


async def measure(triton: TritonServer, pipeline: str, calls: int, rounds: int) -> dict[str, dict[int, list]]:
    data = photo_jpeg((500, 333))
    clients = {
        "gateway's own (HTTP, httptools)": own_call(triton.http_url, pipeline, data, 5),
        "tritonclient.http.aio (aiohttp)": tritonclient_call(http_aio, triton.http_url, pipeline, data, 5),
        "tritonclient.grpc.aio": tritonclient_call(grpc_aio, triton.grpc_url, pipeline, data, 5),
    }
    answers = {name: await call() for name, (call, _) in clients.items()}
    if len({tuple(answer) for answer in answers.values()}) != 1:
        raise RuntimeError(f"the clients disagree: {answers}")
    figures: dict[str, dict[int, list]] = {name: {1: [], 8: []} for name in clients}
    for _ in range(rounds):
        for name, (call, _) in clients.items():
            for concurrency in (1, 8):
                figures[name][concurrency].append(await cost_ms(call, calls, concurrency))
    for _, close in clients.values():
        await close()
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--pipeline", default="fast")
    parser.add_argument("--calls", type=int, default=400, help="per client, concurrency and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "triton_clients.md")
    args = parser.parse_args(argv)

    with TritonServer(args.repository, free_port(), free_port(), free_port()) as triton:
        figures = uvloop.run(measure(triton, args.pipeline, args.calls, args.rounds))

    own = figures["gateway's own (HTTP, httptools)"]
    now = datetime.datetime.now(datetime.UTC)
    lines = [f"# Triton clients: what one call costs the caller, {now:%Y-%m-%d %H:%M} UTC", "",
             f"Machine: {machine()}. Pipeline `{args.pipeline}` of `{args.repository.name}`, a 500x333 JPEG, top-5; "
             f"medians of {args.rounds} rounds of {args.calls} calls per client and concurrency.", "",
             "    python -m bench.triton_clients", "",
             "Every client gets the same top-5 strings back. CPU is the calling process's: what the gateway spends on "
             "each request's Triton call, taken from Triton's cores when they share a machine.", "",
             "| client | CPU ms / call, 1 in flight | 8 in flight | CPU vs the gateway's own (8 in flight) "
             "| wall ms / call, 1 in flight | 8 in flight |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, by_concurrency in figures.items():
        cpu = {c: statistics.median(x[0] for x in runs) for c, runs in by_concurrency.items()}
        wall = {c: statistics.median(x[1] for x in runs) for c, runs in by_concurrency.items()}
        ratio = cpu[8] / statistics.median(x[0] for x in own[8])
        lines.append(f"| {name} | {cpu[1]:.3f} | {cpu[8]:.3f} | {ratio:.1f}x | {wall[1]:.2f} | {wall[8]:.2f} |")
    publish("\n".join(lines) + "\n", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
