"""What a shadow costs the pipeline it shadows: full-size VGG-11 `fast` with `fast_int8` as the candidate, shadow
off, at 0.25 and at 1.0, side by side in one run through one gateway and one Triton.

    .venv/bin/python -m bench.shadow_bench [--requests 40] [--rounds 3]

The repository is built first, in a temporary folder, by the project's own tools: a full-size VGG-11 (random
weights; speed does not depend on them), its int8 variant calibrated on bundled photos, and three pipelines on the
same member and steps that differ only in their shadow (`fast`, `fast_s25`, `fast_s100`), so the sides share every
process. Latency is measured with a gap between requests (the machine has headroom: the shadow's copy runs in the
gap), throughput with concurrent callers (saturation: the shadow's queue fills and its copies are dropped, counted).
Rounds alternate the sides. Results go to bench/results/shadow.md.
Goal (issue 32): <= 3% on the primary's p50 with headroom; under saturation shadow work is dropped first.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.build import calibration_photos, export, random_checkpoints
from bench.common import append_result, free_port, machine, photo_jpeg, start_gateway
from bench.gateway_bench import gateway_caller, throughput

RESULTS = Path(__file__).resolve().parent / "results" / "shadow.md"
SIDES = {"off": "fast", "0.25": "fast_s25", "1.0": "fast_s100"}
SPEC = """
[pipelines.fast]
members = ["vgg11"]
scales = [224]

[pipelines.fast_int8]
members = ["vgg11_int8"]
scales = [224]
"""
SHADOWED = """
[pipelines.{name}]
members = ["vgg11"]
scales = [224]

[pipelines.{name}.shadow]
pipeline = "fast_int8"
fraction = {fraction}
"""


def build_repository(folder: Path, threads: int) -> Path:
    from server.repository import generate
    from server.spec_file import load_spec

    repository = folder / "repository"
    export(random_checkpoints(folder, {"vgg11": "A"})["vgg11"], repository, "vgg11", threads,
           "--quantize", "int8", "--calibration", str(calibration_photos(folder)))
    spec = folder / "pipelines.toml"
    spec.write_text(SPEC + SHADOWED.format(name="fast_s25", fraction=0.25)
                    + SHADOWED.format(name="fast_s100", fraction=1.0))
    generate(load_spec(spec), repository)
    return repository


def spaced_latency_ms(call: functools.partial, requests: int, gap_s: float) -> list[float]:
    call = call()
    for _ in range(3):
        call()
    out = []
    for _ in range(requests):
        time.sleep(gap_s)
        started = time.perf_counter()
        call()
        out.append((time.perf_counter() - started) * 1000)
    return out


def measure(url: str, requests: int, concurrency: int, rounds: int, gap_s: float) -> dict:
    data = photo_jpeg((500, 333))
    latencies: dict[str, list[float]] = {side: [] for side in SIDES}
    rates: dict[str, list[float]] = {side: [] for side in SIDES}
    for _ in range(rounds):
        for side, pipeline in SIDES.items():
            make = functools.partial(gateway_caller, url, pipeline, data, 5)
            latencies[side] += spaced_latency_ms(make, requests, gap_s)
            rates[side].append(throughput(make, requests, concurrency))
    result = {side: {"p50_ms": round(statistics.median(latencies[side]), 2),
                     "throughput_img_s": round(statistics.median(rates[side]), 2)} for side in SIDES}
    for side in SIDES:
        result[side]["p50_ratio"] = round(result[side]["p50_ms"] / result["off"]["p50_ms"], 4)
        result[side]["throughput_ratio"] = round(result[side]["throughput_img_s"]
                                                 / result["off"]["throughput_img_s"], 4)
    for side, pipeline in SIDES.items():
        if side != "off":
            report = httpx.get(f"{url}/v1/pipelines/{pipeline}/shadow", timeout=30).json()
            result[side]["shadow"] = report
    return result


def report(result: dict, args: argparse.Namespace) -> str:
    lines = ["", f"### {time.strftime('%Y-%m-%d')}: full-size VGG-11 `fast`, candidate `fast_int8`", "",
             f"{machine()}; {args.requests} requests per measurement (latency: one at a time, {args.gap_ms} ms "
             f"apart; throughput: {args.concurrency} concurrent), {args.rounds} rounds alternating the sides; "
             f"`python -m bench.shadow_bench {' '.join(sys.argv[1:])}`.", "",
             "| shadow | p50 (ms) | p50 vs off | throughput (img/s) | throughput vs off | compared / dropped / "
             "errors | top-1 agreement | max abs dp | latency ratio |", "|---|---|---|---|---|---|---|---|---|"]
    for side, figures in result.items():
        shadow = figures.get("shadow")
        counts = agreement = diff = ratio = "-"
        if shadow:
            since = shadow["since_start"]
            counts = f"{since['compared']} / {since['dropped']} / {since['errors']}"
            agreement, diff = since["top1_agreement"], since["max_abs_diff"]
            ratio = shadow["window"]["latency_ratio"]
        lines.append(f"| {side} | {figures['p50_ms']} | {figures['p50_ratio']}x | {figures['throughput_img_s']} | "
                     f"{figures['throughput_ratio']}x | {counts} | {agreement} | {diff} | {ratio} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--requests", type=int, default=30, help="per measurement")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--gap-ms", type=int, default=250, help="between latency requests: the machine's headroom")
    parser.add_argument("--no-record", action="store_true", help="print only; bench/results/shadow.md untouched")
    args = parser.parse_args(argv)

    from server.triton_launcher import TritonServer

    with tempfile.TemporaryDirectory(prefix="shadow-bench-") as scratch:
        repository = build_repository(Path(scratch), args.threads)
        with TritonServer(repository, free_port(), free_port(), free_port()) as triton:
            gateway, url = start_gateway(triton.http_url, quiet=True,
                                         env={"VGG_GATEWAY_SHADOW_LOG": str(Path(scratch) / "shadow.jsonl")})
            try:
                result = measure(url, args.requests, args.concurrency, args.rounds, args.gap_ms / 1000)
            finally:
                gateway.terminate()
                gateway.wait(30)
    text = report(result, args)
    if args.no_record:
        print(text)
    else:
        append_result(text, RESULTS, "What a shadow costs the pipeline it shadows (`python -m bench.shadow_bench`)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
