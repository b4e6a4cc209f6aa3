"""What the generator reads of an exported member model: its classes, its training size and its labels."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from client.contract import MIN_INPUT_SIZE_PARAMETER, PROBS
from server.pipeline_spec import SpecError


@dataclasses.dataclass(frozen=True)
class Member:
    """What the generator needs to know of an exported model, read from its config.pbtxt."""

    name: str
    num_classes: int
    min_input_size: int
    labels: Path | None


def read_member(repository: Path, name: str) -> Member:
    """The member as its config.pbtxt describes it; a missing model or one without `probs` is a SpecError."""
    path = repository / name / "config.pbtxt"
    if not path.exists():
        raise SpecError(f"model {name!r} is not in {repository} and the spec names no checkpoint to export it from")
    config = text_format.Parse(path.read_text(), mc.ModelConfig())
    probs = next((o for o in config.output if o.name == PROBS), None)
    if probs is None:
        raise SpecError(f"model {name!r} has no 'probs' output; export it with export/to_onnx.py")
    parameters = config.parameters
    min_size = parameters[MIN_INPUT_SIZE_PARAMETER].string_value if MIN_INPUT_SIZE_PARAMETER in parameters else "0"
    labels = repository / name / probs.label_filename if probs.label_filename else None
    return Member(name, int(probs.dims[-1]), int(min_size), labels)
