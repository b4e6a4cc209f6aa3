"""The cascade's own cost on a full-size net, with the path fixed by the threshold (random weights: their posteriors
say nothing, so τ = 0 always stops at stage 1 and τ = 1 always runs every stage).

    python -m bench.cascade_overhead [--repeats 21] [--warmup-rounds 3] [--clients 4] [--threads 2]

Full-size VGG-11 (configuration A, random weights), exported by the project's exporter; stage 1 `fast` (Q=224),
stage 2 `multiscale` (Q=224, 256, 288, dense; its Q=224 view is stage 1's, reused). Measured side by side in one run:
images/s of `fast` against the cascade with τ = 0 (concurrent clients, rounds in alternating order), and
one-at-a-time latency of the cascade with τ = 1 against the summed bare onnxruntime time of the views it runs (each
view once), bare and served runs taking turns in each round so that both meet the same load on a shared machine;
Triton's statistics for each escalating request split it into the member's compute and the cascade's own part. Bare
means the same ONNX file in this process, opened twice: with the session settings of the served config (what the
goal compares: the cascade's own overhead) and with onnxruntime's defaults (threads spinning), so that the cost of
the served settings shows too.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import tritonclient.http as httpclient
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from bench.build import export, random_checkpoints
from bench.cascade_bench import images_per_s
from bench.common import free_port, machine, photo_jpeg, publish
from bench.served import direct_caller
from client.contract import CASCADE_OUTPUTS
from server.repository import generate
from server.spec_file import load_spec
from server.triton_launcher import TritonServer
from vgg.imaging import ImageLimits, decode_rgb, dense_views, rescale
from vgg.runtimes import OnnxRuntimeRunner, SessionSettings

ROOT = Path(__file__).resolve().parent.parent
MEMBER = "vgg11"
STAGE2_SCALES = (224, 256, 288)
SPEC = f"""
[pipelines.fast]
members = ["{MEMBER}"]
scales = [224]

[pipelines.multiscale]
members = ["{MEMBER}"]
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
    parser.add_argument("--repeats", type=int, default=21, help="measured rounds (one-at-a-time requests)")
    parser.add_argument("--warmup-rounds", type=int, default=3,
                        help="rounds run first and not measured (start-up outliers: bench/results)")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=16, help="requests per client for images/s")
    parser.add_argument("--speed-rounds", type=int, default=2,
                        help="pairs of images/s rounds (`fast` first, then the cascade first)")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads, bare and served")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "cascade_overhead.md")
    args = parser.parse_args(argv)
    if min(args.repeats, args.clients, args.requests, args.speed_rounds, args.threads) < 1 or args.warmup_rounds < 0:
        print("cascade_overhead: error: --repeats, --clients, --requests, --speed-rounds and --threads must be at "
              "least 1, --warmup-rounds at least 0", file=sys.stderr)
        return 2
    jpeg = photo_jpeg()
    image = decode_rgb(jpeg, ImageLimits())
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        repository = folder / "repository"
        checkpoint = random_checkpoints(folder, {MEMBER: "A"})[MEMBER]
        export(checkpoint, repository, MEMBER, args.threads)
        (folder / "spec.toml").write_text(SPEC)
        generate(load_spec(folder / "spec.toml"), repository)
        views = [dense_views(rescale(image, q), flips=False) for q in STAGE2_SCALES]
        sessions = bare_sessions(repository / MEMBER, args.threads)
        with TritonServer(repository, free_port(), free_port(), free_port(), log_path=folder / "triton.log") as triton:
            url = triton.http_url
            speed: dict[str, list[float]] = {"fast": [], "cascade_first": []}
            for order in (("fast", "cascade_first"), ("cascade_first", "fast")) * args.speed_rounds:
                for name in order:
                    extra = CASCADE_OUTPUTS if name.startswith("cascade") else ()
                    speed[name].append(images_per_s(url, name, [jpeg] * args.requests, args.clients, extra))
            rounds = alternating_rounds(url, sessions, views, jpeg, args.warmup_rounds, args.repeats)
    ratios = per_round(speed["cascade_first"], speed["fast"])
    lines = [
        f"# Cascade overhead on a full-size net, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC", "",
        f"Machine: {machine()}. Full-size VGG-11 (random weights), onnxruntime {ort.__version__}, {args.threads} "
        f"intra-op threads bare and served; one 640x427 JPEG photo. Stage 1 `fast` (Q=224), stage 2 `multiscale` "
        f"(Q={list(STAGE2_SCALES)}, dense). Images/s: {args.clients} clients x {args.requests} requests, "
        f"{2 * args.speed_rounds} rounds in alternating order (ratio: the geometric mean of the rounds'); "
        f"latency: median of {args.repeats} rounds after {args.warmup_rounds} unmeasured "
        f"ones, the bare sessions' runs taking turns with the served pipelines' requests in each round so that all "
        f"meet the same load on a shared machine (ratios: the median of the {args.repeats} rounds').", "",
        "| what | figure | ratio |", "|---|---:|---|",
        f"| `fast` images/s | {' / '.join(f'{v:.2f}' for v in speed['fast'])} | |",
        f"| cascade τ = 0 (always stops at `fast`) images/s | "
        f"{' / '.join(f'{v:.2f}' for v in speed['cascade_first'])} | "
        f"{statistics.geometric_mean(ratios):.3f}x `fast` (goal ≥ 0.95x; rounds {listed(ratios)}) |",
        f"| cascade τ = 1 (`fast`, then `multiscale` reusing Q=224), ms | "
        f"{statistics.median(rounds.served['cascade_last']):.1f} | |",
    ]
    member, cascade = rounds.inside[MEMBER], rounds.inside["cascade_last"]
    own = per_round(cascade, member)
    lines += [
        f"| cascade τ = 1 inside Triton (its statistics, per request): the member's compute (the views' onnxruntime "
        f"runs), ms | {statistics.median(member):.1f} | |",
        f"| the cascade model's time (decoding, rescaling, its calls to the member, fusing), ms | "
        f"{statistics.median(cascade):.1f} | {statistics.median(own):.3f}x the member's compute (the cascade's own "
        f"part; rounds {listed(own)}) |",
    ]
    for name, runs in rounds.bare.items():
        summed = [sum(run) for run in runs]
        per_view = [statistics.median(run[i] for run in runs) for i in range(len(views))]
        escalated = per_round(rounds.served["cascade_last"], summed)
        lines += [
            f"| bare onnxruntime, {name}: the views at Q={list(STAGE2_SCALES)} once each, summed ms | "
            f"{statistics.median(summed):.1f} | ({', '.join(f'{b:.1f}' for b in per_view)}) |",
            f"| cascade τ = 1 against it | | {statistics.median(escalated):.3f}x (goal ≤ 1.05x; rounds "
            f"{listed(escalated)}) |",
            f"| the member's compute inside the cascade against it | | "
            f"{statistics.median(per_round(member, summed)):.3f}x |",
            f"| `multiscale` alone against it, ms | {statistics.median(rounds.served['multiscale']):.1f} | "
            f"{statistics.median(per_round(rounds.served['multiscale'], summed)):.3f}x |",
            f"| `fast` alone against its view, ms | {statistics.median(rounds.served['fast']):.1f} | "
            f"{statistics.median(per_round(rounds.served['fast'], [run[0] for run in runs])):.3f}x |",
        ]
    publish("\n".join(lines) + "\n", args.out)
    return 0


@dataclass
class Rounds:
    """Per measured round: each bare session's view times, each served pipeline's request time, and Triton's
    statistics for the cascade's request (the member's compute, the cascade model's time)."""

    bare: dict[str, list[list[float]]]
    served: dict[str, list[float]]
    inside: dict[str, list[float]]


def alternating_rounds(url: str, sessions: dict[str, Callable[[np.ndarray], object]], views: list[np.ndarray],
                       jpeg: bytes, warmup: int, repeats: int) -> Rounds:
    """Bare and served runs take turns within each round, so that a drift of the shared machine's speed meets both;
    the first `warmup` rounds are run and dropped. Order in a round: the served settings' bare runs, the escalating
    cascade (Triton's statistics read around it), `multiscale` and `fast`, then the spinning bare session."""
    (first, run_first), *spinning = sessions.items()
    escalating = direct_caller(url, "cascade_last", jpeg, 5)
    others = {name: direct_caller(url, name, jpeg, 5) for name in ("multiscale", "fast")}
    client = httpclient.InferenceServerClient(url.removeprefix("http://"))
    rounds = Rounds({name: [] for name in sessions}, {name: [] for name in ("cascade_last", *others)},
                    {MEMBER: [], "cascade_last": []})
    for index in range(warmup + repeats):
        bare = {first: [timed_ms(run_first, view) for view in views]}
        before = statistics_ms(client, MEMBER)
        served = {"cascade_last": timed_ms(escalating)}
        after = statistics_after(client, MEMBER, before, "cascade_last", len(views))
        served.update({name: timed_ms(call) for name, call in others.items()})
        bare.update({name: [timed_ms(run, view) for view in views] for name, run in spinning})
        if index >= warmup:
            for name, times in bare.items():
                rounds.bare[name].append(times)
            for name, ms in served.items():
                rounds.served[name].append(ms)
            for model, ms in rounds.inside.items():
                ms.append(after[model][0] - before[model][0])
        time.sleep(SETTLE_S)
    return rounds


def per_round(served: list[float], bare: list[float]) -> list[float]:
    return [s / b for s, b in zip(served, bare, strict=True)]


def listed(ratios: list[float]) -> str:
    return ", ".join(f"{r:.3f}" for r in ratios)


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


def statistics_ms(client: httpclient.InferenceServerClient, member: str) -> dict[str, tuple[float, int]]:
    """Each model's (summed ms, count) so far in Triton's statistics: the member's `compute_infer` (its onnxruntime
    runs), and for the others their whole successful requests."""
    totals: dict[str, tuple[float, int]] = {}
    for model in client.get_inference_statistics()["model_stats"]:
        kind = model["inference_stats"]["compute_infer" if model["name"] == member else "success"]
        ms, count = totals.get(model["name"], (0.0, 0))
        totals[model["name"]] = (ms + int(kind["ns"]) / 1e6, count + int(kind["count"]))
    return totals


def statistics_after(client: httpclient.InferenceServerClient, member: str, before: dict[str, tuple[float, int]],
                     model: str, member_calls: int) -> dict[str, tuple[float, int]]:
    """The statistics once one more request of `model` and its member calls show in them: Triton records a request
    after sending its response, so a read right after the response may miss it."""
    deadline = time.monotonic() + 5
    while True:
        totals = statistics_ms(client, member)
        if totals[model][1] > before[model][1] and totals[member][1] >= before[member][1] + member_calls:
            return totals
        if time.monotonic() > deadline:
            raise RuntimeError(f"Triton's statistics did not count the {model} request within 5 s")
        time.sleep(0.001)


def timed_ms(call: Callable[..., object], *args: object) -> float:
    start = time.perf_counter()
    call(*args)
    return (time.perf_counter() - start) * 1000


if __name__ == "__main__":
    sys.exit(main())
