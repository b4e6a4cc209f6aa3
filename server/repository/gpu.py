"""The `--target gpu` rewrite of member configs for NVIDIA's container: GPU instances, TensorRT FP16 profiles
covering the shapes the pipelines send, and warm-up requests of those shapes."""

from __future__ import annotations

import dataclasses

from tritonclient.grpc import model_config_pb2 as mc

from client.contract import INPUT
from server.pipeline_spec import Pipeline


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
