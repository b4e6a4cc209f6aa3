"""Writing the repository: every generated file rewritten only when its content changes, stale generated models
removed, models nobody generated left alone."""

from __future__ import annotations

import shutil
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from client.contract import ROLLOUT_PARAMETER
from server.cascade_spec import Cascade, with_resolved_stages
from server.maps import maps_ensemble_config
from server.pipeline_spec import Pipeline, Spec, SpecError
from server.repository.configs import (
    GENERATED_MARK,
    cascade_config,
    ensemble_config,
    fuse_config,
    fuse_spec,
    preprocess_config,
    preprocess_spec,
    resolve,
    set_parameters,
)
from server.repository.exports import export_missing
from server.repository.gpu import MemberUsage, deploy_member
from server.repository.members import answer_version, read_member
from server.rollout_spec import Rollout
from vgg.imaging import ImageLimits

STEP_SOURCES = Path(__file__).resolve().parents[1] / "pipeline_steps"


def generate(spec: Spec, repository: Path, target: str = "cpu") -> list[str]:
    """Write every pipeline's ensemble and its steps (and members' deployment settings); returns the paths that
    changed. Pipelines that preprocess alike, or fuse alike, share one step model, named after the first of them by
    name: fewer stub processes, the same answers."""
    try:
        limits = ImageLimits(**spec.limits)
    except TypeError as exc:
        raise SpecError(f"limits: {exc}".replace("ImageLimits.__init__() ", "")) from None
    export_missing(spec, repository)
    files: dict[Path, bytes] = {}
    usage: dict[str, MemberUsage] = {}
    resolved: dict[str, Pipeline] = {}
    shared_steps: dict[tuple, str] = {}  # what a step computes -> the step model computing it for every pipeline
    answers: dict[str, tuple[int, bytes | None]] = {}  # pipeline -> its classes and labels (rollouts compare them)
    plain = sorted((p for p in spec.pipelines.values() if not isinstance(p, Cascade)), key=lambda p: p.name)
    for pipeline in plain:
        members = [read_member(repository, m) for m in pipeline.members]
        pipeline = resolved[pipeline.name] = resolve(pipeline, members)
        for member in members:
            usage.setdefault(member.name, MemberUsage(member.min_input_size)).add(pipeline)
        labels = members[0].labels if members[0].labels and members[0].labels.exists() else None
        classes = members[0].num_classes
        label_bytes = labels.read_bytes() if labels else None
        answers[pipeline.name] = (classes, label_bytes)
        preprocess = shared_steps.setdefault(("preprocess", preprocess_spec(pipeline)), f"{pipeline.name}_preprocess")
        fuse = shared_steps.setdefault(("fuse", fuse_spec(pipeline), classes, label_bytes), f"{pipeline.name}_fuse")
        models = {pipeline.name: (ensemble_config(pipeline, classes, labels is not None, preprocess, fuse), None)}
        if pipeline.name in spec.rollouts:
            set_parameters(models[pipeline.name][0], {ROLLOUT_PARAMETER: spec.rollouts[pipeline.name].to_json()})
        if preprocess == f"{pipeline.name}_preprocess":
            models[preprocess] = (preprocess_config(preprocess, preprocess_spec(pipeline), limits),
                                  STEP_SOURCES / "preprocess.py")
        if fuse == f"{pipeline.name}_fuse":
            models[fuse] = (fuse_config(fuse, fuse_spec(pipeline), classes, labels is not None),
                            STEP_SOURCES / "fuse.py")
        if pipeline.dense:
            windows = {m.name: m.min_input_size for m in members}
            maps = maps_ensemble_config(ensemble_config(pipeline, classes, labels is not None, preprocess, fuse),
                                        pipeline, windows)
            models[maps.name] = (maps, None)
        versions = {pipeline.name: answer_version(members)}  # the steps and the maps stay at 1: nothing caches them
        for name, (config, source) in models.items():
            files[repository / name / "config.pbtxt"] = text_format.MessageToString(config).encode()
            files[repository / name / str(versions.get(name, 1)) / "model.py"] = source.read_bytes() if source else None
            if label_bytes is not None and not name.endswith("_preprocess"):
                files[repository / name / "labels.txt"] = label_bytes
    for cascade in (p for p in spec.pipelines.values() if isinstance(p, Cascade)):
        files.update(cascade_files(with_resolved_stages(cascade, resolved), repository, limits,
                                   spec.rollouts.get(cascade.name), answers))
    for name, rollout in spec.rollouts.items():
        check_same_answers(name, rollout, answers)
    for name, used in usage.items():
        path = repository / name / "config.pbtxt"
        deployed = deploy_member(text_format.Parse(path.read_text(), mc.ModelConfig()), target, used)
        if deployed is not None:
            files[path] = text_format.MessageToString(deployed).encode()
    changed = [str(path) for path, content in files.items() if write_if_changed(path, content)]
    generated = {path.parent.name for path in files if path.name == "config.pbtxt"}
    changed += prune_versions(repository, {path.parent for path in files if path.name == "model.py"})
    for stale in generated_models(repository) - generated:
        shutil.rmtree(repository / stale)
        changed.append(f"{repository / stale} (removed)")
    return changed


def cascade_files(cascade: Cascade, repository: Path, limits: ImageLimits, rollout: Rollout | None,
                  answers: dict[str, tuple[int, bytes | None]]) -> dict[Path, bytes]:
    """The cascade's model; its classes and labels go into ``answers``."""
    members = [read_member(repository, m) for m in cascade.members]
    if len({m.num_classes for m in members}) != 1:
        raise SpecError(f"pipelines.{cascade.name}: the stages' members disagree on the number of classes "
                        + ", ".join(f"{m.name}={m.num_classes}" for m in members))
    labels = members[0].labels if members[0].labels and members[0].labels.exists() else None
    label_bytes = labels.read_bytes() if labels else None
    answers[cascade.name] = (members[0].num_classes, label_bytes)
    config = cascade_config(cascade, members[0].num_classes, labels is not None, limits)
    if rollout:
        set_parameters(config, {ROLLOUT_PARAMETER: rollout.to_json()})
    version = str(answer_version(members))
    files = {repository / cascade.name / "config.pbtxt": text_format.MessageToString(config).encode(),
             repository / cascade.name / version / "model.py": (STEP_SOURCES / "cascade.py").read_bytes()}
    if label_bytes is not None:
        files[repository / cascade.name / "labels.txt"] = label_bytes
    return files


def check_same_answers(name: str, rollout: Rollout, answers: dict[str, tuple[int, bytes | None]]) -> None:
    """A shadow or canary must answer with the same classes, labelled alike, as the pipeline it stands beside."""
    classes, labels = answers[name]
    for key, part in (("shadow", rollout.shadow), ("canary", rollout.canary)):
        if part is None:
            continue
        other_classes, other_labels = answers[part.pipeline]
        if other_classes != classes:
            raise SpecError(f"pipelines.{name}.{key}: {part.pipeline!r} answers {other_classes} classes, "
                            f"{name!r} {classes}")
        if other_labels != labels:
            raise SpecError(f"pipelines.{name}.{key}: {part.pipeline!r} labels its classes unlike {name!r}")


def prune_versions(repository: Path, written: set[Path]) -> list[str]:
    """Other version folders of the models whose version folder was just written (a pipeline whose members
    changed version has a new one), removed; Triton serves the new version once the model is loaded again. Members'
    versions are never touched."""
    removed = []
    for name in sorted({folder.parent.name for folder in written}):
        for folder in sorted((repository / name).iterdir()):
            if folder.is_dir() and folder.name.isdigit() and folder not in written:
                shutil.rmtree(folder)
                removed.append(f"{folder} (old version removed)")
    return removed


def write_if_changed(path: Path, content: bytes | None) -> bool:
    if content is None:  # a version directory with no file in it (ensembles)
        if path.parent.is_dir():
            return False
        path.parent.mkdir(parents=True)
        return True
    if path.exists() and path.read_bytes() == content:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(content)
    temporary.replace(path)
    return True


def generated_models(repository: Path) -> set[str]:
    names = set()
    for config in repository.glob("*/config.pbtxt"):
        if f'key: "{GENERATED_MARK}"' in config.read_text():
            names.add(config.parent.name)
    return names
