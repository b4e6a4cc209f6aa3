"""The cascade's own cost on a full-size net, with the path fixed by the threshold (random weights: their posteriors
say nothing, so τ = 0 always stops at stage 1 and τ = 1 always runs every stage).

    python -m bench.cascade_overhead [--repeats 11] [--clients 4] [--threads 2]

Full-size VGG-11 (configuration A, random weights), exported by the project's exporter; stage 1 `fast` (Q=224),
stage 2 `multiscale` (Q=224, 256, 288, dense; its Q=224 view is stage 1's, reused). Measured side by side in one run:
images/s of `fast` against the cascade with τ = 0 (concurrent clients, two rounds), and one-at-a-time latency of the
cascade with τ = 1 against the summed bare onnxruntime time of the views it runs (each view once), bare and served
runs alternating so that both meet the same load on a shared machine. Bare means the same ONNX file in this process,
opened twice: with the session settings of the served config (what the goal compares: the cascade's own overhead)
and with onnxruntime's defaults (threads spinning), so that the cost of the served settings shows too.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import tritonclient.http as httpclient
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from bench.build import export, random_checkpoints
from bench.cascade_bench import images_per_s
from bench.common import free_port, machine, median_ms, photo_jpeg, publish
from bench.served import direct_caller
from client.contract import CASCADE_OUTPUTS
from server.pipeline_spec import load_spec
from server.repository import generate
from server.triton_launcher import TritonServer
from vgg.imaging import ImageLimits, decode_rgb, dense_views, rescale
from vgg.runtimes import OnnxRuntimeRunner, SessionSettings

ROOT = Path(__file__).resolve().parent.parent
STAGE2_SCALES = (224, 256, 288)
SPEC = f"""
[pipelines.fast]
members = ["vgg11"]
scales = [224]

[pipelines.multiscale]
members = ["vgg11"]
scales = {list(STAGE2_SCALES)}

[pipelines.cascade_first]
stages = ["fast", "multiscale"]
thresholds = [0.0]

[pipelines.cascade_last]
stages = ["fast", "multiscale"]
thresholds = [1.0]
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cascade_overhead", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=11, help="one-at-a-time requests per latency figure")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=6, help="requests per client for images/s")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads, bare and served")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "cascade_overhead.md")
    args = parser.parse_args(argv)
    if min(args.repeats, args.clients, args.requests, args.threads) < 1:
        print("cascade_overhead: error: --repeats, --clients, --requests and --threads must be at least 1",
              file=sys.stderr)
        return 2
    jpeg = photo_jpeg()
    image = decode_rgb(jpeg, ImageLimits())
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        repository = folder / "repository"
        checkpoint = random_checkpoints(folder, {"vgg11": "A"})["vgg11"]
        export(checkpoint, repository, "vgg11", args.threads)
        (folder / "spec.toml").write_text(SPEC)
        generate(load_spec(folder / "spec.toml"), repository)
        views = [dense_views(rescale(image, q), flips=False) for q in STAGE2_SCALES]
        sessions = bare_sessions(repository / "vgg11", args.threads)
        with TritonServer(repository, free_port(), free_port(), free_port(), log_path=folder / "triton.log") as triton:
            url = triton.http_url
            speed: dict[str, list[float]] = {"fast": [], "cascade_first": []}
            for order in (("fast", "cascade_first"), ("cascade_first", "fast")):
                for name in order:
                    extra = CASCADE_OUTPUTS if name.startswith("cascade") else ()
                    speed[name].append(images_per_s(url, name, [jpeg] * args.requests, args.clients, extra))
            latency = {name: median_ms(direct_caller(url, name, jpeg, 5), args.repeats)
                       for name in ("fast", "multiscale")}
            escalating = direct_caller(url, "cascade_last", jpeg, 5)
            escalating()
            for run in sessions.values():
                for view in views:
                    run(view)
            bare_runs: dict[str, list[list[float]]] = {name: [] for name in sessions}
            served_runs = []
            stats = httpclient.InferenceServerClient(url.removeprefix("http://"))
            before = compute_ms(stats, member="vgg11")
            for _ in range(args.repeats):
                for index, (name, run) in enumerate(sessions.items()):  # the served settings first
                    bare_runs[name].append([timed_ms(run, view) for view in views])
                    if index == 0:
                        served_runs.append(timed_ms(escalating))
                time.sleep(SETTLE_S)
            after = compute_ms(stats, member="vgg11")
            inside = {model: (ms - before.get(model, 0.0)) / args.repeats for model, ms in after.items()}
    latency["cascade_last"] = statistics.median(served_runs)
    ratios = [c / f for c, f in zip(speed["cascade_first"], speed["fast"], strict=True)]
    lines = [
        f"# Cascade overhead on a full-size net, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC", "",
        f"Machine: {machine()}. Full-size VGG-11 (random weights), onnxruntime {ort.__version__}, {args.threads} "
        f"intra-op threads bare and served; one 640x427 JPEG photo. Stage 1 `fast` (Q=224), stage 2 `multiscale` "
        f"(Q={list(STAGE2_SCALES)}, dense). Images/s: {args.clients} clients x {args.requests} requests, two "
        f"rounds in opposite order; latency: median of {args.repeats} after a warm-up, the bare sessions' runs "
        f"alternating with the cascade's requests so that all meet the same load on a shared machine (ratios: the "
        f"median of the {args.repeats} rounds').", "",
        "| what | figure | ratio |", "|---|---:|---|",
        f"| `fast` images/s | {' / '.join(f'{v:.2f}' for v in speed['fast'])} | |",
        f"| cascade τ = 0 (always stops at `fast`) images/s | "
        f"{' / '.join(f'{v:.2f}' for v in speed['cascade_first'])} | "
        f"{' / '.join(f'{r:.3f}x' for r in ratios)} `fast` (goal ≥ 0.95x) |",
        f"| cascade τ = 1 (`fast`, then `multiscale` reusing Q=224), ms | {latency['cascade_last']:.1f} | |",
    ]
    member, cascade = inside["vgg11"], inside["cascade_last"]
    lines += [
        f"| cascade τ = 1 inside Triton (its statistics, per request): the member's compute (the views' onnxruntime "
        f"runs), ms | {member:.1f} | |",
        f"| the cascade model's time (decoding, rescaling, its calls to the member, fusing), ms | {cascade:.1f} | "
        f"{cascade / member:.3f}x the member's compute |",
        f"| the request as this client timed it, ms | {statistics.mean(served_runs):.1f} (mean) | "
        f"{statistics.mean(served_runs) / member:.3f}x the member's compute |",
    ]
    for name, runs in bare_runs.items():
        summed = [sum(run) for run in runs]
        per_view = [statistics.median(run[i] for run in runs) for i in range(len(views))]
        rounds = [served / bare for served, bare in zip(served_runs, summed, strict=True)]
        lines += [
            f"| bare onnxruntime, {name}: the views at Q={list(STAGE2_SCALES)} once each, summed ms | "
            f"{statistics.median(summed):.1f} | ({', '.join(f'{b:.1f}' for b in per_view)}) |",
            f"| cascade τ = 1 against it | | {statistics.median(rounds):.3f}x (goal ≤ 1.05x; rounds "
            f"{', '.join(f'{r:.3f}' for r in rounds)}) |",
            f"| `multiscale` alone against it, ms | {latency['multiscale']:.1f} | "
            f"{latency['multiscale'] / statistics.median(summed):.3f}x |",
            f"| `fast` alone against its view, ms | {latency['fast']:.1f} | {latency['fast'] / per_view[0]:.3f}x |",
        ]
    publish("\n".join(lines) + "\n", args.out)
    return 0


# Spinning threads go on spinning after their run and load whatever runs next (bench/results/cascade_overhead.md):
# each round ends with them and a pause.
SETTLE_S = 0.5


def bare_sessions(model_dir: Path, threads: int) -> dict[str, Callable[[np.ndarray], object]]:
    """The member's ONNX file in this process, twice: with the session settings its served config asks for (the
    cascade's overhead, runtime settings aside) and with onnxruntime's defaults at the same thread count (intra-op
    threads spinning, which the served config turns off: docs/export.md)."""
    config = text_format.Parse((model_dir / "config.pbtxt").read_text(), mc.ModelConfig())
    served = SessionSettings.from_model_config(
        {"parameters": {k: {"string_value": v.string_value} for k, v in config.parameters.items()}}, environ={})
    model = str(model_dir / "1" / "model.onnx")
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    defaults = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    runner = OnnxRuntimeRunner(model, served)
    spinning = "spinning" if served.spinning else "no spinning"
    return {f"the served session settings ({served.intra_op_threads} threads, {spinning})":
            lambda view: runner.run(["probs"], {"image": view}),
            "onnxruntime's defaults (threads spinning)": lambda view: defaults.run(["probs"], {"image": view})}


def compute_ms(client: httpclient.InferenceServerClient, member: str) -> dict[str, float]:
    """Each model's summed time so far in Triton's statistics: the member's `compute_infer` (its onnxruntime runs),
    and for the others their whole successful requests."""
    totals = {}
    for model in client.get_inference_statistics()["model_stats"]:
        kind = "compute_infer" if model["name"] == member else "success"
        totals[model["name"]] = totals.get(model["name"], 0.0) + int(model["inference_stats"][kind]["ns"]) / 1e6
    return totals


def timed_ms(call: Callable[..., object], *args: object) -> float:
    start = time.perf_counter()
    call(*args)
    return (time.perf_counter() - start) * 1000


if __name__ == "__main__":
    sys.exit(main())
