"""The paper's training augmentation (Sec. 3.1) on 0-255 RGB images.

Isotropic rescaling to a training scale S (fixed, or jittered per image in [S_min, S_max]), a random crop of the
training size, an optional horizontal flip and AlexNet's PCA colour shift. Normalisation is not done here: the
training loop applies the exporter's `Normalization`, so trained nets see exactly what the served graph computes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from train.imagefolder import ImageFolder, load_rgb
from vgg.imaging import rescaled_size


def rescale_shortest(image: Image.Image, side: int) -> Image.Image:
    """Isotropic rescale so the shorter side is `side` (the paper's S at training, Q at test time)."""
    size = rescaled_size(*image.size, side)  # the serving preprocess's own rule, so train and test sizes agree
    return image if size == image.size else image.resize(size, Image.Resampling.BILINEAR)


def to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB -> float32 [3, H, W] on the 0-255 scale."""
    return torch.from_numpy(np.asarray(image, dtype=np.float32).transpose(2, 0, 1).copy())


@dataclass(frozen=True)
class Lighting:
    """AlexNet's colour augmentation: add sum_i alpha_i * sqrt(lambda_i) * p_i to every pixel, alpha_i ~ N(0, std).

    p_i, lambda_i are the eigenvectors and eigenvalues of the training set's RGB covariance. AlexNet multiplies by
    lambda_i on a 0-1 pixel scale; the square root (the spread along each component) makes the shift independent of
    the pixel scale, so std=0.1 moves colours by a tenth of the data's own spread along each principal axis.
    """

    eigenvalues: tuple[float, float, float]
    eigenvectors: tuple[tuple[float, float, float], ...]  # a 3x3 matrix, row-major, whose columns are p_1..p_3
    std: float = 0.1

    @classmethod
    def from_dataset(cls, dataset: ImageFolder, std: float, seed: int, images: int = 200,
                     pixels_per_image: int = 2000) -> Lighting:
        """PCA of RGB pixel values over a deterministic sample of the training images."""
        rng = np.random.default_rng([seed, 15485863])
        chosen = rng.choice(len(dataset), size=min(images, len(dataset)), replace=False)
        sample = []
        for index in chosen:
            pixels = np.asarray(load_rgb(dataset.samples[int(index)][0]), dtype=np.float64).reshape(-1, 3)
            sample.append(pixels[rng.choice(len(pixels), size=min(pixels_per_image, len(pixels)), replace=False)])
        covariance = np.cov(np.concatenate(sample), rowvar=False)
        values, vectors = np.linalg.eigh(covariance)
        order = np.argsort(values)[::-1]
        values, vectors = np.clip(values[order], 0, None), vectors[:, order]
        return cls(tuple(float(v) for v in values), tuple(tuple(float(x) for x in row) for row in vectors), std)

    def shift(self, rng: np.random.Generator) -> torch.Tensor:
        """One image's RGB offset, shape [3, 1, 1]."""
        alpha = rng.normal(0.0, self.std, size=3)
        offset = np.asarray(self.eigenvectors) @ (alpha * np.sqrt(np.asarray(self.eigenvalues)))
        return torch.tensor(offset, dtype=torch.float32).view(3, 1, 1)

    def to_dict(self) -> dict:
        return {"eigenvalues": list(self.eigenvalues), "eigenvectors": [list(r) for r in self.eigenvectors],
                "std": self.std}


@dataclass(frozen=True)
class TrainTransform:
    """Image -> augmented training crop, float32 [3, size, size] on the 0-255 scale."""

    size: int
    scale_min: int
    scale_max: int
    flip: bool = False
    lighting: Lighting | None = None

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> torch.Tensor:
        scale = int(rng.integers(self.scale_min, self.scale_max + 1))
        image = rescale_shortest(image, scale)
        width, height = image.size
        left, top = int(rng.integers(0, width - self.size + 1)), int(rng.integers(0, height - self.size + 1))
        image = image.crop((left, top, left + self.size, top + self.size))
        if self.flip and rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        crop = to_tensor(image)
        if self.lighting is not None and self.lighting.std > 0:
            crop += self.lighting.shift(rng)
        return crop
