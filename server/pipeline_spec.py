"""The declarative pipeline spec (a TOML file) and the views each pipeline evaluates.

A pipeline = member models x test scales Q x (dense views with optional flips | multi-crop | both). The same
`Pipeline` drives the generated Triton configs, the preprocess step and the fusion step, so they cannot disagree.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

MODES = ("dense", "multi-crop", "dense+multi-crop")
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
        """The tensors the preprocess step emits: one per (kind, scale)."""
        out = []
        for q in self.scales:
            if self.dense:
                out.append(View("dense", q))
            if self.multi_crop:
                out.append(View("crops", q))
        return out

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


@dataclass(frozen=True)
class View:
    kind: str  # "dense": whole image (+ mirror); "crops": the grid of crops (+ mirrors)
    scale: int

    @property
    def tensor(self) -> str:
        return f"{self.kind}_{self.scale}"


@dataclass
class Spec:
    models: dict[str, ModelSource] = field(default_factory=dict)
    pipelines: dict[str, Pipeline] = field(default_factory=dict)  # and Cascade (server/cascade_spec.py) entries
    limits: dict[str, float] = field(default_factory=dict)


TABLES = frozenset({"limits", "models", "pipelines"})
_EXAMPLES = {"members": '["vgg16"]', "scales": "[256, 384, 512]", "weights": "[1.0, 2.0]"}


def load_spec(path: Path) -> Spec:
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as exc:
        raise SpecError(f"{path}: cannot read ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path}: invalid TOML ({exc})") from None
    unknown = sorted(set(raw) - TABLES)
    if unknown:
        tables = ", ".join(f"[{t}]" for t in sorted(TABLES))
        raise SpecError(f"{path}: unknown table [{unknown[0]}]; a spec has {tables}")
    spec = Spec(limits=dict(raw.get("limits", {})))
    for name, entry in raw.get("models", {}).items():
        entry = dict(entry)
        if "variants" in entry:
            entry["variants"] = tuple(entry["variants"])
        source = _build(ModelSource, f"models.{name}", name=name, **entry)
        _check_source(source, f"models.{name}")
        spec.models[name] = source
    cascades = {}
    for name, entry in raw.get("pipelines", {}).items():
        where = f"pipelines.{name}"
        entry = dict(entry)
        if "stages" in entry:  # a cascade of other pipelines: built once they are all known
            cascades[name] = entry
            continue
        for key in ("members", "scales", "weights"):
            if key in entry:
                if not isinstance(entry[key], list):
                    raise SpecError(f"{where}: {key} must be a list, e.g. {key} = {_EXAMPLES[key]}")
                entry[key] = tuple(entry[key])
        pipeline = _build(Pipeline, where, name=name, **entry)
        _check_pipeline(pipeline, where)
        spec.pipelines[name] = pipeline
    if cascades:
        from server.cascade_spec import build_cascade

        plain = dict(spec.pipelines)
        for name, entry in cascades.items():
            spec.pipelines[name] = build_cascade(name, entry, plain)
    if not spec.pipelines:
        raise SpecError(f"{path}: no [pipelines.NAME] tables")
    return spec


def _build(cls: type, where: str, **values: object) -> object:
    known = [f.name for f in fields(cls) if f.init and f.name != "name"]
    unknown = sorted(set(values) - set(known) - {"name"})
    if unknown:
        raise SpecError(f"{where}: unknown key {unknown[0]!r}; known keys: {', '.join(known)}")
    try:
        return cls(**values)
    except TypeError as exc:
        raise SpecError(f"{where}: {exc}".replace(f"{cls.__name__}.__init__() ", "")) from None


def _check_source(source: ModelSource, where: str) -> None:
    unknown = [v for v in source.variants if v not in VARIANTS]
    if unknown:
        raise SpecError(f"{where}: variants {unknown} are not among {', '.join(VARIANTS)}")
    if source.variants and not source.calibration:
        raise SpecError(f"{where}: variants need calibration = \"FOLDER\" (images like the ones served)")


def _check_pipeline(p: Pipeline, where: str) -> None:
    if not p.members:
        raise SpecError(f"{where}: members must name at least one model")
    if not p.scales or any(not isinstance(q, int) or q <= 0 for q in p.scales):
        raise SpecError(f"{where}: scales must be positive integers, got {list(p.scales)}")
    if p.mode not in MODES:
        raise SpecError(f"{where}: mode {p.mode!r} is not one of {', '.join(MODES)}")
    if p.weights and (len(p.weights) != len(p.members) or any(w <= 0 for w in p.weights)):
        raise SpecError(f"{where}: weights must be one positive number per member")
    if p.grid < 1:
        raise SpecError(f"{where}: grid must be at least 1")
