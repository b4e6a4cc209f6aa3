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
    preprocess_config,
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
    """Write every pipeline's ensemble, the preprocess and fuse steps they all share (one set of stub processes
    however many pipelines), and members' deployment settings; returns the paths that changed."""
    try:
        limits = ImageLimits(**spec.limits)
    except TypeError as exc:
        raise SpecError(f"limits: {exc}".replace("ImageLimits.__init__() ", "")) from None
    export_missing(spec, repository)
    files: dict[Path, bytes] = {}
    usage: dict[str, MemberUsage] = {}
    resolved: dict[str, Pipeline] = {}
    classes: dict[Pipeline, int] = {}
    answers: dict[str, tuple[int, bytes | None]] = {}  # pipeline -> its classes and labels (rollouts compare them)
    plain = sorted((p for p in spec.pipelines.values() if not isinstance(p, Cascade)), key=lambda p: p.name)
    for pipeline in plain:
        members = [read_member(repository, m) for m in pipeline.members]
        pipeline = resolved[pipeline.name] = resolve(pipeline, members)
        for member in members:
            usage.setdefault(member.name, MemberUsage(member.min_input_size)).add(pipeline)
        labels = members[0].labels if members[0].labels and members[0].labels.exists() else None
        classes[pipeline] = members[0].num_classes
        label_bytes = labels.read_bytes() if labels else None
        answers[pipeline.name] = (classes[pipeline], label_bytes)
        ensemble = ensemble_config(pipeline, classes[pipeline], labels is not None)
        models = {pipeline.name: ensemble}
        if pipeline.dense:  # a copy of the ensemble, made before the rollout goes on it: the maps have none
            maps = maps_ensemble_config(ensemble, pipeline, {m.name: m.min_input_size for m in members})
            models[maps.name] = maps
        if pipeline.name in spec.rollouts:
            set_parameters(ensemble, {ROLLOUT_PARAMETER: spec.rollouts[pipeline.name].to_json()})
        versions = {pipeline.name: answer_version(members)}  # the maps stay at 1: nothing caches them
        for name, config in models.items():
            files.update(model_files(repository, config, versions.get(name, 1), label_bytes=label_bytes))
    if plain:
        files.update(model_files(repository, preprocess_config(list(resolved.values()), limits),
                                 source=STEP_SOURCES / "preprocess.py"))
        files.update(model_files(repository, fuse_config(classes), source=STEP_SOURCES / "fuse.py"))
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


def model_files(repository: Path, config: mc.ModelConfig, version: int = 1, source: Path | None = None,
                label_bytes: bytes | None = None) -> dict[Path, bytes | None]:
    """A model's config, its version folder (with the step's source, if any) and its labels."""
    folder = repository / config.name
    files = {folder / "config.pbtxt": text_format.MessageToString(config).encode(),
             folder / str(version) / "model.py": source.read_bytes() if source else None}
    if label_bytes is not None:
        files[folder / "labels.txt"] = label_bytes
    return files


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
    return model_files(repository, config, answer_version(members), STEP_SOURCES / "cascade.py", label_bytes)


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
