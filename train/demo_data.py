"""Build the demo dataset: scikit-learn's bundled handwritten digits, drawn at varied scale and position on canvases.

The 8x8 digits ship inside scikit-learn (no download). Each one is upscaled and pasted, as an alpha mask in a colour
that contrasts with a textured background, onto an RGB canvas of random size and aspect, its side 28-85 % of the
canvas's shorter side (a 3x range of object scale), so that multi-scale training and evaluation have something to do.

    python -m train.demo_data --out data/digits

writes train/, val/ and test/ ImageFolders (one folder per class "0".."9") from disjoint sets of source digits, so
test images show handwriting never seen in training, plus labels.txt and manifest.json. Every image is a function
of (seed, split, class, index) alone, so a small build holds exactly the first images of a full one.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SPLITS = ("train", "val", "test")
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
# Fractions of each class's source digits reserved for the held-out splits; the rest are training sources.
TEST_FRACTION, VAL_FRACTION = 0.3, 0.1
CANVAS_SIDES = (96, 160)  # inclusive range of canvas width and height, drawn independently
DIGIT_FRACTION = (0.28, 0.85)  # digit side over the canvas's shorter side, log-uniform: a 3x range of object scale
MIN_CONTRAST = 130.0  # how much darker the ink is than the paper under it (luminance, 0-255)


@dataclass(frozen=True)
class Counts:
    """Images per class and split."""

    train: int = 250
    val: int = 30
    test: int = 60


def source_split(targets: np.ndarray, seed: int) -> dict[str, dict[int, np.ndarray]]:
    """Per class, disjoint source-digit indices for train, val and test; depends on the seed only."""
    rng = np.random.default_rng([seed, 7919])
    split: dict[str, dict[int, np.ndarray]] = {name: {} for name in SPLITS}
    for label in range(10):
        indices = rng.permutation(np.flatnonzero(targets == label))
        n_test, n_val = round(len(indices) * TEST_FRACTION), round(len(indices) * VAL_FRACTION)
        split["test"][label] = np.sort(indices[:n_test])
        split["val"][label] = np.sort(indices[n_test:n_test + n_val])
        split["train"][label] = np.sort(indices[n_test + n_val:])
    return split


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Light "paper": a smooth random colour field with a few faint strokes, float32 HxWx3 in 0-255."""
    base = rng.uniform(165, 250, size=3)
    grid = np.clip(base + rng.normal(0, 15, size=(3, 3, 3)), 0, 255).astype(np.uint8)
    field = Image.fromarray(grid, "RGB").resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(field)
    for _ in range(int(rng.integers(0, 3))):
        colour = tuple(int(c) for c in np.clip(base - rng.uniform(10, 50), 0, 255))
        points = [(float(rng.uniform(0, width)), float(rng.uniform(0, height))) for _ in range(3)]
        draw.line(points, fill=colour, width=int(rng.integers(1, 3)))
    return np.asarray(field, dtype=np.float32)


def _luminance(rgb: np.ndarray) -> float:
    return float(rgb @ np.array([0.299, 0.587, 0.114]))


def _ink(rng: np.random.Generator, paper: float) -> np.ndarray:
    """A pen colour (black, blue, red, green, ... at random) at least MIN_CONTRAST darker than the paper under it."""
    for _ in range(50):
        colour = rng.uniform(0, 120, size=3)
        if paper - _luminance(colour) >= MIN_CONTRAST:
            return colour
    return np.zeros(3)


def render(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """One 8x8 digit (values 0-16) drawn onto a random canvas; all randomness comes from rng."""
    width, height = (int(v) for v in rng.integers(CANVAS_SIDES[0], CANVAS_SIDES[1] + 1, size=2))
    canvas = _background(rng, width, height)
    low, high = np.log(DIGIT_FRACTION[0]), np.log(DIGIT_FRACTION[1])
    side = np.exp(rng.uniform(low, high)) * min(width, height)
    aspect = rng.uniform(0.85, 1.15)
    box_w, box_h = max(8, round(side * min(1.0, aspect))), max(8, round(side / max(1.0, aspect)))
    mask_image = Image.fromarray((digit * (255 / 16)).astype(np.uint8), "L")
    mask = np.asarray(mask_image.resize((box_w, box_h), Image.Resampling.BICUBIC), dtype=np.float32)[..., None] / 255
    x, y = int(rng.integers(0, width - box_w + 1)), int(rng.integers(0, height - box_h + 1))
    region = canvas[y:y + box_h, x:x + box_w]
    colour = _ink(rng, _luminance(region.reshape(-1, 3).mean(0)))
    canvas[y:y + box_h, x:x + box_w] = region * (1 - mask) + colour * mask
    return Image.fromarray(np.clip(canvas, 0, 255).round().astype(np.uint8), "RGB")


def build(out: str | Path, per_class_train: int = Counts.train, per_class_val: int = Counts.val,
          per_class_test: int = Counts.test, seed: int = 0) -> dict:
    """Write the dataset under out (replacing its split folders) and return the manifest it also saves."""
    from sklearn.datasets import load_digits  # imported here: the package's other modules do not need sklearn

    out = Path(out)
    digits = load_digits()
    images, targets = digits.images, digits.target
    split = source_split(targets, seed)
    counts = {"train": per_class_train, "val": per_class_val, "test": per_class_test}
    out.mkdir(parents=True, exist_ok=True)
    manifest: dict = {"seed": seed, "classes": [str(c) for c in range(10)], "per_class": counts, "sources": {}}
    for name in SPLITS:
        folder = out / name
        if folder.exists():
            shutil.rmtree(folder)
        manifest["sources"][name] = {str(c): split[name][c].tolist() for c in range(10)}
        for label in range(10):
            class_dir = folder / str(label)
            class_dir.mkdir(parents=True)
            sources = split[name][label]
            for index in range(counts[name]):
                source = int(sources[index % len(sources)])
                rng = np.random.default_rng([seed, SPLIT_IDS[name], label, index])
                render(images[source], rng).save(class_dir / f"{label}_{index:04d}_src{source:04d}.png",
                                                 compress_level=1)
    (out / "labels.txt").write_text("\n".join(manifest["classes"]) + "\n")
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.demo_data", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/digits"))
    parser.add_argument("--per-class-train", type=int, default=Counts.train)
    parser.add_argument("--per-class-val", type=int, default=Counts.val)
    parser.add_argument("--per-class-test", type=int, default=Counts.test)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if min(args.per_class_train, args.per_class_val, args.per_class_test) < 0:
        parser.error("image counts must not be negative")
    started = time.perf_counter()
    try:
        manifest = build(args.out, args.per_class_train, args.per_class_val, args.per_class_test, args.seed)
    except OSError as exc:
        print(f"demo_data: error: {exc}", file=sys.stderr)
        return 1
    total = sum(manifest["per_class"].values()) * len(manifest["classes"])
    print(f"wrote {total} images to {args.out} in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
