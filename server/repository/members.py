"""What the generator reads of an exported member model: its classes, its training size and its labels."""

from __future__ import annotations

import dataclasses
import hashlib
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
    version: int = 1  # the newest version folder: the one Triton serves (its default version policy)


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
    versions = [int(p.name) for p in (repository / name).iterdir() if p.is_dir() and p.name.isdigit()]
    return Member(name, int(probs.dims[-1]), int(min_size), labels, max(versions, default=1))


def answer_version(members: list[Member]) -> int:
    """The version folder of a pipeline that runs these members: 1 while every member is at version 1, else a
    number fixed by the members' versions. Triton's response cache keys an answer by the pipeline's name, version
    and input, not by its members' versions, so a member's new version must give the pipeline a new version, or
    the cache would keep answering with the old member's answers."""
    if all(member.version == 1 for member in members):
        return 1
    text = ",".join(f"{member.name}={member.version}" for member in sorted(members, key=lambda m: m.name))
    return 2 + int(hashlib.sha256(text.encode()).hexdigest()[:7], 16)
