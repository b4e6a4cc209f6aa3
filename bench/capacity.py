"""How many Triton pods a load needs, from measured per-pod figures rather than guesses.

    python -m bench.capacity --measure [--pipelines fast fast_int8 fusion]     # writes bench/results/capacity.*
    python -m bench.capacity --rps 50 --pipeline fusion [--precision fp32]      # pods and cores for that load

--measure runs one Triton "pod" on this machine the way the CPU overlay runs it (the launcher, onnxruntime threads
= the cores it has, VGG_ORT_THREADS), sends each pipeline requests from 1, 2, 4 and 8 concurrent clients straight
to Triton (the gateway scales separately and is not in the way), and records images/s, latency percentiles,
Triton's resident memory and its pending requests summed over models: the signal the KEDA ScaledObject scales on.
A pod's capacity is the lowest concurrency that reaches 90% of the best throughput; the pending requests there are
the autoscaler's threshold. The sizing form reads those records and names the one it used.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench.common import free_port, machine, photo_jpeg
from bench.served import direct_caller, process_tree_memory_mb

ROOT = Path(__file__).resolve().parent.parent
RECORDS = ROOT / "bench" / "results" / "capacity.json"
REPORT = ROOT / "bench" / "results" / "capacity.md"
PRECISIONS = ("fp32", "int8", "bf16")
KNEE = 0.9  # a pod is "full" at the lowest concurrency reaching this share of its best throughput


class SizingError(ValueError):
    """The records cannot answer the question asked; the message says what they hold."""


@dataclass(frozen=True)
class Level:
    concurrency: int
    images_per_s: float
    p50_ms: float
    p95_ms: float
    pending_mean: float  # nv_inference_pending_request_count summed over the pod's models, sampled under load
    pending_max: float


@dataclass(frozen=True)
class Record:
    pipeline: str  # the served name
    base: str  # the pipeline without its precision suffix
    precision: str
    members: list[str]
    levels: list[Level]

    def knee(self) -> Level:
        best = max(level.images_per_s for level in self.levels)
        return next(level for level in self.levels if level.images_per_s >= KNEE * best)


def precision_of(members: tuple[str, ...] | list[str]) -> str:
    """int8 / bf16 when every member is that variant, else fp32."""
    for precision in ("int8", "bf16"):
        if all(member.endswith("_" + precision) for member in members):
            return precision
    return "fp32"


def pending_requests(metrics_url: str) -> float:
    """Triton's queued requests summed over every model: what the ScaledObject's query sums per pod."""
    with urllib.request.urlopen(f"http://{metrics_url}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("nv_inference_pending_request_count{"))


def load_level(make_call: Callable[[], Callable[[], None]], metrics_url: str, concurrency: int,
               seconds: float) -> Level:
    """`concurrency` clients for `seconds`, each sending its next request when its last returns."""
    calls = [make_call() for _ in range(concurrency)]
    for call in calls:
        call()  # warm-up: every connection and instance once
    latencies: list[float] = []
    samples: list[float] = []
    stop = threading.Event()

    def client(call: Callable[[], None]) -> None:
        while not stop.is_set():
            started = time.perf_counter()
            call()
            latencies.append((time.perf_counter() - started) * 1000)

    def sampler() -> None:
        while not stop.wait(0.25):
            samples.append(pending_requests(metrics_url))

    threads = [threading.Thread(target=client, args=(call,)) for call in calls] + [threading.Thread(target=sampler)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    ordered = sorted(latencies)
    return Level(concurrency, len(latencies) / elapsed, statistics.median(ordered),
                 ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)],
                 statistics.mean(samples) if samples else 0.0, max(samples, default=0.0))


def measure(repository: Path, pipelines: list[str], levels: list[int], seconds: float) -> dict:
    from server.spec_file import load_spec
    from server.triton_launcher import TritonServer

    spec = load_spec(ROOT / "pipelines.toml")
    unknown = [name for name in pipelines if name not in spec.pipelines]
    if unknown:
        raise SizingError(f"not in pipelines.toml: {', '.join(unknown)}")
    cores = os.cpu_count() or 1
    os.environ["VGG_ORT_THREADS"] = str(cores)  # as the overlay sets it from the container's CPU limit
    image = photo_jpeg()
    records, memory = [], 0.0
    with TritonServer(repository, free_port(), free_port(), free_port(), log_path=ROOT / "build" / "capacity.log",
                      heal=False) as server:
        for name in pipelines:
            members = list(spec.pipelines[name].members)
            precision = precision_of(members)
            base = name.removesuffix("_" + precision) if precision != "fp32" else name
            rows = []
            for concurrency in levels:
                rows.append(load_level(lambda name=name: direct_caller(server.http_url, name, image, 5),
                                       server.metrics_url, concurrency, seconds))
                print(f"{name}: {rows[-1]}", file=sys.stderr, flush=True)
            records.append(Record(name, base, precision, members, rows))
        memory = process_tree_memory_mb(server.process.pid)[0]
    return {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(), "cores": cores,
            "ort_threads": cores, "seconds_per_level": seconds, "image": "china.jpg 640x427 JPEG",
            "triton_resident_mb": round(memory), "records": [asdict(record) for record in records]}


def load_records(path: Path = RECORDS) -> tuple[dict, list[Record]]:
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise SizingError(f"no measurements at {path} ({exc.strerror}); run python -m bench.capacity --measure") \
            from None
    records = [Record(r["pipeline"], r["base"], r["precision"], r["members"], [Level(**lv) for lv in r["levels"]])
               for r in data["records"]]
    return data, records


def size(rps: float, pipeline: str, precision: str, utilisation: float, path: Path = RECORDS) -> str:
    """The sizing answer for `rps` images/s of `pipeline` at `precision`, naming the measurement it used."""
    if rps <= 0:
        raise SizingError(f"--rps must be positive, got {rps:g}")
    if not 0 < utilisation <= 1:
        raise SizingError(f"--utilisation must be in (0, 1], got {utilisation:g}")
    data, records = load_records(path)
    record = next((r for r in records if r.base == pipeline and r.precision == precision), None)
    if record is None:
        measured = ", ".join(f"{r.base} {r.precision}" for r in records)
        raise SizingError(f"no measurement of {pipeline} at {precision} in {path.name} (measured: {measured})")
    knee = record.knee()
    per_pod = knee.images_per_s * utilisation
    pods = max(1, math.ceil(rps / per_pod))
    threshold = max(1, round(knee.pending_mean))
    return "\n".join([
        f"{pipeline} at {precision}, {rps:g} images/s: {pods} Triton pod{'s' if pods != 1 else ''} of "
        f"{data['cores']} cores "
        f"({pods * data['cores']} cores), about {data['triton_resident_mb']} MB resident each (all pipelines loaded)",
        f"  used: {record.pipeline} in {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} "
        f"({data['date']}; {data['machine']}): {knee.images_per_s:.1f} images/s per pod at {knee.concurrency} "
        f"concurrent requests, p50 {knee.p50_ms:.0f} ms, p95 {knee.p95_ms:.0f} ms; planned at "
        f"{utilisation:.0%} of that ({per_pod:.1f} images/s per pod)",
        f"  autoscaler: threshold {threshold} pending requests per pod (measured {knee.pending_mean:.1f} at that "
        f"load), maxReplicaCount at least {pods}",
    ])


def report(data: dict) -> str:
    lines = [f"# Capacity of one Triton pod, {data['date']}", "",
             f"Machine: {data['machine']}. One Triton as the CPU overlay runs it (the launcher, every pipeline of "
             f"the repository loaded, VGG_ORT_THREADS={data['ort_threads']}), clients calling Triton's HTTP "
             f"endpoint directly from the same machine (their CPU is taken from Triton's: a real pod does better), "
             f"{data['seconds_per_level']:g} s per level, one {data['image']}. Triton resident memory at the end: "
             f"{data['triton_resident_mb']} MB. Pending: `nv_inference_pending_request_count` summed over the "
             "pod's models, sampled every 0.25 s under load (the ScaledObject's signal).", "",
             "Reproduce: `python -m bench.capacity --measure`; size a cluster: "
             "`python -m bench.capacity --rps 50 --pipeline fusion`.", "",
             "| pipeline | precision | clients | images/s | p50 ms | p95 ms | pending mean | pending max | |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for raw in data["records"]:
        record = Record(raw["pipeline"], raw["base"], raw["precision"], raw["members"],
                        [Level(**level) for level in raw["levels"]])
        knee = record.knee()
        for level in record.levels:
            lines.append(f"| {record.pipeline} | {record.precision} | {level.concurrency} | "
                         f"{level.images_per_s:.1f} | {level.p50_ms:.0f} | {level.p95_ms:.0f} | "
                         f"{level.pending_mean:.2f} | {level.pending_max:.0f} | "
                         f"{'capacity' if level is knee else ''} |")
    load = re.search(r"load average ([\d.]+)", data["machine"])
    if load and float(load.group(1)) > data["cores"]:
        lines += ["", f"Measured while other work competed for the CPU (load average {load.group(1)} on "
                  f"{data['cores']} cores): the figures are lower bounds and noisy (a throughput that falls and "
                  "rises again with more clients is that noise); re-measure on an idle node before sizing a cluster."]
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.capacity", description=__doc__.splitlines()[0])
    parser.add_argument("--measure", action="store_true", help="measure one pod here and write the records")
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--pipelines", nargs="+", default=["fast", "fast_int8", "fusion"])
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 2, 4, 8], help="concurrent clients")
    parser.add_argument("--seconds", type=float, default=8.0, help="load per level")
    parser.add_argument("--rps", type=float, help="target images/s")
    parser.add_argument("--pipeline", help="the pipeline to size for (e.g. fusion, fast)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32")
    parser.add_argument("--utilisation", type=float, default=0.75,
                        help="the share of a pod's measured capacity to plan for (default 0.75: headroom)")
    parser.add_argument("--records", type=Path, default=RECORDS)
    parser.add_argument("--report", action="store_true", help="rewrite capacity.md from the records")
    args = parser.parse_args(argv)
    try:
        if args.measure:
            data = measure(args.repository, args.pipelines, args.levels, args.seconds)
            args.records.parent.mkdir(parents=True, exist_ok=True)
            args.records.write_text(json.dumps(data, indent=2) + "\n")
            REPORT.write_text(report(data))
            print(report(data))
            return 0
        if args.report:
            data = json.loads(args.records.read_text())
            REPORT.write_text(report(data))
            return 0
        if args.rps is None or not args.pipeline:
            parser.error("give --rps and --pipeline (or --measure)")
        print(size(args.rps, args.pipeline, args.precision, args.utilisation, args.records))
        return 0
    except SizingError as exc:
        print(f"capacity: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
