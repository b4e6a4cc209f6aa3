"""ImageFolder datasets (root/<class>/<image>) read with PIL, and the train/validation split of a data directory.

Mirrors torchvision's ImageFolder conventions (classes are the sorted sub-folder names, labels their indices) without
depending on torchvision. Every user mistake raises `DatasetError` with one sentence, which the CLI prints as is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp"})
VAL_FOLDER_NAMES = ("val", "valid", "validation")


class DatasetError(Exception):
    """A dataset that cannot be trained on; the message says why in one line."""


@dataclass(frozen=True)
class ImageFolder:
    """The (path, label) pairs of one split and the class names its labels index."""

    root: Path
    classes: tuple[str, ...]
    samples: tuple[tuple[Path, int], ...]

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> np.ndarray:
        return np.array([label for _, label in self.samples], dtype=np.int64)

    def subset(self, indices: np.ndarray) -> ImageFolder:
        return ImageFolder(self.root, self.classes, tuple(self.samples[int(i)] for i in indices))


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def scan(root: Path, classes: tuple[str, ...] | None = None) -> ImageFolder:
    """Index root/<class>/*; with `classes` given (a validation split), use those labels and allow missing ones."""
    if not root.exists():
        raise DatasetError(f"{root}: no such directory")
    if not root.is_dir():
        raise DatasetError(f"{root}: not a directory")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        loose = any(_is_image(p) for p in root.iterdir())
        hint = " (images must sit in one sub-folder per class)" if loose else ""
        raise DatasetError(f"{root}: no class sub-folders{hint}")
    names = classes if classes is not None else tuple(found)
    if classes is not None:
        unknown = [name for name in found if name not in classes]
        if unknown:
            raise DatasetError(f"{root}: classes {', '.join(unknown[:5])} do not occur in the training split")
    index = {name: i for i, name in enumerate(names)}
    samples: list[tuple[Path, int]] = []
    empty: list[str] = []
    for name in found:
        images = sorted(p for p in (root / name).rglob("*") if _is_image(p))
        if not images:
            empty.append(name)
        samples += [(path, index[name]) for path in images]
    if not samples:
        raise DatasetError(f"{root}: no images in its {len(found)} class folders "
                           f"(expected {', '.join(sorted(IMAGE_EXTENSIONS))})")
    if empty and classes is None:
        raise DatasetError(f"{root}: class folders without images: {', '.join(empty[:5])}")
    if len(names) < 2:
        raise DatasetError(f"{root}: only one class ({names[0]}); a classifier needs at least two")
    return ImageFolder(root, names, tuple(samples))


def load_rgb(path: Path) -> Image.Image:
    """Decode any PIL-readable image as 8-bit RGB."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError) as exc:
        raise DatasetError(f"{path}: cannot read image ({exc.__class__.__name__})") from None


class ImageLoader:
    """load_rgb, optionally keeping every decoded image in memory: small datasets then decode once, not per epoch."""

    def __init__(self, cache: bool = False) -> None:
        self.cache = cache
        self._images: dict[Path, Image.Image] = {}

    def __call__(self, path: Path) -> Image.Image:
        if not self.cache:
            return load_rgb(path)
        if path not in self._images:
            self._images[path] = load_rgb(path)
        return self._images[path]


def stratified_holdout(dataset: ImageFolder, fraction: float, seed: int) -> tuple[ImageFolder, ImageFolder]:
    """Split off `fraction` of every class (at least one image where a class has two) for validation."""
    rng = np.random.default_rng([seed, 104729])
    labels = dataset.labels
    held: list[int] = []
    for label in range(len(dataset.classes)):
        members = rng.permutation(np.flatnonzero(labels == label))
        count = min(len(members) - 1, max(1, round(len(members) * fraction))) if len(members) > 1 else 0
        held += members[:count].tolist()
    held_set = set(held)
    kept = [i for i in range(len(dataset)) if i not in held_set]
    if not held:
        raise DatasetError(f"{dataset.root}: too few images to hold out a validation split; add a val/ folder")
    return dataset.subset(np.array(kept)), dataset.subset(np.array(sorted(held)))


def resolve_splits(data: Path, val: Path | None, val_fraction: float, seed: int) -> tuple[ImageFolder, ImageFolder]:
    """Training and validation splits of a data directory.

    data is either an ImageFolder itself or holds train/ (and optionally val/); the validation split is --val,
    else data/val, else a stratified fraction of the training images. A test/ folder is never used: it stays
    held out for the final evaluation.
    """
    if not data.exists():
        raise DatasetError(f"{data}: no such directory")
    train_root = data / "train" if (data / "train").is_dir() else data
    train = scan(train_root)
    if val is None:
        val = next((data / name for name in VAL_FOLDER_NAMES if (data / name).is_dir()), None)
    if val is not None:
        return train, scan(val, classes=train.classes)
    if not 0 < val_fraction < 1:
        raise DatasetError(f"{data}: no val/ folder, and --val-fraction {val_fraction} cannot hold out images")
    return stratified_holdout(train, val_fraction, seed)
