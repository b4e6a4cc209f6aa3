"""Write an exported graph as a Triton model directory, atomically: a reader never sees half a model."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from client.contract import MIN_INPUT_SIZE_PARAMETER
from export.onnx_graph import INPUT_NAME, PROBS_NAME, SCORES_NAME, Normalization
from vgg.nets import VGGConfig
from vgg.staging import staging_dir

LABELS_FILE = "labels.txt"
IMAGENET_LABELS = Path(__file__).with_name("imagenet1k_labels.txt")
MODEL_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class ServingOptions:
    max_batch_size: int = 64  # multi-crop sends 50 crops (5x5 grid, 2 flips) in one request
    instances: int = 1
    intra_op_threads: int = 0  # 0: onnxruntime's default (all cores); pipelines set it explicitly
    inter_op_threads: int = 1
    intra_op_spinning: bool = False  # served models share the cores: see vgg/runtimes.py SessionSettings
    max_queue_delay_us: int = 500
    mem_arena: bool = True  # onnxruntime keeps the activations of the largest input: faster, more memory


def model_config(name: str, vgg: VGGConfig, normalization: Normalization, serving: ServingOptions,
                 has_labels: bool) -> mc.ModelConfig:
    """config.pbtxt for the native onnxruntime backend; the project's Python twin reads the same fields."""
    config = mc.ModelConfig(name=name, platform="onnxruntime_onnx", max_batch_size=serving.max_batch_size)
    config.input.add(name=INPUT_NAME, data_type=mc.TYPE_FP32, dims=[3, -1, -1])
    probs = config.output.add(name=PROBS_NAME, data_type=mc.TYPE_FP32, dims=[vgg.num_classes])
    if has_labels:
        probs.label_filename = LABELS_FILE
    config.output.add(name=SCORES_NAME, data_type=mc.TYPE_FP32, dims=[vgg.num_classes, -1, -1])
    config.dynamic_batching.max_queue_delay_microseconds = serving.max_queue_delay_us
    config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=serving.instances)
    params = {
        "intra_op_thread_count": str(serving.intra_op_threads),
        "inter_op_thread_count": str(serving.inter_op_threads),
        "intra_op_spinning": str(int(serving.intra_op_spinning)),
        "enable_mem_arena": str(int(serving.mem_arena)),
        "vgg.architecture": json.dumps(vgg.to_dict()),
        "vgg.normalization": json.dumps(asdict(normalization)),
        MIN_INPUT_SIZE_PARAMETER: str(vgg.training_size),
    }
    for key, value in params.items():
        config.parameters[key].string_value = value
    return config


def next_version(model_dir: Path) -> int:
    if not model_dir.is_dir():
        return 1
    return max((int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()), default=0) + 1


def default_labels(num_classes: int) -> list[str]:
    if num_classes == 1000:
        return IMAGENET_LABELS.read_text().splitlines()
    return [f"class_{i}" for i in range(num_classes)]


class StagedModel:
    """A model version built beside the repository and moved in by renames only once complete.

    Used as a context manager: leaving it without `commit()` (an error, a failed validation) removes the staging
    directory, so the repository never holds a partial model.
    """

    def __init__(self, repository: Path, name: str, version: int | None) -> None:
        if not MODEL_NAME_PATTERN.match(name):
            raise ValueError(f"model name {name!r} must be letters, digits, '_', '-' or '.'")
        if version is not None and version < 1:
            raise ValueError(f"version {version}: Triton serves only versions 1 and up")
        repository.mkdir(parents=True, exist_ok=True)
        self.model_dir = repository / name
        writable = self.model_dir if self.model_dir.exists() else repository
        try:  # now, not after the export has run for a minute
            tempfile.TemporaryFile(dir=writable).close()
        except OSError as exc:
            raise OSError(f"cannot write into {writable}: {exc.strerror or exc}") from None
        self.version = version if version is not None else next_version(self.model_dir)
        if (self.model_dir / str(self.version)).exists():
            raise FileExistsError(f"{self.model_dir / str(self.version)} already exists; choose another --version")
        self.staging = staging_dir(repository, f".{name}-")
        (self.staging / str(self.version)).mkdir()
        self.onnx_path = self.staging / str(self.version) / "model.onnx"

    def __enter__(self) -> StagedModel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)

    def commit(self, config: mc.ModelConfig, labels: list[str]) -> Path:
        """Move the staged version (and the model's config and labels) into the repository."""
        (self.staging / "config.pbtxt").write_text(text_format.MessageToString(config))
        (self.staging / LABELS_FILE).write_text("\n".join(labels) + "\n")
        if not self.model_dir.exists():
            os.replace(self.staging, self.model_dir)
        else:
            os.replace(self.staging / str(self.version), self.model_dir / str(self.version))
            for file in ("config.pbtxt", LABELS_FILE):
                os.replace(self.staging / file, self.model_dir / file)
        return self.model_dir / str(self.version)
