"""Which images each process trains on: one shuffled list of global batches per epoch, each split over processes.

Everything random is a function of (seed, epoch, image), so a resumed run draws the same batches and augmentations
as an uninterrupted one, the processes agree on the batches without communicating, and N processes see exactly the
crops one process would.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from train.augment import TrainTransform
from train.distributed import World
from train.imagefolder import ImageFolder, ImageLoader


def global_batches(count: int, batch_size: int, world_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """Shuffled batches of `batch_size`; the last one is kept if it has at least one image per process.

    Every batch is trimmed to a multiple of the world size so the shards are equal and DDP's average of the
    per-process mean gradients is exactly the mean gradient of the batch.
    """
    order = np.random.default_rng([seed, epoch, 2654435761]).permutation(count)
    batches = []
    for start in range(0, count, batch_size):
        batch = order[start:start + batch_size]
        batch = batch[: len(batch) - len(batch) % world_size]
        if len(batch):
            batches.append(batch)
    return batches


def shard(batch: np.ndarray, world: World) -> np.ndarray:
    """This process's share of a global batch: a contiguous 1/N of it."""
    per_rank = len(batch) // world.size
    return batch[world.rank * per_rank:(world.rank + 1) * per_rank]


def training_batches(dataset: ImageFolder, load: ImageLoader, transform: TrainTransform, batch_size: int, world: World,
                     seed: int, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield this process's (crops 0-255 [n,3,s,s], labels [n]) for every global batch of the epoch."""
    for batch in global_batches(len(dataset), batch_size, world.size, seed, epoch):
        indices = shard(batch, world)
        crops = [transform(load(dataset.samples[int(i)][0]), np.random.default_rng([seed, epoch, int(i), 40503]))
                 for i in indices]
        labels = torch.tensor([dataset.samples[int(i)][1] for i in indices], dtype=torch.int64)
        yield torch.stack(crops), labels
