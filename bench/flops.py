"""Arithmetic of a dense VGG evaluation, and the machine's measured matmul peaks to compare it with."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from vgg.nets import VGGConfig


def dense_gflop(config: VGGConfig, height: int, width: int, batch: int = 1) -> float:
    """Multiply-adds x 2 of the fully-convolutional net on a batch x 3 x height x width input."""
    flops, channels, h, w = 0, 3, height, width
    for kind, out in config.tokens():
        if kind == "pool":
            h, w = h // 2, w // 2
        elif kind.startswith("conv"):
            kernel = 3 if kind == "conv3" else 1
            flops += 2 * kernel * kernel * channels * out * h * w
            channels = out
    k = config.fc6_kernel
    h, w = h - k + 1, w - k + 1
    flops += 2 * h * w * (k * k * channels * config.hidden + config.hidden ** 2 + config.hidden * config.num_classes)
    return batch * flops / 1e9


def matmul_peaks(threads: int, sizes: tuple[int, ...] = (1024, 2048, 4096), repeats: int = 5) -> dict[str, float]:
    """GFLOP/s (GOP/s for int8) of the best square matmul here, per precision: the best over sizes and over the
    kernels of PyTorch and onnxruntime, so that no runtime's weaker GEMM sets the bar low."""
    peaks = {"fp32": 0.0, "bf16": 0.0, "int8": 0.0}
    for n in sizes:
        for precision, run in _kernels(n, threads):
            run()
            best = min(_seconds(run) for _ in range(repeats))
            peaks[precision] = max(peaks[precision], 2 * n ** 3 / best / 1e9)
    return peaks


def _seconds(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def _kernels(n: int, threads: int) -> list[tuple[str, Callable[[], object]]]:
    import numpy as np
    import onnxruntime as ort
    import torch
    from onnx import TensorProto, helper, numpy_helper

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a16, b16 = a.bfloat16(), b.bfloat16()
    ai, bi = (torch.randint(-100, 100, (n, n), dtype=torch.int8) for _ in range(2))
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1

    def ort_matmul(op: str, a_type: int, weight: np.ndarray, out_type: int, x: np.ndarray) -> Callable[[], object]:
        graph = helper.make_graph([helper.make_node(op, ["A", "B"], ["C"])], "matmul",
                                  [helper.make_tensor_value_info("A", a_type, [n, n])],
                                  [helper.make_tensor_value_info("C", out_type, [n, n])],
                                  [numpy_helper.from_array(weight, "B")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return lambda: session.run(None, {"A": x})

    rng = np.random.default_rng(0)
    return [("fp32", lambda: a @ b), ("bf16", lambda: a16 @ b16), ("int8", lambda: torch._int_mm(ai, bi)),
            ("fp32", ort_matmul("MatMul", TensorProto.FLOAT, rng.standard_normal((n, n), np.float32),
                                TensorProto.FLOAT, rng.standard_normal((n, n), np.float32))),
            ("int8", ort_matmul("MatMulInteger", TensorProto.UINT8, rng.integers(-100, 100, (n, n), np.int8),
                                TensorProto.INT32, rng.integers(0, 255, (n, n), np.uint8)))]


if __name__ == "__main__":
    import sys
    print(json.dumps(matmul_peaks(int(sys.argv[1]) if len(sys.argv) > 1 else 2)))
