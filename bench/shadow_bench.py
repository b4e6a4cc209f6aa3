"""What a shadow costs the pipeline it shadows: full-size VGG-11 `fast` with `fast_int8` as the candidate, shadow
off, at 0.25 and at 1.0, side by side in one run through one gateway and one Triton.

    .venv/bin/python -m bench.shadow_bench [--requests 40] [--rounds 3]
    .venv/bin/python -m bench.shadow_bench --demo      # the worked example of docs/gateway.md

With --demo it runs the worked example instead: the default repository's trained demo nets, `fast` (FP32) with a
shadow on `fast_int8` at fraction 1.0, the held-out demo digits sent through the gateway one by one; it reports the
shadow's counts beside the agreement computed offline from the two pipelines' own answers (Triton, directly).

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
import json
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
TITLE = "Shadows on live traffic (`python -m bench.shadow_bench`)"
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


def settle(url: str) -> None:
    """Until the shadows' counts stop moving: copies queued during one side's throughput run must not run during
    the next side's measurement."""
    def counts() -> list[int]:
        out = []
        for side, pipeline in SIDES.items():
            if side != "off":
                since = httpx.get(f"{url}/v1/pipelines/{pipeline}/shadow", timeout=30).json()["since_start"]
                out.append(since["compared"] + since["dropped"] + since["errors"])
        return out

    last = counts()
    while True:
        time.sleep(1.0)
        now = counts()
        if now == last:
            return
        last = now


def measure(url: str, requests: int, concurrency: int, rounds: int, gap_s: float) -> dict:
    data = photo_jpeg((500, 333))
    latencies: dict[str, list[float]] = {side: [] for side in SIDES}
    rates: dict[str, list[float]] = {side: [] for side in SIDES}
    for _ in range(rounds):
        for side, pipeline in SIDES.items():
            make = functools.partial(gateway_caller, url, pipeline, data, 5)
            latencies[side] += spaced_latency_ms(make, requests, gap_s)
            settle(url)
            rates[side].append(throughput(make, requests, concurrency))
            settle(url)
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


def demo(args: argparse.Namespace) -> str:
    """The worked example: what the shadow measured, and the same agreement computed offline."""
    import shutil

    import numpy as np
    import tritonclient.http as httpclient

    from server.repository import generate
    from server.spec_file import load_spec
    from server.triton_launcher import TritonServer
    from train.demo_data import build

    def top1(client: httpclient.InferenceServerClient, pipeline: str, data: bytes) -> int:
        image = httpclient.InferInput("image", [1], "BYTES")
        image.set_data_from_numpy(np.array([data], dtype=object))
        return int(np.argmax(client.infer(pipeline, [image]).as_numpy("probs")))

    with tempfile.TemporaryDirectory(prefix="shadow-demo-") as scratch:
        folder = Path(scratch)
        repository = folder / "repository"
        shutil.copytree(args.repository, repository)
        spec = folder / "pipelines.toml"
        spec.write_text(args.spec.read_text() + '\n[pipelines.fast.shadow]\npipeline = "fast_int8"\nfraction = 1.0\n')
        generate(load_spec(spec), repository)
        build(folder / "digits", per_class_train=0, per_class_val=0, per_class_test=args.digits_per_class)
        images = sorted((folder / "digits" / "test").rglob("*.png"))
        log = folder / "disagreements.jsonl"
        with TritonServer(repository, free_port(), free_port(), free_port()) as triton:
            gateway, url = start_gateway(triton.http_url, quiet=True, env={"VGG_GATEWAY_SHADOW_LOG": str(log)})
            direct = httpclient.InferenceServerClient(triton.http_url)
            agree = 0
            try:
                for index, path in enumerate(images):
                    data = path.read_bytes()
                    httpx.post(f"{url}/v1/classify?pipeline=fast", content=data, timeout=60,
                               headers={"content-type": "image/png", "X-Request-ID": f"digit-{index}"})
                    agree += top1(direct, "fast", data) == top1(direct, "fast_int8", data)
                deadline = time.monotonic() + 120
                while True:
                    report = httpx.get(f"{url}/v1/pipelines/fast/shadow", timeout=30).json()
                    since = report["since_start"]
                    if since["compared"] + since["errors"] + since["dropped"] >= len(images) or \
                            time.monotonic() > deadline:
                        break
                    time.sleep(0.2)
            finally:
                gateway.terminate()
                gateway.wait(30)
        logged = len(log.read_text().splitlines()) if log.exists() else 0
    return "\n".join(["", f"### {time.strftime('%Y-%m-%d')}: worked example, demo `fast` (FP32) shadowed by "
                           "`fast_int8`", "",
                       f"{machine()}; {len(images)} held-out demo digits, one request each; "
                       f"`python -m bench.shadow_bench --demo`.", "",
                       "```", json.dumps(report, indent=1), "```", "",
                       f"Offline, from the two pipelines' own answers (Triton, directly): {agree} of {len(images)} "
                       f"agree on top-1; the shadow counted {since['top1_agreements']} of {since['compared']}. "
                       f"Disagreement log: {logged} lines.", ""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--requests", type=int, default=30, help="per measurement")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--gap-ms", type=int, default=250, help="between latency requests: the machine's headroom")
    parser.add_argument("--no-record", action="store_true", help="print only; bench/results/shadow.md untouched")
    parser.add_argument("--demo", action="store_true", help="run the worked example instead (the demo nets)")
    parser.add_argument("--repository", type=Path, default=Path("model_repository"), help="--demo: the default one")
    parser.add_argument("--spec", type=Path, default=Path("pipelines.toml"), help="--demo: its spec")
    parser.add_argument("--digits-per-class", type=int, default=20, help="--demo: held-out digits per class")
    args = parser.parse_args(argv)
    if args.demo:
        text = demo(args)
        if args.no_record:
            print(text)
        else:
            append_result(text, RESULTS, TITLE)
        return 0

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
        append_result(text, RESULTS, TITLE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
