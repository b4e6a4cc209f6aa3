"""The declarative pipeline spec (read from its TOML file by server/spec_file.py) and the views each pipeline
evaluates.

A pipeline = member models x test scales Q x (dense views with optional flips | multi-crop | both). The same
`Pipeline` drives the generated Triton configs, the preprocess step and the fusion step, so they cannot disagree.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from server.rollout_spec import Rollout

MODES = ("dense", "multi-crop", "dense+multi-crop")
# The two step models every pipeline's ensemble runs, shared by all pipelines (one set of stub processes however
# many pipelines are served): no pipeline or model may take these names.
PREPROCESS_STEP, FUSE_STEP = "preprocess", "fuse"
VIEWS_PARAMETER = "preprocess.views"  # the preprocess step's config: output name -> the View it computes
FUSIONS_PARAMETER = "fuse.pipelines"  # the fuse step's config: output name -> the pipeline it fuses for
VARIANTS = ("int8", "bf16")  # export/to_onnx.py --quantize int8 / --bf16: members named <model>_<variant>


class SpecError(ValueError):
    """A spec that cannot become a repository; the message names the pipeline and the field."""


@dataclass(frozen=True)
class ModelSource:
    """A member model and, optionally, the checkpoint that builds it when the repository lacks it."""

    name: str
    checkpoint: str | None = None
    labels: str | None = None
    instances: int = 1
    threads: int = 1
    mem_arena: bool = True  # false: onnxruntime returns activation memory after each request (small nets)
    variants: tuple[str, ...] = ()  # also export <name>_int8 / <name>_bf16, usable as pipeline members
    calibration: str | None = None  # images for int8 calibration and the variants' agreement check

    def exported_names(self) -> dict[str, str | None]:
        """Member name -> variant (None for FP32) of every model this checkpoint exports to."""
        return {self.name: None} | {f"{self.name}_{variant}": variant for variant in self.variants}


@dataclass(frozen=True)
class Pipeline:
    name: str
    members: tuple[str, ...]
    scales: tuple[int, ...]
    mode: str = "dense"
    flips: bool = False
    weights: tuple[float, ...] = ()
    crop_size: int = 0  # multi-crop window; 0: the members' training size
    grid: int = 5  # the paper's 5x5 crops per scale
    preprocess_instances: int = 2
    description: str = ""

    @property
    def dense(self) -> bool:
        return self.mode in ("dense", "dense+multi-crop")

    @property
    def multi_crop(self) -> bool:
        return self.mode in ("multi-crop", "dense+multi-crop")

    def member_weights(self) -> list[float]:
        """Fusion weights normalised to sum to one; equal when not given."""
        weights = list(self.weights) or [1.0] * len(self.members)
        return [w / sum(weights) for w in weights]

    def views(self) -> list[View]:
        """What the members evaluate: one tensor per (kind, scale)."""
        out = []
        for q in self.scales:
            if self.dense:
                out.append(View("dense", q, self.flips))
            if self.multi_crop:
                out.append(View("crops", q, self.flips, self.crop_size, self.grid))
        return out

    def posteriors(self) -> list[str]:
        """What its fusion reads: the posteriors of each (member position, view)."""
        return [posterior(i, view) for i in range(len(self.members)) for view in self.views()]

    def to_json(self) -> str:
        data = asdict(self)
        data["weights"] = self.member_weights()
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Pipeline:
        data = json.loads(text)
        for key in ("members", "scales", "weights"):
            data[key] = tuple(data[key])
        return cls(**data)


def posterior(index: int, view: View) -> str:
    """The ensemble tensor holding the posteriors of a pipeline's member number `index` on a view (the fuse step's
    input; the maps ensemble reads member and scale back from it)."""
    return f"m{index}_{view.tensor}"


def fused_output(pipeline: str) -> str:
    """The fuse step's output answering one pipeline."""
    return f"probs_{pipeline}"


@dataclass(frozen=True)
class View:
    kind: str  # "dense": whole image (+ mirror); "crops": the grid of crops (+ mirrors)
    scale: int
    flips: bool = False
    crop_size: int = 0  # crops only
    grid: int = 0  # crops only

    @property
    def tensor(self) -> str:
        """Its name inside one pipeline's ensemble, where kind and scale tell the views apart."""
        return f"{self.kind}_{self.scale}"

    @property
    def recipe(self) -> str:
        """Its name among every pipeline's views: the shared preprocess step's output computing exactly this."""
        crops = f"_{self.crop_size}x{self.grid}" if self.kind == "crops" else ""
        return f"{self.tensor}{crops}{'_flip' if self.flips else ''}"


@dataclass
class Spec:
    models: dict[str, ModelSource] = field(default_factory=dict)
    pipelines: dict[str, Pipeline] = field(default_factory=dict)  # and Cascade (server/cascade_spec.py) entries
    limits: dict[str, float] = field(default_factory=dict)
    rollouts: dict[str, Rollout] = field(default_factory=dict)  # server/rollout_spec.py: shadows and canaries
