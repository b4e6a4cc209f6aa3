"""The paper's dense evaluation in PyTorch (Sec. 3.2), used for validation during training and held-out accuracy.

The test image is rescaled so its shorter side is Q, the fully-convolutional net (fc6 as a kxk conv) is applied to
the whole of it, and the class score map is averaged spatially before the soft-max, as the exported ONNX graph does.
Validating this way measures what is served, and sees the whole image rather than a centre crop.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from PIL import Image

from export.onnx_graph import Normalization
from train.augment import rescale_shortest, to_tensor
from vgg.nets import VGG, FullyConvolutionalVGG

NORMALIZATION = Normalization.preset("torchvision")


def dense_posteriors(vgg: VGG, images: Iterable[Image.Image], scales: Sequence[int]) -> torch.Tensor:
    """Soft-max posteriors [N, classes], averaged over the scales Q (one scale: single-scale evaluation)."""
    was_training = vgg.training
    fcn = FullyConvolutionalVGG(vgg).eval()  # shares vgg.features; copies the FC layers as convs
    rows = []
    try:
        with torch.no_grad():
            for image in images:
                total = 0
                for scale in scales:
                    x = NORMALIZATION.apply(to_tensor(rescale_shortest(image, scale))[None])
                    total = total + torch.softmax(fcn(x).mean(dim=(2, 3)), dim=1)
                rows.append(total / len(scales))
    finally:
        vgg.train(was_training)
    return torch.cat(rows) if rows else torch.zeros(0, vgg.config.num_classes)
