"""Cascade pipelines: an ordered list of existing pipelines (stages) and a confidence rule that ends a request early.

A cascade spends a big pipeline's compute only on the images a cheap one is unsure of. Each stage but the last has
a threshold τ; the stage answers when its fused posterior's confidence exceeds τ (strictly, so τ = 0 stops at the
first stage and τ = 1 always escalates), otherwise the next stage runs. The last stage always answers. Stages are
pipelines of the same spec, so their views and fusion are the ones those pipelines serve on their own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

import numpy as np

from server.pipeline_spec import Pipeline, SpecError, View

RULES = ("max", "margin")  # max posterior | top-1 minus top-2 posterior


def confidence(probs: np.ndarray, rule: str) -> float:
    """How sure a stage is of its top-1 answer, by the cascade's rule."""
    if rule == "max":
        return float(np.max(probs))
    top = np.sort(np.asarray(probs, dtype=np.float64).reshape(-1))[::-1]
    return float(top[0] - top[1]) if top.size > 1 else 1.0


def stops_at(stage_probs: list[np.ndarray], rule: str, thresholds: tuple[float, ...]) -> int:
    """Index of the stage that answers, given every stage's posterior (the decision the served cascade makes)."""
    for index, threshold in enumerate(thresholds):
        if index >= len(stage_probs) - 1:
            break
        if confidence(stage_probs[index], rule) > threshold:
            return index
    return len(stage_probs) - 1


def view_units(member: str, view: View) -> list[tuple]:
    """What a member's evaluation of a view is made of: the unmirrored rows, then (with flips) the mirrored ones,
    the halves of the view's tensor in that order. Two stages sharing a unit share its rows and their posteriors."""
    crops = (view.crop_size, view.grid) if view.kind == "crops" else ()
    return [(member, view.kind, view.scale, *crops, mirrored) for mirrored in ((False, True) if view.flips
                                                                                else (False,))]


@dataclass(frozen=True)
class Cascade:
    name: str
    stages: tuple[str, ...]
    thresholds: tuple[float, ...]
    rule: str = "max"
    instances: int = 4  # requests in flight at once: each instance waits on its members most of the time
    description: str = ""
    stage_pipelines: tuple[Pipeline, ...] = ()  # the stages' definitions, filled in when the spec is loaded

    @property
    def members(self) -> tuple[str, ...]:
        """Every model any stage runs, in first-use order."""
        return tuple(dict.fromkeys(m for p in self.stage_pipelines for m in p.members))

    @property
    def scales(self) -> tuple[int, ...]:
        return tuple(sorted({q for p in self.stage_pipelines for q in p.scales}))

    def to_json(self) -> str:
        """The cascade as its Triton model carries it; members/scales/mode/flips in the shape pipelines have."""
        data = {"kind": "cascade", "name": self.name, "description": self.description, "members": list(self.members),
                "scales": list(self.scales), "mode": "cascade",
                "flips": any(p.flips for p in self.stage_pipelines), "weights": None,
                "stages": list(self.stages), "rule": self.rule, "thresholds": list(self.thresholds),
                "instances": self.instances,
                "stage_specs": [json.loads(p.to_json()) for p in self.stage_pipelines]}
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Cascade:
        data = json.loads(text)
        stages = tuple(Pipeline.from_json(json.dumps(p)) for p in data["stage_specs"])
        return cls(name=data["name"], stages=tuple(data["stages"]), thresholds=tuple(data["thresholds"]),
                   rule=data["rule"], instances=data["instances"], description=data["description"],
                   stage_pipelines=stages)


CASCADE_KEYS = ("stages", "thresholds", "rule", "instances", "description")


def build_cascade(name: str, entry: dict, pipelines: dict[str, Pipeline]) -> Cascade:
    """A cascade from its TOML table, its stages looked up among the spec's plain pipelines."""
    where = f"pipelines.{name}"
    unknown = sorted(set(entry) - set(CASCADE_KEYS))
    if unknown:
        raise SpecError(f"{where}: unknown key {unknown[0]!r}; a cascade's keys: {', '.join(CASCADE_KEYS)}")
    stages, thresholds = entry.get("stages"), entry.get("thresholds", [])
    if not isinstance(stages, list) or len(stages) < 2 or not all(isinstance(s, str) for s in stages):
        raise SpecError(f'{where}: stages must list at least two pipelines, e.g. stages = ["fast", "fusion"]')
    if len(set(stages)) != len(stages):
        raise SpecError(f"{where}: stages name a pipeline twice: {stages}")
    for stage in stages:
        if stage not in pipelines:
            known = ", ".join(sorted(pipelines)) or "none"
            raise SpecError(f"{where}: stage {stage!r} is not a plain pipeline of this spec (known: {known})")
    if not isinstance(thresholds, list) or len(thresholds) != len(stages) - 1:
        raise SpecError(f"{where}: thresholds must be a list of {len(stages) - 1} number(s), one per stage but the "
                        "last (which always answers), e.g. thresholds = [0.9]")
    if not all(isinstance(t, (int, float)) and not isinstance(t, bool) and 0 <= t <= 1 for t in thresholds):
        raise SpecError(f"{where}: thresholds must be numbers between 0 and 1, got {thresholds}")
    rule = entry.get("rule", "max")
    if rule not in RULES:
        raise SpecError(f"{where}: rule {rule!r} is not one of {', '.join(RULES)}")
    instances = entry.get("instances", Cascade.instances)
    if not isinstance(instances, int) or instances < 1:
        raise SpecError(f"{where}: instances must be a positive integer")
    return Cascade(name=name, stages=tuple(stages), thresholds=tuple(float(t) for t in thresholds), rule=rule,
                   instances=instances, description=str(entry.get("description", "")),
                   stage_pipelines=tuple(pipelines[s] for s in stages))


def with_resolved_stages(cascade: Cascade, resolved: dict[str, Pipeline]) -> Cascade:
    """The cascade with its stages as the generator resolved them (crop sizes filled in)."""
    return replace(cascade, stage_pipelines=tuple(resolved[s] for s in cascade.stages))
