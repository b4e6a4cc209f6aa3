"""One epoch of mini-batch SGD, and the validation accuracy that drives the learning-rate schedule."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from train.augment import TrainTransform
from train.batches import global_batches, training_batches
from train.dense import NORMALIZATION, dense_posteriors
from train.distributed import World, all_sum
from train.imagefolder import ImageFolder, ImageLoader
from train.progress import ProgressBar
from vgg.nets import VGG


def train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, dataset: ImageFolder, load: ImageLoader,
                transform: TrainTransform, batch_size: int, world: World, seed: int, epoch: int,
                progress: bool) -> tuple[float, float]:
    """Train on every global batch once; returns (mean loss, accuracy) over all processes' crops.

    `model` may be wrapped in DistributedDataParallel, which averages the gradients across processes in backward.
    """
    model.train()
    torch.manual_seed(int(np.random.SeedSequence([seed, epoch, world.rank, 1]).generate_state(1)[0]))  # dropout
    steps = len(global_batches(len(dataset), batch_size, world.size, seed, epoch))
    bar = ProgressBar(steps, prefix=f"epoch {epoch} ", enabled=progress and world.is_main)
    loss_sum, correct, seen = 0.0, 0.0, 0.0
    for crops, labels in training_batches(dataset, load, transform, batch_size, world, seed, epoch):
        logits = model(NORMALIZATION.apply(crops))
        loss = nn.functional.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.item() * len(labels)
        correct += (logits.argmax(1) == labels).sum().item()
        seen += len(labels)
        bar.update(loss=loss_sum / seen, acc=correct / seen)
    bar.close()
    loss_sum, correct, seen = all_sum([loss_sum, correct, seen], world)
    return loss_sum / max(seen, 1), correct / max(seen, 1)


def validate(vgg: VGG, dataset: ImageFolder, load: ImageLoader, scale: int, world: World) -> float:
    """Top-1 accuracy of single-scale dense evaluation at Q=scale; each process scores every N-th image."""
    mine = dataset.samples[world.rank::world.size]
    posteriors = dense_posteriors(vgg, (load(path) for path, _ in mine), [scale])
    labels = torch.tensor([label for _, label in mine], dtype=torch.int64)
    correct = float((posteriors.argmax(1) == labels).sum()) if len(mine) else 0.0
    correct, seen = all_sum([correct, float(len(mine))], world)
    return correct / max(seen, 1)
