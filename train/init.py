"""The paper's two initialisations: Glorot, or a deeper net started from a trained configuration A (Sec. 3.1).

"We initialised the first four convolutional layers and the last three fully-connected layers with the layers of
net A (the intermediate layers were initialised randomly)." A's first four convs are conv1_1, conv2_1, conv3_1 and
conv3_2; every configuration has layers of those names and shapes, so they are copied by name (stage and position in
the stage), not by index: in D, A's second conv becomes conv2_1, the third.
"""

from __future__ import annotations

from pathlib import Path

import torch

from export.checkpoint import CheckpointError, extract_state_dict, infer_config, read_checkpoint
from vgg.nets import VGG, VGGConfig

COPIED_CONVS = 4


def conv_names(config: VGGConfig) -> dict[str, int]:
    """'conv<stage>_<position>' -> index in `features`, following make_features' layer order."""
    names: dict[str, int] = {}
    index, stage, position = 0, 1, 0
    per_conv = 3 if config.batch_norm else 2
    for kind, _ in config.tokens():
        if kind == "pool":
            stage, position, index = stage + 1, 0, index + 1
        elif kind == "lrn":
            index += 1
        else:
            position += 1
            names[f"conv{stage}_{position}"] = index
            index += per_conv
    return names


def init_from_a(model: VGG, path: Path) -> list[str]:
    """Copy A's first four convs and fc6-fc8 into `model` (already Glorot-initialised); returns what was copied."""
    state = extract_state_dict(read_checkpoint(path))
    source = infer_config(state)
    if source.layout not in ("A", "A-LRN"):
        raise CheckpointError(f"{path}: --init-from expects a configuration A checkpoint, found {source.name}")
    target = model.config
    source_names, target_names = conv_names(source), conv_names(target)
    copies: list[tuple[str, str]] = []  # (target key, source key)
    for name in list(source_names)[:COPIED_CONVS]:
        if name not in target_names:
            raise CheckpointError(f"{target.name} has no layer {name} to initialise from {path}")
        src, dst = source_names[name], target_names[name]
        copies += [(f"features.{dst}.{p}", f"features.{src}.{p}") for p in ("weight", "bias")]
        if source.batch_norm and target.batch_norm:
            copies += [(f"features.{dst + 1}.{p}", f"features.{src + 1}.{p}")
                       for p in ("weight", "bias", "running_mean", "running_var")]
    copies += [(f"classifier.{i}.{p}", f"classifier.{i}.{p}") for i in (0, 3, 6) for p in ("weight", "bias")]
    own = model.state_dict()
    for dst, src in copies:
        if own[dst].shape != state[src].shape:
            raise CheckpointError(
                f"{path}: {src} has shape {tuple(state[src].shape)} but {dst} of {target.name} needs "
                f"{tuple(own[dst].shape)}; train A with the same --width, --hidden, --train-size and classes")
    with torch.no_grad():
        for dst, src in copies:
            own[dst].copy_(state[src].to(own[dst].dtype))
    return [dst for dst, _ in copies]


def initialise(model: VGG, init_from: Path | None) -> list[str]:
    """Glorot everywhere, then A's layers where asked; returns the keys taken from A."""
    model.init_glorot()
    return init_from_a(model, init_from) if init_from is not None else []
