"""Served pipelines vs bare onnxruntime on the same ONNX file and thread settings, measured side by side.

    python -m bench.pipeline_bench [--width 1.0] [--repeats 5] [--threads 2]

Builds a VGG-16 (configuration D, random weights: speed does not depend on them) at the given width, exports it
with the project's exporter, generates a `fast` (Q=224) and a `multiscale` (Q=256,384,512, flips) pipeline, starts
Triton and reports, per image: bare onnxruntime on the preprocessed tensors, the model served by Triton alone, and
each pipeline end to end from JPEG bytes, with the ratios the project's goals are stated in.
"""

from __future__ import annotations

import argparse
import datetime
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import tritonclient.grpc as grpcclient

from bench.common import free_port, machine, median_ms, photo_jpeg, publish
from server.repository import generate
from server.spec_file import load_spec
from server.triton_launcher import TritonServer
from vgg.imaging import ImageLimits, decode_rgb, dense_views, rescale

ROOT = Path(__file__).resolve().parent.parent
SPEC = """
[pipelines.fast]
members = ["vgg16"]
scales = [224]

[pipelines.multiscale]
members = ["vgg16"]
scales = [256, 384, 512]
flips = true
"""


def make_model(folder: Path, width: float, threads: int) -> Path:
    """Checkpoint + export in a subprocess: the benchmark process itself stays free of torch."""
    code = (f"import torch; from vgg.nets import VGG, VGGConfig; torch.manual_seed(0); "
            f"m = VGG(VGGConfig('D', width={width})); m.init_glorot(); torch.save(m.state_dict(), '{folder}/vgg16.pt')")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    repository = folder / "repository"
    subprocess.run([sys.executable, str(ROOT / "export" / "to_onnx.py"), str(folder / "vgg16.pt"), "--repository",
                    str(repository), "--threads", str(threads)], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return repository


def bare_onnxruntime(onnx_path: Path, inputs: list[np.ndarray], threads: int, repeats: int) -> list[float]:
    """Median ms of a plain InferenceSession.run per input; the session is gone before Triton starts."""
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    return [median_ms(lambda x=x: session.run(["probs"], {"image": x}), repeats) for x in inputs]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=float, default=1.0, help="channel width multiplier of the VGG-16")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads, bare and served")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "pipeline.md")
    args = parser.parse_args(argv)

    jpeg = photo_jpeg()
    image = decode_rgb(jpeg, ImageLimits())

    with tempfile.TemporaryDirectory() as folder:
        repository = make_model(Path(folder), args.width, args.threads)
        spec_path = Path(folder) / "spec.toml"
        spec_path.write_text(SPEC)
        generate(load_spec(spec_path), repository)
        onnx_path = repository / "vgg16" / "1" / "model.onnx"

        fast_input = dense_views(rescale(image, 224), flips=False)
        multi_inputs = [dense_views(rescale(image, q), flips=True) for q in (256, 384, 512)]
        bare_fast, *bare_multi = bare_onnxruntime(onnx_path, [fast_input, *multi_inputs], args.threads, args.repeats)

        ports = [free_port() for _ in range(3)]
        with TritonServer(repository, *ports, log_path=Path(folder) / "triton.log") as triton:
            client = grpcclient.InferenceServerClient(triton.grpc_url)

            def model_alone() -> object:
                tensor = grpcclient.InferInput("image", list(fast_input.shape), "FP32")
                tensor.set_data_from_numpy(fast_input)
                return client.infer("vgg16", [tensor], outputs=[grpcclient.InferRequestedOutput("probs")])

            def pipeline(name: str) -> Callable[[], object]:
                def run() -> object:
                    tensor = grpcclient.InferInput("image", [1], "BYTES")
                    tensor.set_data_from_numpy(np.array([jpeg], dtype=object))
                    return client.infer(name, [tensor])
                return run

            served_model = median_ms(model_alone, args.repeats)
            served_fast = median_ms(pipeline("fast"), args.repeats)
            served_multi = median_ms(pipeline("multiscale"), max(2, args.repeats // 2))

    rows = [
        ("bare onnxruntime, 1x3x224x336", bare_fast, ""),
        ("Triton, the ONNX model alone (same tensor)", served_model, f"{served_model / bare_fast:.3f}x bare"),
        ("`fast` pipeline end to end (JPEG in, Q=224)", served_fast, f"{served_fast / bare_fast:.3f}x bare"),
        ("bare onnxruntime, sum of the 3 scales x 2 flips", sum(bare_multi), ""),
        ("`multiscale` pipeline end to end (Q=256,384,512, flips)", served_multi,
         f"{served_multi / sum(bare_multi):.3f}x the sum of its member runs"),
    ]
    today = datetime.date.today().isoformat()
    lines = [f"# Pipeline benchmark, {today}", "",
             f"Machine: {machine()}. VGG-16 (configuration D) at width {args.width:g}, onnxruntime "
             f"{ort.__version__}, {args.threads} intra-op threads bare and served, median of {args.repeats} runs "
             "after a warm-up, one 640x427 JPEG photo.", "",
             "| what | ms/image | ratio |", "|---|---:|---|"]
    lines += [f"| {what} | {ms:.1f} | {ratio} |" for what, ms, ratio in rows]
    report = "\n".join(lines) + "\n"
    publish(report, args.out)
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
