"""The cascade's own cost on a full-size net, with the path fixed by the threshold (random weights: their posteriors
say nothing, so τ = 0 always stops at stage 1 and τ = 1 always runs every stage).

    python -m bench.cascade_overhead [--repeats 5] [--clients 4] [--threads 2]

Full-size VGG-11 (configuration A, random weights), exported by the project's exporter; stage 1 `fast` (Q=224),
stage 2 `multiscale` (Q=224, 256, 288, dense; its Q=224 view is stage 1's, reused). Measured side by side in one run:
images/s of `fast` against the cascade with τ = 0 (concurrent clients, two rounds), and one-at-a-time latency of the
cascade with τ = 1 against the summed bare onnxruntime time of the views it runs (each view once), bare and served
runs alternating so that both meet the same load on a shared machine (the ratio is the median of the pairs').
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import tempfile
import time
from pathlib import Path

import onnxruntime as ort

from bench.build import export, random_checkpoints
from bench.cascade_bench import images_per_s
from bench.common import free_port, machine, median_ms, photo_jpeg, publish
from bench.served import direct_caller
from client.contract import CASCADE_OUTPUTS
from server.pipeline_spec import load_spec
from server.repository import generate
from server.triton_launcher import TritonServer
from vgg.imaging import ImageLimits, decode_rgb, dense_views, rescale

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
    parser.add_argument("--repeats", type=int, default=5, help="one-at-a-time requests per latency figure")
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
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
        session = ort.InferenceSession(str(repository / "vgg11" / "1" / "model.onnx"), options,
                                       providers=["CPUExecutionProvider"])
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
            for view in views:
                session.run(["probs"], {"image": view})
            pairs, bare_runs, served_runs = [], [], []
            for _ in range(args.repeats):
                bare_ms = []
                for view in views:
                    start = time.perf_counter()
                    session.run(["probs"], {"image": view})
                    bare_ms.append((time.perf_counter() - start) * 1000)
                start = time.perf_counter()
                escalating()
                served_runs.append((time.perf_counter() - start) * 1000)
                bare_runs.append(bare_ms)
                pairs.append(served_runs[-1] / sum(bare_ms))
    latency["cascade_last"] = statistics.median(served_runs)
    bare = [statistics.median(run[i] for run in bare_runs) for i in range(len(views))]
    ratios = [c / f for c, f in zip(speed["cascade_first"], speed["fast"], strict=True)]
    summed = statistics.median(sum(run) for run in bare_runs)
    lines = [
        f"# Cascade overhead on a full-size net, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC", "",
        f"Machine: {machine()}. Full-size VGG-11 (random weights), onnxruntime {ort.__version__}, {args.threads} "
        f"intra-op threads bare and served; one 640x427 JPEG photo. Stage 1 `fast` (Q=224), stage 2 `multiscale` "
        f"(Q={list(STAGE2_SCALES)}, dense). Images/s: {args.clients} clients x {args.requests} requests, two "
        f"rounds in opposite order; latency: median of {args.repeats} after a warm-up.", "",
        "| what | figure | ratio |", "|---|---:|---|",
        f"| `fast` images/s | {' / '.join(f'{v:.2f}' for v in speed['fast'])} | |",
        f"| cascade τ = 0 (always stops at `fast`) images/s | "
        f"{' / '.join(f'{v:.2f}' for v in speed['cascade_first'])} | "
        f"{' / '.join(f'{r:.3f}x' for r in ratios)} `fast` (goal ≥ 0.95x) |",
        f"| bare onnxruntime, the views at Q={list(STAGE2_SCALES)} once each, summed ms (alternating with the "
        f"row below) | {summed:.1f} | "
        f"({', '.join(f'{b:.1f}' for b in bare)}) |",
        f"| `multiscale` alone, ms | {latency['multiscale']:.1f} | {latency['multiscale'] / summed:.3f}x the sum |",
        f"| cascade τ = 1 (`fast`, then `multiscale` reusing Q=224), ms | {latency['cascade_last']:.1f} | "
        f"median of the pairs {statistics.median(pairs):.3f}x the sum (goal ≤ 1.05x; pairs "
        f"{', '.join(f'{p:.3f}' for p in pairs)}) |",
        f"| `fast` alone, ms | {latency['fast']:.1f} | {latency['fast'] / bare[0]:.3f}x its bare view |",
    ]
    publish("\n".join(lines) + "\n", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
