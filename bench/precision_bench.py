"""`make bench`: FP32, bf16 and int8 against the machine's own peaks, bare and served, full-size and demo nets.

    python -m bench.precision_bench [--repeats 5] [--threads 2] [--concurrency 6] [--skip-full] [--skip-demo]

1. The machine's matmul peaks per precision: the best over square sizes 1024-4096 of PyTorch's and onnxruntime's
   kernels.
2. Full-size VGG-11, 16 and 19 (configurations A, D, E; random weights: speed does not depend on them) exported in
   FP32 + int8 + bf16 by the project's exporter: seconds and peak memory of each command.
3. Bare VGG-16 at batch 1, 224x224, each runtime in a process of its own: PyTorch eager, onnxruntime FP32 (first
   load, and with the optimized-model cache warm), OpenVINO f32 and bf16, onnxruntime int8.
4. Served through Triton, end to end from JPEG bytes: `fast` (VGG-16, Q=224), `multiscale` (VGG-16, Q=256,384,512,
   flips) and `fusion` (VGG-11+16+19, Q=256,384,512), each in FP32, bf16 and int8: latency one request at a time,
   and images/s with concurrent clients (what a server delivers); Triton's memory on a cold and a warm cache.
5. The same for the committed demo nets (models/demo/; int8 calibrated on demo digits).
Writes bench/results/precision.md and the bar chart bench/results/precision.png.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from bench.build import calibration_photos, export, random_checkpoints
from bench.common import free_port, machine, photo_jpeg, publish
from bench.flops import dense_gflop
from bench.served import latency_ms, process_tree_memory_mb, under_load
from vgg.imaging import rescaled_size
from vgg.nets import VGGConfig

ROOT = Path(__file__).resolve().parent.parent
PRECISIONS = ("fp32", "bf16", "int8")
VARIANTS = ("--quantize", "int8", "--bf16", "--calibration")  # followed by the calibration folder


@dataclass
class Result:
    section: str  # "full" or "demo"
    group: str  # rows of one group compare with the group's FP32 row
    what: str
    precision: str
    latency_ms: float
    images_s: float
    gflop: float  # per image
    peak_mb: float = float("nan")
    resident_mb: float = float("nan")

    def row(self, peaks: dict[str, float]) -> str:
        rate = self.gflop * self.images_s
        return (f"| {self.what} | {self.precision} | {self.latency_ms:.1f} | {self.images_s:.2f} | {rate:.0f} | "
                f"{100 * rate / peaks[self.precision]:.0f}% | {_gb(self.peak_mb)} | {_gb(self.resident_mb)} |")


def _gb(mb: float) -> str:
    return "–" if mb != mb else f"{mb / 1024:.2f} GB"


@dataclass(frozen=True)
class Suite:
    """One family of nets benchmarked the same way: full-size VGGs or the demo nets."""

    section: str
    fast: str  # the member of `fast` and `multiscale`
    fusion: tuple[str, ...]
    fast_scale: int
    scales: tuple[int, ...]
    flips: bool
    bare_size: int

    def member(self, net: str, precision: str) -> str:
        return net if precision == "fp32" else f"{net}_{precision}"

    def spec(self) -> str:
        text = ""
        for p in PRECISIONS:
            fusion = ", ".join(f'"{self.member(n, p)}"' for n in self.fusion)
            text += (f'[pipelines.fast_{p}]\nmembers = ["{self.member(self.fast, p)}"]\nscales = [{self.fast_scale}]\n'
                     f'[pipelines.multiscale_{p}]\nmembers = ["{self.member(self.fast, p)}"]\n'
                     f"scales = {list(self.scales)}\nflips = {str(self.flips).lower()}\n"
                     f"[pipelines.fusion_{p}]\nmembers = [{fusion}]\nscales = {list(self.scales)}\n")
        return text


FULL = Suite("full", "vgg16", ("vgg11", "vgg16", "vgg19"), 224, (256, 384, 512), True, 224)
DEMO = Suite("demo", "vgg_d", ("vgg_a", "vgg_b", "vgg_d"), 80, (64, 80, 96), False, 64)


def architecture(repository: Path, model: str) -> VGGConfig:
    config = text_format.Parse((repository / model / "config.pbtxt").read_text(), mc.ModelConfig())
    return VGGConfig(**json.loads(config.parameters["vgg.architecture"].string_value))


def worker(runtime: str, model: Path, repeats: int, threads: int, size: int, precision: str = "f32",
           cache: Path | None = None) -> dict:
    command = [sys.executable, "-m", "bench.runtime_worker", "--runtime", runtime, "--model", str(model),
               "--repeats", str(repeats), "--threads", str(threads), "--precision", precision,
               "--shape", f"1x3x{size}x{size}"]
    if cache:
        command += ["--cache", str(cache)]
    output = subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT).stdout
    return json.loads(output.strip().splitlines()[-1])


def bare(suite: Suite, repository: Path, checkpoint: Path, folder: Path, repeats: int, threads: int) -> list[Result]:
    """The `fast` net at batch 1 on its training-size square, in each runtime."""
    size = suite.bare_size
    gflop = dense_gflop(architecture(repository, suite.fast), size, size)
    fp32 = repository / suite.fast / "1" / "model.onnx"
    int8 = repository / f"{suite.fast}_int8" / "1" / "model.onnx"
    cache = folder / f"cache-{suite.section}"
    runs = [
        ("PyTorch eager, FC head", "fp32", lambda: worker("torch-fc", checkpoint, repeats, threads, size)),
        ("onnxruntime, first load", "fp32", lambda: worker("onnxruntime", fp32, repeats, threads, size, cache=cache)),
        ("onnxruntime, optimized-model cache warm", "fp32",
         lambda: worker("onnxruntime", fp32, repeats, threads, size, cache=cache)),
        ("OpenVINO f32", "fp32", lambda: worker("openvino", fp32, repeats, threads, size)),
        ("OpenVINO bf16", "bf16", lambda: worker("openvino", fp32, repeats, threads, size, precision="bf16")),
        ("onnxruntime int8 (static QDQ, per-channel), cache warm", "int8",
         lambda: (worker("onnxruntime", int8, 1, threads, size, cache=cache),
                  worker("onnxruntime", int8, repeats, threads, size, cache=cache))[1]),
    ]
    results = []
    for what, precision, run in runs:
        measured = run()
        group = "bare-first-load" if what.endswith("first load") else "bare"  # the warm cache is the baseline
        results.append(Result(suite.section, group, f"{suite.fast} b1@{size}, {what}", precision, measured["ms"],
                              1000 / measured["ms"], gflop, measured["peak_rss_mb"], measured["model_rss_mb"]))
        print(f"{results[-1].what}: {measured['ms']:.1f} ms", flush=True)
    return results


def served(suite: Suite, repository: Path, image: bytes, image_size: tuple[int, int], folder: Path, repeats: int,
           concurrency: int) -> tuple[list[Result], list[str]]:
    from server.repository import generate
    from server.spec_file import load_spec
    from server.triton_launcher import TritonServer

    spec = folder / f"spec-{suite.section}.toml"
    spec.write_text(suite.spec())
    generate(load_spec(spec), repository)
    width, height = image_size

    def gflop(nets: tuple[str, ...], scales: tuple[int, ...], views: int) -> float:
        return sum(dense_gflop(architecture(repository, n), *rescaled_size(width, height, q)[::-1], batch=views)
                   for n in nets for q in scales)

    # (label, GFLOP per image, latency repeats, requests per client under load): `fast` is cheap enough to
    # measure its throughput over more requests, which steadies it
    pipelines = {"fast": ("`fast`", gflop((suite.fast,), (suite.fast_scale,), 1), repeats, 10),
                 "multiscale": ("`multiscale`", gflop((suite.fast,), suite.scales, 2 if suite.flips else 1),
                                max(2, repeats // 2), 2),
                 "fusion": ("`fusion`", gflop(suite.fusion, suite.scales, 1), max(2, repeats // 2), 2)}
    memory = []
    log = folder / f"triton-{suite.section}.log"
    for state in ("cold", "warm"):  # the first start fills the optimized-model caches that the second one uses
        with TritonServer(repository, free_port(), free_port(), free_port(), log_path=log) as triton:
            resident, peaks = process_tree_memory_mb(triton.process.pid)
            memory.append(f"{state} cache: sum of per-process peaks {_gb(peaks)} while loading, "
                          f"resident {_gb(resident)}")
            if state == "cold":
                continue
            results = []
            for kind, (label, per_image, count, per_client) in pipelines.items():
                for p in PRECISIONS:
                    latency = latency_ms(triton.http_url, f"{kind}_{p}", image, count)
                    requests = max(2 * count, per_client * concurrency)
                    rate, _ = under_load(triton.http_url, f"{kind}_{p}", image, requests, concurrency)
                    results.append(Result(suite.section, kind, f"served {label}", p, latency, rate, per_image))
                    print(f"served {kind}_{p}: {latency:.1f} ms, {rate:.2f} images/s", flush=True)
            resident, peaks = process_tree_memory_mb(triton.process.pid)
            memory.append(f"after the runs: resident {_gb(resident)}")
    members = len({*suite.fusion, suite.fast}) * len(PRECISIONS)
    return results, [f"Triton serving the {suite.section} suite ({members} member models, 9 pipelines), {line}"
                     for line in memory]


def full_suite(folder: Path, args: argparse.Namespace) -> tuple[list[Result], list[str]]:
    checkpoints = random_checkpoints(folder, {"vgg11": "A", "vgg16": "D", "vgg19": "E"})
    calibration = calibration_photos(folder)
    repository = folder / "full"
    notes = []
    for name, checkpoint in checkpoints.items():  # random weights: agreement with FP32 says nothing here
        seconds, peak = export(checkpoint, repository, name, args.threads, *VARIANTS, str(calibration),
                               "--min-top1-agreement", "0")
        notes.append(f"Export of full-size {name} in FP32 + int8 + bf16 (one command, validation included): "
                     f"{seconds:.0f} s, peak memory {_gb(peak)}")
        print(notes[-1], flush=True)
    results = bare(FULL, repository, checkpoints["vgg16"], folder, args.repeats, args.threads)
    served_results, memory = served(FULL, repository, photo_jpeg(), (640, 427), folder, max(3, args.repeats // 2),
                                    args.concurrency)
    shutil.rmtree(repository)
    return results + served_results, notes + memory


def demo_suite(folder: Path, args: argparse.Namespace) -> tuple[list[Result], list[str]]:
    from PIL import Image

    from train import demo_data

    digits = folder / "digits"
    demo_data.build(digits, per_class_train=0, per_class_val=10, per_class_test=1, seed=0)
    repository = folder / "demo"
    labels = ROOT / "models" / "demo" / "labels.txt"
    for name in DEMO.fusion:
        export(ROOT / "models" / "demo" / f"{name}.pt", repository, name, 1, *VARIANTS, str(digits / "val"),
               "--labels", str(labels))
    results = bare(DEMO, repository, ROOT / "models" / "demo" / "vgg_d.pt", folder, 20 * args.repeats, args.threads)
    image = sorted((digits / "test").glob("*/*.png"))[0]
    served_results, memory = served(DEMO, repository, image.read_bytes(), Image.open(image).size, folder,
                                    20 * args.repeats, args.concurrency)
    return results + served_results, memory


def chart(results: list[Result], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sections = [s for s in ("full", "demo") if any(r.section == s for r in results)]
    colours = {"fp32": "#4c72b0", "bf16": "#dd8452", "int8": "#55a868"}
    heights = [sum(r.section == s for r in results) for s in sections]
    figure, axes = plt.subplots(len(sections), 1, figsize=(10, 0.32 * sum(heights) + 1.5 * len(sections)),
                                gridspec_kw={"height_ratios": heights}, squeeze=False)
    for axis, section in zip(axes[:, 0], sections, strict=True):
        rows = [r for r in results if r.section == section]
        axis.barh(range(len(rows)), [r.images_s for r in rows], color=[colours[r.precision] for r in rows])
        axis.set_yticks(range(len(rows)), [f"{r.what} [{r.precision}]" for r in rows], fontsize=8)
        axis.invert_yaxis()
        axis.set_xscale("log")  # multi-scale and fusion pipelines run 10-100x fewer images/s than single views
        axis.set_xlabel("images / s (log scale)")
        axis.set_title("full-size VGG nets" if section == "full" else "demo nets (models/demo/)")
    figure.suptitle("Throughput by runtime and precision (2 cores)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def report(results: list[Result], notes: dict[str, list[str]], peaks: dict[str, float],
           args: argparse.Namespace) -> str:
    lines = [f"# Precision benchmark, {datetime.date.today().isoformat()}", "",
             f"Machine: {machine()}; {args.threads} threads per model. Matmul peaks measured in the same run (best of "
             "PyTorch and onnxruntime, square 1024-4096): "
             + ", ".join(f"{k} {v:.0f} G{'OP' if k == 'int8' else 'FLOP'}/s" for k, v in peaks.items()) + ".",
             "", f"Served: latency is one request at a time; images/s is with {args.concurrency} concurrent clients, "
             "and GFLOP/s and % of peak follow from it. Bare: images/s = 1000 / latency.", ""]
    for section, title in (("full", "Full-size nets"), ("demo", "Demo nets (models/demo/)")):
        rows = [r for r in results if r.section == section]
        if not rows:
            continue
        baselines = {r.group: r for r in rows if r.precision == "fp32" and "OpenVINO" not in r.what
                     and "PyTorch" not in r.what}
        lines += [f"## {title}", "",
                  "| what | precision | latency ms | images/s | GFLOP/s | % of own peak | peak RSS | resident |",
                  "|---|---|---:|---:|---:|---:|---:|---:|"]
        lines += [r.row(peaks) for r in rows]
        ratios = [f"{r.what} {r.precision} {r.images_s / baselines[r.group].images_s:.2f}x"
                  for r in rows if r.precision != "fp32" and r.group in baselines]
        lines += ["", "Images/s over FP32 on the same path: " + "; ".join(ratios) + ".", ""]
        lines += [f"- {note}" for note in notes.get(section, [])] + [""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=6,
                        help="concurrent clients for served images/s: with 4, about one request is always being "
                             "decoded and the model batches 3; 6 keep its batches fuller (+2%% for int8 `fast`)")
    parser.add_argument("--skip-full", action="store_true")
    parser.add_argument("--skip-demo", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "precision.md")
    args = parser.parse_args(argv)
    peaks = json.loads(subprocess.run([sys.executable, "-m", "bench.flops", str(args.threads)], check=True,
                                      capture_output=True, text=True, cwd=ROOT).stdout)
    print("matmul peaks: " + ", ".join(f"{k} {v:.0f}" for k, v in peaks.items()), flush=True)
    folder = Path(tempfile.mkdtemp(prefix="precision-bench-"))
    results: list[Result] = []
    notes: dict[str, list[str]] = {}
    try:
        for skip, section, suite in ((args.skip_full, "full", full_suite), (args.skip_demo, "demo", demo_suite)):
            if not skip:
                more, notes[section] = suite(folder, args)
                results += more
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    text = report(results, notes, peaks, args)
    publish(text, args.out)
    chart(results, args.out.with_suffix(".png"))
    print(f"written to {args.out} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
