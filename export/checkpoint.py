"""Load VGG checkpoints of any common layout and infer their configuration from the tensors.

Every failure raises `CheckpointError` with one readable sentence, which the CLI prints without a traceback.
"""

from __future__ import annotations

import math
import pickle
import zipfile
from pathlib import Path

import torch

from vgg.nets import LAYOUTS, VGG, VGGConfig, parse_arch

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "module", "weights", "params")


class CheckpointError(Exception):
    """A checkpoint that cannot become a VGG model; the message says why in one line."""


def read_checkpoint(path: Path, trust_pickle: bool = False) -> object:
    """torch.load with weights_only=True; a pickled nn.Module only when the user trusts the file."""
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: file is empty")
    with path.open("rb") as file:
        head = file.read(4)
    if head.startswith(b"PK\x03\x04"):  # torch.save's zip format
        if not zipfile.is_zipfile(path):
            raise CheckpointError(f"{path}: truncated or corrupt checkpoint (incomplete zip archive)")
    elif not head.startswith(b"\x80"):  # nor the legacy pickle format
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (neither torch.save's zip format nor a pickle)")
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as exc:
        if not trust_pickle and "GLOBAL" in str(exc):
            raise CheckpointError(
                f"{path}: holds pickled Python objects (e.g. a whole nn.Module), which run code when loaded; "
                "re-save it with torch.save(model.state_dict(), ...) or pass --trust-pickle if you trust its source"
            ) from None
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({_first_line(exc)})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        message = _first_line(exc)
        if "central directory" in message or "EOF" in message or isinstance(exc, EOFError):
            raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({message})") from None
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({message})") from None


def extract_state_dict(obj: object) -> dict[str, torch.Tensor]:
    """Unwrap {'state_dict': ...}-style dicts, nn.Modules and DataParallel 'module.' prefixes."""
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    for _ in range(3):  # wrappers nest at most a couple of levels in practice
        if not isinstance(obj, dict):
            break
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        inner = next((obj[k] for k in WRAPPER_KEYS if k in obj and isinstance(obj[k], (dict, torch.nn.Module))), None)
        if inner is None:
            break
        obj = inner.state_dict() if isinstance(inner, torch.nn.Module) else inner
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"expected a state dict of tensors, found {type(obj).__name__}")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        keys = ", ".join(list(map(str, obj))[:5])
        raise CheckpointError(f"expected a state dict of tensors, found a dict without tensors (keys: {keys})")
    for prefix in ("module.", "_orig_mod.", "model."):
        if all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix):]: v for k, v in tensors.items()}
    return tensors


def infer_config(state: dict[str, torch.Tensor]) -> VGGConfig:
    """Recover layout, batch norm, width, classes, hidden size and fc6 kernel from the tensors alone."""
    feature_keys = [k for k in state if k.startswith("features.")]
    if not feature_keys or "classifier.0.weight" not in state:
        sample = ", ".join(sorted(state)[:4])
        raise CheckpointError(f"not a VGG state dict: no 'features.N' / 'classifier.0' tensors (found {sample}, ...)")
    convs: dict[int, torch.Tensor] = {}
    bn_indices: set[int] = set()
    for key in feature_keys:
        parts = key.split(".")
        if len(parts) != 3 or not parts[1].isdigit():
            raise CheckpointError(f"not a VGG state dict: unexpected key {key!r}")
        index = int(parts[1])
        if parts[2] == "weight" and state[key].ndim == 4:
            convs[index] = state[key]
        elif parts[2] == "running_mean":
            bn_indices.add(index)
    if not convs:
        raise CheckpointError("not a VGG state dict: no convolution weights under 'features'")
    batch_norm = bool(bn_indices)
    per_conv = 3 if batch_norm else 2  # conv, [bn], relu
    tokens: list[tuple[str, int]] = []
    ordered = sorted(convs)
    for i, index in enumerate(ordered):
        weight = convs[index]
        kernel = weight.shape[-1]
        tokens.append(("conv3" if kernel == 3 else "conv1" if kernel == 1 else f"conv{kernel}", weight.shape[0]))
        if i + 1 < len(ordered):
            gap = ordered[i + 1] - index - per_conv
            tokens += [("lrn", 0), ("pool", 0)] if gap == 2 else [("pool", 0)] * gap
    tokens.append(("pool", 0))
    structure = [kind for kind, _ in tokens]
    first = tokens[0][1]
    width = first / 64
    classifier = state["classifier.0.weight"]
    if classifier.ndim != 2 or "classifier.6.weight" not in state:
        raise CheckpointError("not a VGG state dict: classifier.0/classifier.6 are not the fc6/fc8 linear layers")
    hidden, fc6_inputs = classifier.shape
    num_classes = state["classifier.6.weight"].shape[0]
    last = tokens[-2][1]
    k = math.isqrt(fc6_inputs // max(last, 1))
    if k * k * last != fc6_inputs:
        raise CheckpointError(
            f"fc6 takes {fc6_inputs} inputs, which is not {last} channels times a square kernel")
    for layout in LAYOUTS:
        config = VGGConfig(layout, batch_norm, width, int(num_classes), int(hidden), k)
        if [kind for kind, _ in config.tokens()] == structure and config.tokens() == tokens:
            return config
    summary = " ".join("M" if kind == "pool" else kind.upper() if kind == "lrn" else str(c) for kind, c in tokens)
    raise CheckpointError(f"convolution layout matches none of VGG A, A-LRN, B, C, D, E: {summary}")


def config_for_arch(arch: str, state: dict[str, torch.Tensor]) -> VGGConfig:
    """Apply a user's --arch; sizes that the name does not fix still come from the tensors."""
    try:
        layout, batch_norm = parse_arch(arch)
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None
    try:
        inferred = infer_config(state)
        width, classes, hidden, k = inferred.width, inferred.num_classes, inferred.hidden, inferred.fc6_kernel
    except CheckpointError:
        first = next((v for k, v in state.items() if k.endswith("weight") and v.ndim == 4), None)
        width = first.shape[0] / 64 if first is not None else 1.0
        classes = state["classifier.6.weight"].shape[0] if "classifier.6.weight" in state else 1000
        hidden = state["classifier.0.weight"].shape[0] if "classifier.0.weight" in state else 4096
        k = 7
    return VGGConfig(layout, batch_norm, width, int(classes), int(hidden), k)


def build_model(config: VGGConfig, state: dict[str, torch.Tensor]) -> VGG:
    """Instantiate and load strictly, turning torch's long report into one sentence."""
    with torch.device("meta"):  # no throw-away random weights: a full-size VGG is 0.5 GB
        model = VGG(config)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected and not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_few(unexpected)}")
        raise CheckpointError(f"checkpoint does not fit {config.name}: " + "; ".join(parts))
    for key, tensor in expected.items():
        if state[key].shape != tensor.shape:
            raise CheckpointError(
                f"checkpoint does not fit {config.name}: {key} has shape {tuple(state[key].shape)}, "
                f"expected {tuple(tensor.shape)}")
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items() if k in expected}
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def load_vgg(path: Path, arch: str | None = None, trust_pickle: bool = False) -> VGG:
    """The one entry point: file -> evaluated VGG model, or CheckpointError."""
    state = extract_state_dict(read_checkpoint(path, trust_pickle))
    config = config_for_arch(arch, state) if arch else infer_config(state)
    return build_model(config, state)


def _few(keys: list[str], limit: int = 3) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
