"""Data parallelism as the paper's multi-GPU training: every batch split over N processes, gradients averaged.

On CPU the processes talk over torch.distributed's gloo backend on localhost; DistributedDataParallel all-reduces
(averages) the gradients during backward, so each step equals one step on the whole batch when the shards are equal.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spawn(worker: Callable[..., None], size: int, *args: object) -> None:
    """Run worker(World(rank, size), *args) in `size` fresh processes and wait for all of them."""
    port = free_port()
    mp.spawn(_entry, args=(worker, size, port, args), nprocs=size, join=True)


def _entry(rank: int, worker: Callable[..., None], size: int, port: int, args: tuple) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=size)
    try:
        worker(World(rank, size), *args)
    finally:
        dist.destroy_process_group()


def all_sum(values: list[float], world: World) -> list[float]:
    """Sum numbers over all processes (a no-op for one process)."""
    if world.size == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def barrier(world: World) -> None:
    if world.size > 1:
        dist.barrier()
