"""Check an exported graph against the PyTorch model it came from, in onnxruntime, before anything is written."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from export.onnx_graph import INPUT_NAME, Normalization
from vgg.nets import VGG, FullyConvolutionalVGG

PROBS_TOLERANCE = 1e-4
FP16_PROBS_TOLERANCE = 5e-3  # float16 weights carry ~3 significant digits


@dataclass
class Comparison:
    what: str
    shape: tuple[int, ...]
    probs_max_abs: float
    scores_max_abs: float
    top1_agree: bool
    tolerance: float = PROBS_TOLERANCE

    def __str__(self) -> str:
        verdict = "ok" if self.ok else "FAILED"
        return (f"{self.what} {self.shape}: max |probs diff| {self.probs_max_abs:.2e}, "
                f"max |scores diff| {self.scores_max_abs:.2e}, top-1 {'agrees' if self.top1_agree else 'DIFFERS'}"
                f" -> {verdict}")

    @property
    def ok(self) -> bool:
        return self.probs_max_abs <= self.tolerance and self.top1_agree


def compare_with_pytorch(model_path: Path, vgg: VGG, normalization: Normalization, seed: int = 0,
                         fp16: bool = False) -> list[Comparison]:
    """At the training size against the original FC classifier; larger and non-square against the PyTorch FCN."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.enable_cpu_mem_arena = False  # keeps a full-size VGG16 export under 4 GB
    options.add_session_config_entry("session.disable_prepacking", "1")
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(seed)
    size = vgg.config.training_size
    fcn = FullyConvolutionalVGG(vgg).eval()
    results = []
    for what, shape in (("training size vs FC head", (2, 3, size, size)),
                        ("larger non-square vs PyTorch FCN", (1, 3, size + 32, size + 96))):
        image = torch.rand(shape, generator=generator) * 255
        with torch.no_grad():
            x = normalization.apply(image)
            ref_scores = vgg(x)[:, :, None, None] if what.startswith("training") else fcn(x)
            ref_probs = torch.softmax(ref_scores.mean(dim=(2, 3)), dim=1).numpy()
        probs, scores = session.run(["probs", "scores"], {INPUT_NAME: image.numpy()})
        results.append(Comparison(what, shape, float(np.abs(probs - ref_probs).max()),
                                  float(np.abs(scores - ref_scores.numpy()).max()),
                                  _top1_agrees(probs, ref_probs, slack=1e-2 if fp16 else 0.0),
                                  FP16_PROBS_TOLERANCE if fp16 else PROBS_TOLERANCE))
    return results


def _top1_agrees(probs: np.ndarray, reference: np.ndarray, slack: float) -> bool:
    """Agreement on every sample, except where the reference's own top two are tied within float noise."""
    ordered = np.sort(reference, axis=1)
    tied = (ordered[:, -1] - ordered[:, -2]) <= max(slack, 1e-6)
    return bool(np.all((probs.argmax(1) == reference.argmax(1)) | tied))
