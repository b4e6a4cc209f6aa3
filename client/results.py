"""Typed results: what the gateway's JSON (or Triton directly) means, as frozen dataclasses."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Prediction:
    label: str
    index: int
    score: float


@dataclass(frozen=True)
class Classification:
    """Top-k classes for one image, best first, with the pipeline and model versions that produced them."""

    predictions: tuple[Prediction, ...]
    pipeline: str
    models: dict[str, str] = field(default_factory=dict)
    timing_ms: float = 0.0
    maps: dict[str, Any] | None = None  # the score maps' JSON (docs/maps.md), when asked for with maps=True
    stage: str | None = None  # cascades only: the stage (a pipeline) that answered
    stages: tuple[str, ...] = ()  # cascades only: the stages run, in order
    request_id: str | None = None  # the gateway's ID of the request that answered (its X-Request-ID)

    @property
    def top(self) -> Prediction:
        return self.predictions[0]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Classification:
        return cls(predictions=tuple(Prediction(str(p["label"]), int(p["index"]), float(p["score"]))
                                     for p in data["predictions"]),
                   pipeline=str(data["pipeline"]), models=dict(data.get("models", {})),
                   timing_ms=float(data.get("timing_ms", 0.0)), maps=data.get("maps"), stage=data.get("stage"),
                   stages=tuple(data.get("stages") or ()), request_id=data.get("request_id"))


@dataclass(frozen=True)
class PipelineInfo:
    name: str
    members: tuple[str, ...]
    scales: tuple[int, ...]
    mode: str
    flips: bool
    num_classes: int
    versions: dict[str, str] = field(default_factory=dict)
    weights: tuple[float, ...] | None = None
    description: str = ""
    default: bool = False

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PipelineInfo:
        return cls(name=data["name"], members=tuple(data["members"]), scales=tuple(data["scales"]),
                   mode=data["mode"], flips=bool(data["flips"]), num_classes=int(data["num_classes"]),
                   versions=dict(data.get("versions", {})),
                   weights=tuple(data["weights"]) if data.get("weights") else None,
                   description=data.get("description", ""), default=bool(data.get("default", False)))


@dataclass(frozen=True)
class ScoreResult:
    """One file of a batch-scoring job: its classification, or the error that stopped it."""

    source: str
    classification: Classification | None = None
    error: Any = None  # a client.errors.ClientError

    @property
    def ok(self) -> bool:
        return self.error is None
