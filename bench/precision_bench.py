"""`make bench`: FP32, bf16 and int8 against the machine's own peaks, bare and served, in one run.

    python -m bench.precision_bench [--repeats 5] [--threads 2] [--skip-served]

1. The machine's matmul peaks per precision (PyTorch, square 2048 matmuls).
2. Full-size VGG-16 (random weights: speed does not depend on them) at 224x224, batch 1: PyTorch eager with its FC
   head, onnxruntime FP32 (default and lean session settings), OpenVINO f32 and bf16, onnxruntime int8 (static QDQ).
   Each in a process of its own: ms/image, images/s, GFLOP/s, % of its precision's peak, peak and resident memory.
3. The served `fast` (Q=224) and `multiscale` (Q=256,384,512, flips) pipelines of that VGG-16 in FP32, bf16 and
   int8, end to end through Triton from JPEG bytes.
Writes bench/results/precision.md and a bar chart bench/results/precision.png.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.common import free_port, machine, median_ms
from bench.flops import dense_gflop
from export.vgg import VGGConfig

ROOT = Path(__file__).resolve().parent.parent
PIPELINES_SPEC = """
[pipelines.fast_fp32]
members = ["vgg16"]
scales = [224]
[pipelines.fast_bf16]
members = ["vgg16_bf16"]
scales = [224]
[pipelines.fast_int8]
members = ["vgg16_int8"]
scales = [224]
[pipelines.multiscale_fp32]
members = ["vgg16"]
scales = [256, 384, 512]
flips = true
[pipelines.multiscale_bf16]
members = ["vgg16_bf16"]
scales = [256, 384, 512]
flips = true
[pipelines.multiscale_int8]
members = ["vgg16_int8"]
scales = [256, 384, 512]
flips = true
"""


@dataclass
class Result:
    what: str
    precision: str
    ms: float
    gflop: float
    peak_mb: float = float("nan")
    resident_mb: float = float("nan")
    group: str = ""  # lower precisions are compared with the FP32 baseline of their group
    baseline: bool = False

    def row(self, peaks: dict[str, float]) -> str:
        rate = self.gflop / (self.ms / 1000)
        return (f"| {self.what} | {self.precision} | {self.ms:.1f} | {1000 / self.ms:.2f} | {rate:.0f} | "
                f"{100 * rate / peaks[self.precision]:.0f}% | {_mb(self.peak_mb)} | {_mb(self.resident_mb)} |")


def _mb(value: float) -> str:
    return "–" if value != value else f"{value / 1024:.2f} GB"


def worker(runtime: str, model: Path, repeats: int, threads: int, precision: str = "f32", lean: bool = False,
           shape: str = "1x3x224x224") -> dict:
    command = [sys.executable, "-m", "bench.runtime_worker", "--runtime", runtime, "--model", str(model),
               "--repeats", str(repeats), "--threads", str(threads), "--precision", precision, "--shape", shape]
    if lean:
        command.append("--lean")
    output = subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT).stdout
    return json.loads(output.strip().splitlines()[-1])


def build_models(folder: Path, threads: int, calibration: Path) -> Path:
    """VGG-16 checkpoint; FP32, int8 and bf16 Triton models through the project's exporter."""
    code = ("import torch; from export.vgg import VGG, VGGConfig; torch.manual_seed(0); m = VGG(VGGConfig('D')); "
            f"m.init_glorot(); torch.save(m.state_dict(), '{folder}/vgg16.pt')")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    repository = folder / "repository"
    started = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "export" / "to_onnx.py"), str(folder / "vgg16.pt"), "--repository",
                    str(repository), "--threads", str(threads), "--quantize", "int8", "--bf16", "--calibration",
                    str(calibration), "--min-top1-agreement", "0"], check=True, cwd=ROOT)
    print(f"exported FP32 + int8 + bf16 in {time.perf_counter() - started:.0f} s", flush=True)
    return repository


def calibration_images(folder: Path) -> Path:
    """A few real photos from the installed scikit-image / scikit-learn (calibration needs real statistics)."""
    import skimage.data
    from PIL import Image
    from sklearn.datasets import load_sample_image

    target = folder / "calibration"
    target.mkdir()
    photos = {n: getattr(skimage.data, n)() for n in ("astronaut", "coffee", "chelsea", "rocket", "cat")}
    photos |= {n: load_sample_image(f"{n}.jpg") for n in ("china", "flower")}
    for name, array in photos.items():
        Image.fromarray(array).convert("RGB").save(target / f"{name}.jpg")
        Image.fromarray(array).convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(target / f"{name}_m.jpg")
    return target


def bare(repository: Path, checkpoint: Path, repeats: int, threads: int) -> list[Result]:
    gflop = dense_gflop(VGGConfig("D"), 224, 224)
    onnx_fp32 = repository / "vgg16" / "1" / "model.onnx"
    runs = [
        ("PyTorch eager, FC head", "fp32", lambda: worker("torch-fc", checkpoint, repeats, threads)),
        ("onnxruntime", "fp32", lambda: worker("onnxruntime", onnx_fp32, repeats, threads)),  # the baseline
        ("onnxruntime, lean session (no arena, no pre-packing)", "fp32",
         lambda: worker("onnxruntime", onnx_fp32, repeats, threads, lean=True)),
        ("OpenVINO f32", "fp32", lambda: worker("openvino", onnx_fp32, repeats, threads)),
        ("OpenVINO bf16", "bf16", lambda: worker("openvino", onnx_fp32, repeats, threads, precision="bf16")),
        ("onnxruntime int8 (static QDQ, per-channel)", "int8",
         lambda: worker("onnxruntime", repository / "vgg16_int8" / "1" / "model.onnx", repeats, threads)),
    ]
    results = []
    for what, precision, run in runs:
        measured = run()
        results.append(Result(f"VGG-16 b1@224, {what}", precision, measured["ms"], gflop, measured["peak_rss_mb"],
                              measured["model_rss_mb"], "bare", what == "onnxruntime"))
        print(f"{results[-1].what}: {measured['ms']:.1f} ms", flush=True)
    return results


def served(repository: Path, folder: Path, repeats: int) -> list[Result]:
    import tritonclient.grpc as grpcclient
    from PIL import Image
    from sklearn.datasets import load_sample_image

    from server.pipeline_spec import load_spec
    from server.repository import generate
    from server.triton_launcher import TritonServer

    spec_path = folder / "spec.toml"
    spec_path.write_text(PIPELINES_SPEC)
    generate(load_spec(spec_path), repository)
    photo = io.BytesIO()
    Image.fromarray(load_sample_image("china.jpg")).save(photo, "JPEG", quality=90)  # 640x427
    jpeg = photo.getvalue()
    config = VGGConfig("D")
    fast_gflop = dense_gflop(config, 224, 336)
    multi_gflop = sum(dense_gflop(config, q, round(q * 640 / 427), batch=2) for q in (256, 384, 512))
    results = []
    with TritonServer(repository, free_port(), free_port(), free_port(), log_path=folder / "triton.log") as triton:
        client = grpcclient.InferenceServerClient(triton.grpc_url)

        def call(name: str) -> object:
            tensor = grpcclient.InferInput("image", [1], "BYTES")
            tensor.set_data_from_numpy(np.array([jpeg], dtype=np.object_))
            return client.infer(name, [tensor])

        for precision in ("fp32", "bf16", "int8"):
            ms = median_ms(lambda p=precision: call(f"fast_{p}"), repeats)
            results.append(Result("served `fast` pipeline, Q=224 (640x427 JPEG in)", precision, ms, fast_gflop,
                                  group="fast", baseline=precision == "fp32"))
            ms = median_ms(lambda p=precision: call(f"multiscale_{p}"), max(2, repeats // 2))
            results.append(Result("served `multiscale` pipeline, Q=256,384,512 + flips", precision, ms, multi_gflop,
                                  group="multiscale", baseline=precision == "fp32"))
            print(f"served {precision}: {results[-2].ms:.0f} / {results[-1].ms:.0f} ms", flush=True)
    return results


def chart(results: list[Result], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r.what.replace('VGG-16 b1@224, ', '')} [{r.precision}]" for r in results]
    rates = [1000 / r.ms for r in results]
    colours = {"fp32": "#4c72b0", "bf16": "#dd8452", "int8": "#55a868"}
    figure, axis = plt.subplots(figsize=(10, 0.45 * len(results) + 1.2))
    axis.barh(range(len(results)), rates, color=[colours[r.precision] for r in results])
    axis.set_yticks(range(len(results)), labels, fontsize=8)
    axis.invert_yaxis()
    axis.set_xlabel("images / s (VGG-16, 2 cores)")
    axis.set_title("Throughput by runtime and precision")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-served", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "precision.md")
    args = parser.parse_args(argv)
    peaks = json.loads(subprocess.run([sys.executable, "-m", "bench.flops", str(args.threads)], check=True,
                                      capture_output=True, text=True, cwd=ROOT).stdout)
    print("matmul peaks (GFLOP/s): " + ", ".join(f"{k} {v:.0f}" for k, v in peaks.items()), flush=True)
    folder = Path(tempfile.mkdtemp(prefix="precision-bench-"))
    try:
        repository = build_models(folder, args.threads, calibration_images(folder))
        results = bare(repository, folder / "vgg16.pt", args.repeats, args.threads)
        if not args.skip_served:
            results += served(repository, folder, args.repeats)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    baselines = {r.group: r for r in results if r.baseline}
    lines = [f"# Precision benchmark, {datetime.date.today().isoformat()}", "",
             f"Machine: {machine()}; {args.threads} threads. Matmul peaks measured in the same run (PyTorch, "
             "2048x2048): " + ", ".join(f"{k} {v:.0f} G{'OP' if k == 'int8' else 'FLOP'}/s" for k, v in peaks.items())
             + ".", "",
             "| what | precision | ms/image | images/s | GFLOP/s | % of own peak | peak RSS | resident after load |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    lines += [r.row(peaks) for r in results]
    ratios = [f"{r.what} {r.precision}: {baselines[r.group].ms / r.ms:.2f}x the FP32 images/s"
              for r in results if r.precision != "fp32" and r.group in baselines]
    lines += ["", "Speed-ups over FP32 on the same path: " + "; ".join(ratios) + "."]
    report = "\n".join(lines) + "\n"
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    chart(results, args.out.with_suffix(".png"))
    print(f"written to {args.out} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
