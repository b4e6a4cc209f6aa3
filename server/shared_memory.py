"""What Triton's Python backend needs of /dev/shm, checked before Triton starts instead of failing every model.

Each Python-backend model instance (the pipeline steps, and here the onnxruntime backend too) talks to its stub
process through a region in /dev/shm that starts at ``REGION_BYTES`` and grows by ``GROWTH_BYTES`` when a request's
tensors do not fit. A container's /dev/shm is a small tmpfs (Docker: 64 MB); when the regions don't fit, every model
fails to load with an error deep in Triton's log, so the launcher compares the repository's need with the capacity
first and refuses in one line that names the fix.
"""

from __future__ import annotations

import os
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

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
        config = text_format.Parse(path.read_text(), mc.ModelConfig(), allow_unknown_field=True)
        if config.backend == "python" or config.platform in python_based:
            count += sum(group.count or 1 for group in config.instance_group) or 1
    return count


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
