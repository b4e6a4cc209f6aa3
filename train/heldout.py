"""Held-out accuracy of trained checkpoints with the paper's dense evaluation, single- and multi-scale.

    python -m train.heldout models/demo/vgg_a.pt models/demo/vgg_d.pt --data data/digits/test --scales 64 96 128

prints top-1 / top-5 accuracy at each test scale Q and averaged over all of them (the paper's multi-scale
evaluation). A quick check of trained models in PyTorch, independent of the serving stack.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from export.checkpoint import CheckpointError, load_vgg
from train.dense import dense_posteriors
from train.imagefolder import DatasetError, ImageFolder, load_rgb, scan
from vgg.nets import VGG


def topk_accuracy(posteriors: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    k = min(k, posteriors.shape[1])
    hits = (posteriors.topk(k, dim=1).indices == labels[:, None]).any(dim=1)
    return float(hits.float().mean()) if len(labels) else 0.0


def evaluate(vgg: VGG, dataset: ImageFolder, scales: Sequence[int]) -> dict[str, dict[str, float]]:
    """{'Q=64': {'top1': .., 'top5': ..}, ..., 'multi-scale 64/96/128': {...}} on every image of the dataset."""
    images = [load_rgb(path) for path, _ in dataset.samples]
    labels = torch.from_numpy(dataset.labels)
    per_scale = {q: dense_posteriors(vgg, images, [q]) for q in scales}
    results = {f"Q={q}": _scores(p, labels) for q, p in per_scale.items()}
    if len(scales) > 1:
        results["multi-scale " + "/".join(map(str, scales))] = _scores(sum(per_scale.values()) / len(scales), labels)
    return results


def _scores(posteriors: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    return {f"top{k}": round(topk_accuracy(posteriors, labels, k), 4) for k in (1, 5)}


def check_classes(path: Path, dataset: ImageFolder) -> None:
    """The folder's class names must be the ones the checkpoint was trained on, in the same order."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    classes = saved.get("classes") if isinstance(saved, dict) else None
    if classes is not None and list(classes) != list(dataset.classes):
        raise DatasetError(f"{dataset.root}: classes {list(dataset.classes)[:5]}... differ from {path}'s "
                           f"{list(classes)[:5]}...")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.heldout", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", type=Path, nargs="+")
    parser.add_argument("--data", type=Path, default=Path("data/digits/test"), help="held-out ImageFolder")
    parser.add_argument("--scales", type=int, nargs="+", default=[64, 96, 128], help="test scales Q")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    try:
        dataset = scan(args.data)
        report = {}
        for path in args.checkpoints:
            vgg = load_vgg(path)
            check_classes(path, dataset)
            too_small = [q for q in args.scales if q < vgg.config.training_size]
            if too_small:
                raise DatasetError(f"--scales {too_small} below {path}'s training size {vgg.config.training_size}")
            report[str(path)] = evaluate(vgg, dataset, args.scales)
    except (DatasetError, CheckpointError) as exc:
        print(f"heldout: error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    print(f"{len(dataset)} images in {args.data}, top-1 / top-5 accuracy")
    for path, results in report.items():
        cells = "  ".join(f"{name} {r['top1']:.1%} / {r['top5']:.1%}" for name, r in results.items())
        print(f"{path}: {cells}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
