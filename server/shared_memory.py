"""What Triton's Python backend needs of /dev/shm, checked before Triton starts instead of failing every model.

Each Python-backend model instance (the pipeline steps, and here the onnxruntime backend too) talks to its stub
process through a region in /dev/shm that starts at ``REGION_BYTES`` and grows by ``GROWTH_BYTES`` when a request's
tensors do not fit. A container's /dev/shm is a small tmpfs (Docker: 64 MB); when the regions don't fit, every model
fails to load with an error deep in Triton's log, so the launcher compares the repository's need with the capacity
first and refuses in one line that names the fix.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

SHARED_MEMORY = Path("/dev/shm")
MIB = 1024 * 1024
REGION_BYTES = 1 * MIB  # each instance's region at load
GROWTH_BYTES = 4 * MIB  # a region grows in these steps for a request's large tensors (views of a big image)
REQUEST_HEADROOM_BYTES = 24 * MIB  # beyond the regions at load: what requests in flight grow them by


class SharedMemoryTooSmall(RuntimeError):
    """/dev/shm cannot hold the repository's stubs; the message names the size that would."""


def python_instances(repository: Path, python_based: tuple[str, ...] = ("onnxruntime_onnx",)) -> int:
    """Model instances that run in a Python-backend stub: backend "python", and the platforms served by a
    Python-based backend (the project's onnxruntime backend on the pip-installed Triton)."""
    count = 0
    for path in sorted(Path(repository).glob("*/config.pbtxt")):
        config = _without_comments(path.read_text())
        backend = re.search(r'^\s*backend\s*:\s*"([^"]*)"', config, re.MULTILINE)
        platform = re.search(r'^\s*platform\s*:\s*"([^"]*)"', config, re.MULTILINE)
        if (backend and backend[1] == "python") or (platform and platform[1] in python_based):
            count += _instances(config)
    return count


def _without_comments(text: str) -> str:
    return "\n".join(line.split("#", 1)[0] for line in text.splitlines())


def _instances(config: str) -> int:
    """The instance_group entries' counts in a config's text format (``instance_group { count: 2 }`` or
    ``instance_group [ { count: 2 }, { ... } ]``); an entry without a count is one instance, no group one too.
    Read without protobuf: the launcher's process stays free of tritonclient and numpy."""
    total, found = 0, False
    for match in re.finditer(r"\binstance_group\s*:?\s*([\[{])", config):
        found = True
        depth, end = 0, match.start(1)
        for end in range(match.start(1), len(config)):
            depth += config[end] in "[{"
            depth -= config[end] in "]}"
            if depth == 0:
                break
        block = config[match.start(1):end + 1]
        entries = block.count("{")
        counts = [int(n) for n in re.findall(r"\bcount\s*:\s*(\d+)", block)]
        total += sum(counts) + max(0, entries - len(counts))
    return total if found else 1


def needed_bytes(instances: int) -> int:
    return instances * REGION_BYTES + REQUEST_HEADROOM_BYTES


def capacity_bytes(folder: Path = SHARED_MEMORY) -> int:
    stats = os.statvfs(folder)
    return stats.f_blocks * stats.f_frsize


def check_capacity(instances: int, folder: Path = SHARED_MEMORY) -> None:
    need, have = needed_bytes(instances), capacity_bytes(folder)
    if have < need:
        suggestion = max(256, 1 << (need // MIB - 1).bit_length())  # the next power of two, in MiB
        raise SharedMemoryTooSmall(
            f"{folder} holds {have // MIB} MB but this repository's {instances} Python-backend instances need "
            f"{need // MIB} MB: give the container more shared memory (docker run --shm-size={suggestion}m; "
            f"compose shm_size; Kubernetes an emptyDir with medium: Memory at /dev/shm)")
