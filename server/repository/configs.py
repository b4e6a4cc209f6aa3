"""The Triton configs of one pipeline: its preprocess and fuse steps, its ensemble, or its cascade model.

Pure functions of the checked spec (no files read or written), so the generator's output is easy to test.
"""

from __future__ import annotations

import dataclasses
import json

from tritonclient.grpc import model_config_pb2 as mc

from client.contract import (
    CASCADE_KIND,
    INPUT,
    KIND_PARAMETER,
    LIMITS_PARAMETER,
    PROBS,
    SPEC_PARAMETER,
    STAGE_REPORT,
)
from server.cascade_spec import Cascade
from server.pipeline_spec import Pipeline, SpecError
from server.repository.members import Member
from vgg.imaging import ImageLimits

GENERATED_MARK = "generated_by"  # every generated config carries it: what is not marked is never pruned
GENERATOR = "server.repository"


def resolve(pipeline: Pipeline, members: list[Member]) -> Pipeline:
    """Check the pipeline against its members and fill in the crop size."""
    classes = {m.num_classes for m in members}
    if len(classes) != 1:
        raise SpecError(f"pipelines.{pipeline.name}: members disagree on the number of classes "
                        + ", ".join(f"{m.name}={m.num_classes}" for m in members))
    need = max(m.min_input_size for m in members)
    if min(pipeline.scales) < need:
        raise SpecError(f"pipelines.{pipeline.name}: scale {min(pipeline.scales)} is below the members' training "
                        f"size {need}")
    crop = pipeline.crop_size or need
    if pipeline.multi_crop and (crop < need or crop > min(pipeline.scales)):
        raise SpecError(f"pipelines.{pipeline.name}: crop_size {crop} must be between {need} and the smallest scale")
    return dataclasses.replace(pipeline, crop_size=crop)


def preprocess_config(name: str, pipeline: Pipeline, limits: ImageLimits) -> mc.ModelConfig:
    config = mc.ModelConfig(name=name, backend="python", max_batch_size=0)
    config.input.add(name=INPUT, data_type=mc.TYPE_STRING, dims=[1])
    for view in pipeline.views():
        side = [-1, -1] if view.kind == "dense" else [pipeline.crop_size, pipeline.crop_size]
        config.output.add(name=view.tensor, data_type=mc.TYPE_FP32, dims=[-1, 3, *side])
    config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=pipeline.preprocess_instances)
    set_parameters(config, {SPEC_PARAMETER: pipeline.to_json(),
                             LIMITS_PARAMETER: json.dumps(dataclasses.asdict(limits))})
    return config


def fuse_config(name: str, pipeline: Pipeline, num_classes: int, has_labels: bool) -> mc.ModelConfig:
    config = mc.ModelConfig(name=name, backend="python", max_batch_size=0)
    for index in range(len(pipeline.members)):
        for view in pipeline.views():
            config.input.add(name=f"m{index}_{view.tensor}", data_type=mc.TYPE_FP32, dims=[-1, num_classes])
    output = config.output.add(name=PROBS, data_type=mc.TYPE_FP32, dims=[num_classes])
    if has_labels:
        output.label_filename = "labels.txt"
    config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=1)
    set_parameters(config, {SPEC_PARAMETER: pipeline.to_json()})
    return config


def preprocess_spec(pipeline: Pipeline) -> Pipeline:
    """What a preprocess step needs of its pipeline, and no more: pipelines that preprocess alike share one step."""
    return dataclasses.replace(pipeline, name="", members=(), weights=(), description="")


def fuse_spec(pipeline: Pipeline) -> Pipeline:
    """What a fuse step needs: how many members, their weights and the views; members are only positions to it."""
    return dataclasses.replace(pipeline, name="", members=tuple(f"m{i}" for i in range(len(pipeline.members))),
                               weights=tuple(pipeline.member_weights()), description="")


def ensemble_config(pipeline: Pipeline, num_classes: int, has_labels: bool, preprocess: str | None = None,
                    fuse: str | None = None) -> mc.ModelConfig:
    """image (one encoded image) -> preprocess -> every member on every view -> fuse -> probs [classes]; the steps
    are ``preprocess`` and ``fuse`` (models that may serve other pipelines too), ``<pipeline>_preprocess`` and
    ``<pipeline>_fuse`` unless given."""
    config = mc.ModelConfig(name=pipeline.name, platform="ensemble", max_batch_size=0)
    config.input.add(name=INPUT, data_type=mc.TYPE_STRING, dims=[1])
    output = config.output.add(name=PROBS, data_type=mc.TYPE_FP32, dims=[num_classes])
    if has_labels:
        output.label_filename = "labels.txt"
    steps = config.ensemble_scheduling.step
    preprocess_step = steps.add(model_name=preprocess or f"{pipeline.name}_preprocess", model_version=-1)
    preprocess_step.input_map[INPUT] = INPUT
    posteriors = []
    for view in pipeline.views():
        preprocess_step.output_map[view.tensor] = view.tensor
    for index, member in enumerate(pipeline.members):
        for view in pipeline.views():
            step = steps.add(model_name=member, model_version=-1)
            step.input_map[INPUT] = view.tensor
            step.output_map[PROBS] = f"m{index}_{view.tensor}"
            posteriors.append(f"m{index}_{view.tensor}")
    fuse_step = steps.add(model_name=fuse or f"{pipeline.name}_fuse", model_version=-1)
    for name in posteriors:
        fuse_step.input_map[name] = name
    fuse_step.output_map[PROBS] = PROBS
    config.response_cache.enable = True  # deterministic: a repeated image is a look-up (when the launcher has a cache)
    set_parameters(config, {SPEC_PARAMETER: pipeline.to_json()})
    return config


def cascade_config(cascade: Cascade, num_classes: int, has_labels: bool, limits: ImageLimits) -> mc.ModelConfig:
    """image -> the cascade's Python model (server/pipeline_steps/cascade.py), which calls the stages' members."""
    config = mc.ModelConfig(name=cascade.name, backend="python", max_batch_size=0)
    config.input.add(name=INPUT, data_type=mc.TYPE_STRING, dims=[1])
    output = config.output.add(name=PROBS, data_type=mc.TYPE_FP32, dims=[num_classes])
    if has_labels:
        output.label_filename = "labels.txt"
    config.output.add(name="stage", data_type=mc.TYPE_STRING, dims=[1])
    config.output.add(name="stages", data_type=mc.TYPE_STRING, dims=[-1])
    config.output.add(name=STAGE_REPORT, data_type=mc.TYPE_STRING, dims=[-1])
    config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=cascade.instances)
    config.response_cache.enable = True
    set_parameters(config, {SPEC_PARAMETER: cascade.to_json(), KIND_PARAMETER: CASCADE_KIND,
                             LIMITS_PARAMETER: json.dumps(dataclasses.asdict(limits))})
    return config


def set_parameters(config: mc.ModelConfig, values: dict[str, str]) -> None:
    config.parameters[GENERATED_MARK].string_value = GENERATOR
    for key, value in values.items():
        config.parameters[key].string_value = value
