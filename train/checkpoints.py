"""Training checkpoints: resumable ones with optimizer state, slim ones to ship, and the per-epoch JSON-lines log.

Both kinds hold only tensors, dicts, lists, strings and numbers, so `torch.load(weights_only=True)` (and with it
export.checkpoint.load_vgg) reads them; the weights sit under "state_dict" in torchvision's layout.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

from export.checkpoint import CheckpointError, read_checkpoint

TRAINING_ONLY_KEYS = ("optimizer", "scheduler")


def save_atomic(payload: dict, path: Path) -> None:
    """Write beside the target and rename, so an interrupted save never leaves a truncated checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(handle)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)  # mkstemp's 0600 would hide shipped checkpoints from other users
    try:
        torch.save(payload, temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def load_training_checkpoint(path: Path) -> dict:
    """A checkpoint written by train.fit, with everything needed to resume."""
    payload = read_checkpoint(path)
    required = ("state_dict", "config", "epoch", "optimizer", "scheduler")
    missing = [k for k in required if k not in payload] if isinstance(payload, dict) else list(required)
    if missing:
        raise CheckpointError(f"{path}: not a resumable train.fit checkpoint (missing {', '.join(missing)})")
    return payload


def slim(payload: dict) -> dict:
    """The checkpoint without optimizer state, weights as float32: what is committed and served."""
    out = {k: v for k, v in payload.items() if k not in TRAINING_ONLY_KEYS}
    out["state_dict"] = {k: v.detach().float().contiguous() if v.is_floating_point() else v
                         for k, v in payload["state_dict"].items()}
    return out


def write_slim(source: Path, target: Path) -> None:
    save_atomic(slim(read_checkpoint(source)), target)


def write_log(history: list[dict], path: Path) -> None:
    """One JSON object per epoch; rewritten from the checkpoint's history so a resumed run's log has no gaps."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text("".join(json.dumps(entry) + "\n" for entry in history))
    os.replace(temporary, path)


def default_log_path(checkpoint: Path) -> Path:
    """models/demo/vgg_a.pt -> models/demo/vgg_a.log.jsonl"""
    return checkpoint.with_name(checkpoint.name.split(".")[0] + ".log.jsonl")
