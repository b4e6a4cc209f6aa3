"""Arithmetic of a dense VGG evaluation, and the machine's measured matmul peaks to compare it with."""

from __future__ import annotations

import json
import time

from export.vgg import VGGConfig


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


def matmul_peaks(threads: int, n: int = 2048, repeats: int = 5) -> dict[str, float]:
    """GFLOP/s (GOP/s for int8) of the best square matmul PyTorch runs here, per precision."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    ai, bi = (torch.randint(-100, 100, (n, n), dtype=torch.int8) for _ in range(2))
    kernels = {"fp32": lambda: a @ b, "bf16": (lambda x, y: lambda: x @ y)(a.bfloat16(), b.bfloat16()),
               "int8": lambda: torch._int_mm(ai, bi)}
    peaks = {}
    for precision, run in kernels.items():
        run()
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - start)
        peaks[precision] = 2 * n ** 3 / best / 1e9
    return peaks


if __name__ == "__main__":
    import sys
    print(json.dumps(matmul_peaks(int(sys.argv[1]) if len(sys.argv) > 1 else 2)))
