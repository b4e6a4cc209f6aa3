"""pipelines.toml read into a Spec: every table and key checked, with one-line errors naming the pipeline and the
field; cascades built once the pipelines they escalate through are known."""

from __future__ import annotations

import tomllib
from dataclasses import fields
from pathlib import Path

from server.cascade_spec import build_cascade
from server.pipeline_spec import FUSE_STEP, MODES, PREPROCESS_STEP, VARIANTS, ModelSource, Pipeline, Spec, SpecError
from server.rollout_spec import ROLLOUT_KEYS, build_rollout

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
    for table in ("models", "pipelines"):
        for name in set(raw.get(table, {})) & {PREPROCESS_STEP, FUSE_STEP}:
            raise SpecError(f"{table}.{name}: the name {name!r} is taken by the step model every pipeline shares")
    for name, entry in raw.get("models", {}).items():
        entry = dict(entry)
        if "variants" in entry:
            entry["variants"] = tuple(entry["variants"])
        source = _build(ModelSource, f"models.{name}", name=name, **entry)
        _check_source(source, f"models.{name}")
        spec.models[name] = source
    cascades, rollouts = {}, {}
    for name, entry in raw.get("pipelines", {}).items():
        where = f"pipelines.{name}"
        entry = dict(entry)
        rollout = {key: entry.pop(key) for key in ROLLOUT_KEYS if key in entry}
        if rollout:  # checked once every pipeline is known
            rollouts[name] = rollout
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
        plain = dict(spec.pipelines)
        for name, entry in cascades.items():
            spec.pipelines[name] = build_cascade(name, entry, plain)
    if not spec.pipelines:
        raise SpecError(f"{path}: no [pipelines.NAME] tables")
    for name, entry in rollouts.items():
        spec.rollouts[name] = build_rollout(name, entry, set(spec.pipelines))
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
    if not isinstance(source.mem_arena, bool):
        raise SpecError(f"{where}: mem_arena must be true or false, got {source.mem_arena!r}")
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
