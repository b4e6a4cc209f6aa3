"""A pipeline's rollout, as pipelines.toml declares it: a shadow candidate that sees copies of a share of its
requests, and a canary that answers a share of them, with the limits past which the gateway rolls the canary back.

    [pipelines.fast.shadow]
    pipeline = "fast_int8"     # any pipeline of the spec
    fraction = 0.25            # share of fast's requests copied to it

    [pipelines.fast.canary]
    pipeline = "fast_v2"
    weight = 0.1               # share of fast's requests (sticky per API key or X-Rollout-Key) it answers
    max_error_rate = 0.05      # rolled back past any of these, judged over the last `window` canary answers
    max_latency_ratio = 2.0    # its median latency over the stable pipeline's
    min_agreement = 0.9        # top-1 agreement with the stable, from a shadow of the stable on the canary

The generator checks it (one line per fault) and writes it into the served pipeline's config, where the gateway
reads it with the rest of the pipeline (server/gateway/rollouts.py runs it).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

from server.pipeline_spec import SpecError


@dataclass(frozen=True)
class Shadow:
    pipeline: str
    fraction: float
    window: int = 500  # comparisons in the rolling report
    keep_images_mb: float = 0.0  # disagreeing images kept beside the disagreement log, up to this many MB


@dataclass(frozen=True)
class Canary:
    pipeline: str
    weight: float
    max_error_rate: float = 0.05
    max_latency_ratio: float = 2.0
    min_agreement: float = 0.0  # 0: not judged
    window: int = 200  # the last canary answers the limits are judged on
    min_requests: int = 20  # canary answers needed before judging


@dataclass(frozen=True)
class Rollout:
    shadow: Shadow | None = None
    canary: Canary | None = None

    @property
    def candidates(self) -> list[str]:
        return [part.pipeline for part in (self.shadow, self.canary) if part]

    def to_json(self) -> str:
        return json.dumps({key: value for key, value in asdict(self).items() if value}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Rollout:
        data = json.loads(text)
        return cls(shadow=Shadow(**data["shadow"]) if data.get("shadow") else None,
                   canary=Canary(**data["canary"]) if data.get("canary") else None)


ROLLOUT_KEYS = ("shadow", "canary")


def build_rollout(name: str, entry: dict, pipelines: set[str]) -> Rollout:
    """The rollout of pipeline ``name`` from its `shadow` and `canary` tables; SpecError naming the fault."""
    parts = {}
    for key, kind in (("shadow", Shadow), ("canary", Canary)):
        if key not in entry:
            continue
        where = f"pipelines.{name}.{key}"
        table = entry[key]
        if not isinstance(table, dict):
            raise SpecError(f"{where}: must be a table, e.g. [{where}] pipeline = \"fast_int8\"")
        known = [f.name for f in fields(kind)]
        unknown = sorted(set(table) - set(known))
        if unknown:
            raise SpecError(f"{where}: unknown key {unknown[0]!r}; known keys: {', '.join(known)}")
        share = "fraction" if key == "shadow" else "weight"
        for required in ("pipeline", share):
            if required not in table:
                raise SpecError(f"{where}: {required} is required")
        candidate = table["pipeline"]
        if candidate == name:
            raise SpecError(f"{where}: pipeline {name!r} can't be its own {key}")
        if candidate not in pipelines:
            raise SpecError(f"{where}: pipeline {candidate!r} is not a pipeline of this spec "
                            f"(known: {', '.join(sorted(pipelines))})")
        for field_name, low, high in ((share, 0.0, 1.0), ("max_error_rate", 0.0, 1.0), ("min_agreement", 0.0, 1.0),
                                      ("max_latency_ratio", 1.0, float("inf")), ("keep_images_mb", 0.0, 1e6)):
            value = table.get(field_name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not low <= value <= high):
                bound = f"[{low:g}, {high:g}]" if high != float("inf") else f">= {low:g}"
                raise SpecError(f"{where}: {field_name} must be a number in {bound}, got {value!r}")
        for field_name in ("window", "min_requests"):
            value = table.get(field_name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise SpecError(f"{where}: {field_name} must be a positive integer, got {value!r}")
        parts[key] = kind(**table)
    canary = parts.get("canary")
    if canary and canary.min_agreement and (not parts.get("shadow") or parts["shadow"].pipeline != canary.pipeline):
        raise SpecError(f"pipelines.{name}.canary: min_agreement needs a shadow of {name!r} on the canary "
                        f"({canary.pipeline!r}): add [pipelines.{name}.shadow] pipeline = \"{canary.pipeline}\"")
    return Rollout(**parts)
