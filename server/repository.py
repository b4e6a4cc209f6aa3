"""Generate the Triton model repository's pipelines from the declarative spec: the one tool that writes them.

    python -m server.repository --spec pipelines.toml --repository model_repository

For each pipeline P it writes the ensemble `P`, its preprocess step `P_preprocess` and its fusion step `P_fuse`,
and, when P has dense views, `P_maps`: the same steps, also answering each member's class score maps (maps.py);
member models missing from the repository are exported from the checkpoints the spec names. Files are rewritten
only when their content changes, so a second run changes nothing; generated models no longer in the spec are
removed. Nobody edits the generated configs by hand.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from client.contract import CASCADE_KIND, INPUT, KIND_PARAMETER, PROBS, SPEC_PARAMETER
from server.cascade_spec import Cascade, with_resolved_stages
from server.maps import maps_ensemble_config
from server.pipeline_spec import Pipeline, Spec, SpecError, load_spec
from vgg.imaging import ImageLimits
from vgg.staging import staging_dir

PROJECT_ROOT = Path(__file__).resolve().parent.parent
STEP_SOURCES = Path(__file__).resolve().parent / "triton_models"
GENERATED_MARK = "generated_by"
GENERATOR = "server.repository"


@dataclasses.dataclass(frozen=True)
class Member:
    """What the generator needs to know of an exported model, read from its config.pbtxt."""

    name: str
    num_classes: int
    min_input_size: int
    labels: Path | None


def read_member(repository: Path, name: str) -> Member:
    path = repository / name / "config.pbtxt"
    if not path.exists():
        raise SpecError(f"model {name!r} is not in {repository} and the spec names no checkpoint to export it from")
    config = text_format.Parse(path.read_text(), mc.ModelConfig())
    probs = next((o for o in config.output if o.name == PROBS), None)
    if probs is None:
        raise SpecError(f"model {name!r} has no 'probs' output; export it with export/to_onnx.py")
    min_size = config.parameters["vgg.min_input_size"].string_value if "vgg.min_input_size" in config.parameters \
        else "0"
    labels = repository / name / probs.label_filename if probs.label_filename else None
    return Member(name, int(probs.dims[-1]), int(min_size), labels)


def export_missing(spec: Spec, repository: Path) -> None:
    """Export each member that the repository lacks from its checkpoint, int8/bf16 variants included (a subprocess:
    the server never imports torch). The exporter writes into a staging repository beside the real one and only the
    missing models are moved in, so a model already served is never rewritten or given a new version."""
    needed = {m for p in spec.pipelines.values() for m in p.members}
    todo = []
    for source in sorted(spec.models.values(), key=lambda s: s.name):
        missing = {name: variant for name, variant in source.exported_names().items()
                   if name in needed and not (repository / name / "config.pbtxt").exists()}
        if source.checkpoint is not None and missing:
            todo.append((source, missing))
    for source, _ in todo:  # all inputs exist before the first export: no half-built repository from a typo
        for what, relative in (("checkpoint", source.checkpoint), ("labels", source.labels),
                               ("calibration", source.calibration)):
            if relative and not (PROJECT_ROOT / relative).exists():
                raise SpecError(f"models.{source.name}: {what} {PROJECT_ROOT / relative} does not exist "
                                "(relative paths start at the project root)")
    for source, missing in todo:
        command = [sys.executable, str(PROJECT_ROOT / "export" / "to_onnx.py"), str(PROJECT_ROOT / source.checkpoint),
                   "--name", source.name, "--instances", str(source.instances), "--threads", str(source.threads)]
        if source.labels:
            command += ["--labels", str(PROJECT_ROOT / source.labels)]
        variants = [variant for variant in missing.values() if variant]
        if "int8" in variants:
            command += ["--quantize", "int8"]
        if "bf16" in variants:
            command += ["--bf16"]
        if variants:
            command += ["--calibration", str(PROJECT_ROOT / (source.calibration or ""))]
        print(f"exporting {', '.join(missing)} from {source.checkpoint}", flush=True)
        staging = staging_dir(repository, f".export-{source.name}-")
        try:
            if subprocess.run([*command, "--repository", str(staging)]).returncode != 0:
                raise SpecError(f"exporting {source.name} from {source.checkpoint} failed (see above)")
            for name in missing:
                os.rename(staging / name, repository / name)
                print(f"installed {repository / name} (exported into the temporary {staging.name}/ above)", flush=True)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


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
    _set_parameters(config, {SPEC_PARAMETER: pipeline.to_json(),
                             "image.limits": json.dumps(dataclasses.asdict(limits))})
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
    _set_parameters(config, {SPEC_PARAMETER: pipeline.to_json()})
    return config


def ensemble_config(pipeline: Pipeline, num_classes: int, has_labels: bool) -> mc.ModelConfig:
    """image (one encoded image) -> preprocess -> every member on every view -> fuse -> probs [classes]."""
    config = mc.ModelConfig(name=pipeline.name, platform="ensemble", max_batch_size=0)
    config.input.add(name=INPUT, data_type=mc.TYPE_STRING, dims=[1])
    output = config.output.add(name=PROBS, data_type=mc.TYPE_FP32, dims=[num_classes])
    if has_labels:
        output.label_filename = "labels.txt"
    steps = config.ensemble_scheduling.step
    preprocess = steps.add(model_name=f"{pipeline.name}_preprocess", model_version=-1)
    preprocess.input_map[INPUT] = INPUT
    posteriors = []
    for view in pipeline.views():
        preprocess.output_map[view.tensor] = view.tensor
    for index, member in enumerate(pipeline.members):
        for view in pipeline.views():
            step = steps.add(model_name=member, model_version=-1)
            step.input_map[INPUT] = view.tensor
            step.output_map[PROBS] = f"m{index}_{view.tensor}"
            posteriors.append(f"m{index}_{view.tensor}")
    fuse = steps.add(model_name=f"{pipeline.name}_fuse", model_version=-1)
    for name in posteriors:
        fuse.input_map[name] = name
    fuse.output_map[PROBS] = PROBS
    _set_parameters(config, {SPEC_PARAMETER: pipeline.to_json()})
    return config


def cascade_config(cascade: Cascade, num_classes: int, has_labels: bool, limits: ImageLimits) -> mc.ModelConfig:
    """image -> the cascade's Python model (server/triton_models/cascade.py), which calls the stages' members."""
    config = mc.ModelConfig(name=cascade.name, backend="python", max_batch_size=0)
    config.input.add(name=INPUT, data_type=mc.TYPE_STRING, dims=[1])
    output = config.output.add(name=PROBS, data_type=mc.TYPE_FP32, dims=[num_classes])
    if has_labels:
        output.label_filename = "labels.txt"
    config.output.add(name="stage", data_type=mc.TYPE_STRING, dims=[1])
    config.output.add(name="stages", data_type=mc.TYPE_STRING, dims=[-1])
    config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=cascade.instances)
    _set_parameters(config, {SPEC_PARAMETER: cascade.to_json(), KIND_PARAMETER: CASCADE_KIND,
                             "image.limits": json.dumps(dataclasses.asdict(limits))})
    return config


def _set_parameters(config: mc.ModelConfig, values: dict[str, str]) -> None:
    config.parameters[GENERATED_MARK].string_value = GENERATOR
    for key, value in values.items():
        config.parameters[key].string_value = value


@dataclasses.dataclass
class MemberUsage:
    """The tensor shapes the pipelines send a member: what a GPU engine's profiles and warm-up must cover."""

    min_side: int
    dense: set[tuple[int, int]] = dataclasses.field(default_factory=set)  # (batch, Q)
    crops: set[tuple[int, int]] = dataclasses.field(default_factory=set)  # (batch, crop size)

    def add(self, pipeline: Pipeline) -> None:
        mirrors = 2 if pipeline.flips else 1
        for view in pipeline.views():
            if view.kind == "dense":
                self.dense.add((mirrors, view.scale))
            else:
                self.crops.add((pipeline.grid ** 2 * mirrors, pipeline.crop_size))


GPU_MAX_ASPECT = 2  # TensorRT profiles cover long sides up to 2 Q (4:3, 3:2, 16:9 photos); memory grows with it


def deploy_member(config: mc.ModelConfig, target: str, usage: MemberUsage) -> mc.ModelConfig | None:
    """The member's config for the deployment target, or None when it needs no change.

    cpu: as the exporter wrote it. gpu (NVIDIA's container, native onnxruntime backend): a GPU instance, TensorRT
    FP16 with an engine cache, optimisation profiles covering every shape the pipelines send (dense views up to
    GPU_MAX_ASPECT; crop batches), and warm-up requests of those shapes so no client pays for an engine build.
    """
    deployed = config.parameters["deployment.target"].string_value if "deployment.target" in config.parameters \
        else "cpu"
    if config.platform != "onnxruntime_onnx" or (target == "cpu" and deployed == "cpu"):
        return None
    if config.optimization.execution_accelerators.cpu_execution_accelerator:
        return None  # a CPU-accelerated variant (OpenVINO bf16) stays on the CPU
    if "vgg.precision" in config.parameters and config.parameters["vgg.precision"].string_value == "int8":
        return None  # CPU int8 (VNNI) QDQ model; on GPUs TensorRT runs the FP32 member in FP16 instead
    out = mc.ModelConfig()
    out.CopyFrom(config)
    del out.optimization.execution_accelerators.gpu_execution_accelerator[:]
    del out.model_warmup[:]
    for group in out.instance_group:
        group.kind = mc.ModelInstanceGroup.KIND_GPU if target == "gpu" else mc.ModelInstanceGroup.KIND_CPU
    if target == "cpu":
        del out.parameters["deployment.target"]
        if not out.optimization.execution_accelerators.ListFields():
            out.optimization.ClearField("execution_accelerators")
        if not out.optimization.ListFields():
            out.ClearField("optimization")
        return out
    out.parameters["deployment.target"].string_value = "gpu"
    m = usage.min_side
    profiles = []
    if usage.dense:
        batch, top = max(b for b, _ in usage.dense), max(q for _, q in usage.dense)
        middle = sorted(q for _, q in usage.dense)[len(usage.dense) // 2]
        profiles.append((f"1x3x{m}x{m}", f"{batch}x3x{middle}x{middle * 4 // 3}",
                         f"{batch}x3x{top * GPU_MAX_ASPECT}x{top * GPU_MAX_ASPECT}"))
    for batch, crop in sorted(usage.crops):
        profiles.append((f"1x3x{crop}x{crop}", f"{batch}x3x{crop}x{crop}", f"{batch}x3x{crop}x{crop}"))
    tensorrt = out.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
    tensorrt.parameters.update({
        "precision_mode": "FP16",
        "max_workspace_size_bytes": str(4 << 30),
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": f"/tmp/trt_cache/{config.name}",
        "trt_profile_min_shapes": ",".join(f"image:{p[0]}" for p in profiles),
        "trt_profile_opt_shapes": ",".join(f"image:{p[1]}" for p in profiles),
        "trt_profile_max_shapes": ",".join(f"image:{p[2]}" for p in profiles),
    })
    shapes = sorted({(b, q, q * 4 // 3) for b, q in usage.dense} | {(b, c, c) for b, c in usage.crops})
    for batch, height, width in shapes:
        warmup = out.model_warmup.add(name=f"warmup_{batch}x{height}x{width}", batch_size=batch)
        warmup.inputs[INPUT].data_type = mc.TYPE_FP32
        warmup.inputs[INPUT].dims.extend([3, height, width])
        warmup.inputs[INPUT].random_data = True
    return out


def generate(spec: Spec, repository: Path, target: str = "cpu") -> list[str]:
    """Write every pipeline's three models (and members' deployment settings); returns the paths that changed."""
    try:
        limits = ImageLimits(**spec.limits)
    except TypeError as exc:
        raise SpecError(f"limits: {exc}".replace("ImageLimits.__init__() ", "")) from None
    export_missing(spec, repository)
    files: dict[Path, bytes] = {}
    usage: dict[str, MemberUsage] = {}
    resolved: dict[str, Pipeline] = {}
    for pipeline in spec.pipelines.values():
        if isinstance(pipeline, Cascade):
            continue
        members = [read_member(repository, m) for m in pipeline.members]
        pipeline = resolved[pipeline.name] = resolve(pipeline, members)
        for member in members:
            usage.setdefault(member.name, MemberUsage(member.min_input_size)).add(pipeline)
        labels = members[0].labels if members[0].labels and members[0].labels.exists() else None
        classes = members[0].num_classes
        models = {
            f"{pipeline.name}_preprocess": (preprocess_config(f"{pipeline.name}_preprocess", pipeline, limits),
                                            STEP_SOURCES / "preprocess.py"),
            f"{pipeline.name}_fuse": (fuse_config(f"{pipeline.name}_fuse", pipeline, classes, labels is not None),
                                      STEP_SOURCES / "fuse.py"),
            pipeline.name: (ensemble_config(pipeline, classes, labels is not None), None),
        }
        if pipeline.dense:
            windows = {m.name: m.min_input_size for m in members}
            maps = maps_ensemble_config(ensemble_config(pipeline, classes, labels is not None), pipeline, windows)
            models[maps.name] = (maps, None)
        for name, (config, source) in models.items():
            files[repository / name / "config.pbtxt"] = text_format.MessageToString(config).encode()
            files[repository / name / "1" / "model.py"] = source.read_bytes() if source else None
            if labels is not None and not name.endswith("_preprocess"):
                files[repository / name / "labels.txt"] = labels.read_bytes()
    for cascade in (p for p in spec.pipelines.values() if isinstance(p, Cascade)):
        files.update(cascade_files(with_resolved_stages(cascade, resolved), repository, limits))
    for name, used in usage.items():
        path = repository / name / "config.pbtxt"
        deployed = deploy_member(text_format.Parse(path.read_text(), mc.ModelConfig()), target, used)
        if deployed is not None:
            files[path] = text_format.MessageToString(deployed).encode()
    changed = [str(path) for path, content in files.items() if _write_if_changed(path, content)]
    generated = {path.parent.name for path in files if path.name == "config.pbtxt"}
    for stale in _generated_models(repository) - generated:
        shutil.rmtree(repository / stale)
        changed.append(f"{repository / stale} (removed)")
    return changed


def cascade_files(cascade: Cascade, repository: Path, limits: ImageLimits) -> dict[Path, bytes]:
    members = [read_member(repository, m) for m in cascade.members]
    if len({m.num_classes for m in members}) != 1:
        raise SpecError(f"pipelines.{cascade.name}: the stages' members disagree on the number of classes "
                        + ", ".join(f"{m.name}={m.num_classes}" for m in members))
    labels = members[0].labels if members[0].labels and members[0].labels.exists() else None
    config = cascade_config(cascade, members[0].num_classes, labels is not None, limits)
    files = {repository / cascade.name / "config.pbtxt": text_format.MessageToString(config).encode(),
             repository / cascade.name / "1" / "model.py": (STEP_SOURCES / "cascade.py").read_bytes()}
    if labels is not None:
        files[repository / cascade.name / "labels.txt"] = labels.read_bytes()
    return files


def _write_if_changed(path: Path, content: bytes | None) -> bool:
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


def _generated_models(repository: Path) -> set[str]:
    names = set()
    for config in repository.glob("*/config.pbtxt"):
        if f'key: "{GENERATED_MARK}"' in config.read_text():
            names.add(config.parent.name)
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=PROJECT_ROOT / "pipelines.toml")
    parser.add_argument("--repository", type=Path, default=PROJECT_ROOT / "model_repository")
    parser.add_argument("--target", choices=["cpu", "gpu"], default="cpu",
                        help="gpu: member models on GPU instances with TensorRT FP16, profiles and warm-up "
                             "(NVIDIA's tritonserver container)")
    args = parser.parse_args(argv)
    try:
        spec = load_spec(args.spec)
        changed = generate(spec, args.repository, args.target)
    except SpecError as exc:
        print(f"repository: error: {exc}", file=sys.stderr)
        return 1
    print(f"{len(spec.pipelines)} pipelines in {args.repository}: "
          + (f"{len(changed)} files written" if changed else "already up to date"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
