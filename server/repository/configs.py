"""The Triton configs: every pipeline's ensemble (or cascade model) and the preprocess and fuse steps they share.

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
from server.pipeline_spec import (
    FUSE_STEP,
    FUSIONS_PARAMETER,
    PREPROCESS_STEP,
    VIEWS_PARAMETER,
    Pipeline,
    SpecError,
    fused_output,
    posterior,
)
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


def preprocess_config(pipelines: list[Pipeline], limits: ImageLimits) -> mc.ModelConfig:
    """The one preprocess step of every pipeline: an output per distinct view, as many instances as the most any
    pipeline asks for."""
    config = mc.ModelConfig(name=PREPROCESS_STEP, backend="python", max_batch_size=0)
    config.input.add(name=INPUT, data_type=mc.TYPE_STRING, dims=[1])
    views = dict(sorted({view.recipe: view for pipeline in pipelines for view in pipeline.views()}.items()))
    for name, view in views.items():
        side = [-1, -1] if view.kind == "dense" else [view.crop_size, view.crop_size]
        config.output.add(name=name, data_type=mc.TYPE_FP32, dims=[-1, 3, *side])
    count = max(pipeline.preprocess_instances for pipeline in pipelines)
    config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=count)
    set_parameters(config, {VIEWS_PARAMETER: json.dumps({name: dataclasses.asdict(view)
                                                         for name, view in views.items()}),
                             LIMITS_PARAMETER: json.dumps(dataclasses.asdict(limits))})
    return config


def fuse_config(pipelines: dict[Pipeline, int]) -> mc.ModelConfig:
    """The one fuse step of every pipeline (pipeline -> its number of classes): an output per pipeline, the union of
    their posteriors as optional inputs. Members are only positions to it, so pipelines of different members share
    input names."""
    config = mc.ModelConfig(name=FUSE_STEP, backend="python", max_batch_size=0)
    inputs = sorted({name for pipeline in pipelines for name in pipeline.posteriors()})
    for name in inputs:
        config.input.add(name=name, data_type=mc.TYPE_FP32, dims=[-1, -1], optional=True)
    for pipeline, num_classes in sorted(pipelines.items(), key=lambda item: item[0].name):
        config.output.add(name=fused_output(pipeline.name), data_type=mc.TYPE_FP32, dims=[num_classes])
    config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=1)
    fusions = {fused_output(p.name): json.loads(fuse_spec(p).to_json()) for p in pipelines}
    set_parameters(config, {FUSIONS_PARAMETER: json.dumps(fusions, sort_keys=True)})
    return config


def fuse_spec(pipeline: Pipeline) -> Pipeline:
    """What the fuse step needs of a pipeline: its members' weights and its views; members are only positions."""
    return dataclasses.replace(pipeline, members=tuple(f"m{i}" for i in range(len(pipeline.members))),
                               weights=tuple(pipeline.member_weights()), description="")


def ensemble_config(pipeline: Pipeline, num_classes: int, has_labels: bool) -> mc.ModelConfig:
    """image (one encoded image) -> the preprocess step's views of this pipeline -> every member on every view ->
    the fuse step's output for this pipeline -> probs [classes]."""
    config = mc.ModelConfig(name=pipeline.name, platform="ensemble", max_batch_size=0)
    config.input.add(name=INPUT, data_type=mc.TYPE_STRING, dims=[1])
    output = config.output.add(name=PROBS, data_type=mc.TYPE_FP32, dims=[num_classes])
    if has_labels:
        output.label_filename = "labels.txt"
    steps = config.ensemble_scheduling.step
    preprocess_step = steps.add(model_name=PREPROCESS_STEP, model_version=-1)
    preprocess_step.input_map[INPUT] = INPUT
    for view in pipeline.views():
        preprocess_step.output_map[view.recipe] = view.tensor
    for index, member in enumerate(pipeline.members):
        for view in pipeline.views():
            step = steps.add(model_name=member, model_version=-1)
            step.input_map[INPUT] = view.tensor
            step.output_map[PROBS] = posterior(index, view)
    fuse_step = steps.add(model_name=FUSE_STEP, model_version=-1)
    for name in pipeline.posteriors():
        fuse_step.input_map[name] = name
    fuse_step.output_map[fused_output(pipeline.name)] = PROBS
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
