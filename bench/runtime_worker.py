"""One runtime, one model, one input shape, in a process of its own: median latency and peak memory.

    python -m bench.runtime_worker --runtime onnxruntime --model model.onnx --shape 1x3x224x224

A separate process per measurement keeps each peak RSS honest (no other runtime's weights resident) and each
runtime's thread pool alone on the cores. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path

import numpy as np


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


def load(args: argparse.Namespace):
    """Returns a no-argument callable running one inference."""
    shape = tuple(int(d) for d in args.shape.split("x"))
    image = np.random.default_rng(0).uniform(0, 255, shape).astype(np.float32)
    if args.runtime.startswith("torch"):
        import torch

        from export.checkpoint import load_vgg
        from export.onnx_graph import Normalization
        from vgg.nets import FullyConvolutionalVGG

        torch.set_num_threads(args.threads)
        vgg = load_vgg(Path(args.model))
        net = vgg if args.runtime == "torch-fc" else FullyConvolutionalVGG(vgg).eval()
        x = Normalization.preset("torchvision").apply(torch.from_numpy(image))

        def run() -> object:
            with torch.inference_mode():
                return net(x)
        return run
    from vgg.runtimes import Accelerator, OnnxRuntimeRunner, SessionSettings, open_runner

    settings = SessionSettings(args.threads, 1, mem_arena=not args.lean, optimized_model_cache=args.cache or "off")
    if args.runtime == "openvino":
        runner = open_runner(args.model, Accelerator("openvino", args.precision), settings)
    else:
        runner = OnnxRuntimeRunner(args.model, settings, prepacking=not args.lean)
    return lambda: runner.run(["probs"], {"image": image})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runtime", choices=["torch-fc", "torch-fcn", "onnxruntime", "openvino"], required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--shape", default="1x3x224x224")
    parser.add_argument("--precision", default="f32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--lean", action="store_true", help="onnxruntime without arena and weight pre-packing")
    parser.add_argument("--cache", help="onnxruntime's optimized-model cache folder (vgg/ort_cache.py)")
    args = parser.parse_args()
    base = rss_mb()
    run = load(args)
    run()
    loaded = rss_mb()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1000)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"ms": statistics.median(times), "peak_rss_mb": peak, "model_rss_mb": loaded - base}))


if __name__ == "__main__":
    main()
