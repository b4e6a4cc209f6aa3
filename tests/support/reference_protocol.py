"""An independent reference of the paper's test protocol (Sec. 3.2), in PyTorch on the original checkpoints.

Written apart from the serving code on purpose: it shares no code with server/ or export/onnx_graph.py, only the
protocol's definition (isotropic bilinear rescale of the smaller side to Q, torchvision normalisation, dense score
map averaged then soft-maxed, mirrors, a regular grid of training-size crops, posteriors averaged over views, then
scales, then dense/multi-crop, then members with weights).
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image, ImageOps

from vgg.nets import VGG, FullyConvolutionalVGG

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255


def load_rgb(data: bytes) -> Image.Image:
    return ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")


def rescaled(image: Image.Image, q: int) -> torch.Tensor:
    width, height = image.size
    short, long = sorted((width, height))
    new_long = max(q, int(np.round(long * q / short)))
    size = (q, new_long) if width <= height else (new_long, q)
    if size != image.size:
        image = image.resize(size, Image.Resampling.BILINEAR)
    return torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1).unsqueeze(0)


def posteriors(net: FullyConvolutionalVGG, batch: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        scores = net((batch - MEAN) / STD)
    return torch.softmax(scores.mean(dim=(2, 3)), dim=1)


def with_mirrors(batch: torch.Tensor, flips: bool) -> torch.Tensor:
    return torch.cat([batch, batch.flip(3)]) if flips else batch


def crops(image: torch.Tensor, size: int, grid: int) -> torch.Tensor:
    _, _, height, width = image.shape
    ys = np.linspace(0, height - size, grid).round().astype(int) if grid > 1 else [(height - size) // 2]
    xs = np.linspace(0, width - size, grid).round().astype(int) if grid > 1 else [(width - size) // 2]
    return torch.cat([image[:, :, y:y + size, x:x + size] for y in ys for x in xs])


def member_posterior(model: VGG, image: Image.Image, scales: list[int], mode: str, flips: bool, grid: int = 5,
                     crop_size: int | None = None) -> np.ndarray:
    net = FullyConvolutionalVGG(model).eval()
    crop_size = crop_size or model.config.training_size
    dense, multi = [], []
    for q in scales:
        x = rescaled(image, q)
        if mode in ("dense", "dense+multi-crop"):
            dense.append(posteriors(net, with_mirrors(x, flips)).mean(0))
        if mode in ("multi-crop", "dense+multi-crop"):
            multi.append(posteriors(net, with_mirrors(crops(x, crop_size, grid), flips)).mean(0))
    kinds = [torch.stack(views).mean(0) for views in (dense, multi) if views]
    return torch.stack(kinds).mean(0).numpy()


def pipeline_posterior(models: list[VGG], data: bytes, scales: list[int], mode: str = "dense", flips: bool = False,
                       weights: list[float] | None = None, grid: int = 5) -> np.ndarray:
    image = load_rgb(data)
    weights = np.asarray(weights or [1.0] * len(models), dtype=np.float64)
    weights = weights / weights.sum()
    members = [member_posterior(m, image, scales, mode, flips, grid) for m in models]
    return np.sum([w * p for w, p in zip(weights, members, strict=True)], axis=0)


def score_maps(model: VGG, image: Image.Image, q: int, flips: bool) -> np.ndarray:
    """The raw class score maps [views, classes, h, w] of the image rescaled to Q (then of its mirror, as computed
    on the mirrored image: column 0 is the mirror's left edge)."""
    net = FullyConvolutionalVGG(model).eval()
    with torch.no_grad():
        return net((with_mirrors(rescaled(image, q), flips) - MEAN) / STD).numpy()
