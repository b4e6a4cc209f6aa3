"""Run an ONNX file with onnxruntime, or with OpenVINO when the model config asks for that CPU accelerator.

Native Triton's onnxruntime backend takes `optimization { execution_accelerators { cpu_execution_accelerator:
[{ name: "openvino" }] } }`; the project's Python-based backend honours the same config through the `openvino`
package, with a `precision` parameter (f32 or bf16), so one repository means the same thing on both runtimes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import onnxruntime as ort

from vgg.ort_cache import open_session, resolve_cache_dir, writable

PRECISIONS = {"f32": "f32", "fp32": "f32", "bf16": "bf16"}
# onnxruntime sizes its pool to the host's cores, not a container's CPU limit: a deployment sets this (e.g. from
# the container's limits.cpu) and it overrides every model's intra_op_thread_count.
THREADS_ENV = "VGG_ORT_THREADS"


class RuntimeConfigError(ValueError):
    """The model config asks for something this runtime cannot do; the message says what."""


class Runner(Protocol):
    def run(self, output_names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]: ...


@dataclass(frozen=True)
class Accelerator:
    name: str = ""  # "" for plain onnxruntime
    precision: str = "f32"

    @classmethod
    def from_model_config(cls, config: dict) -> Accelerator:
        """Read Triton's JSON model config (as the Python backend receives it)."""
        accelerators = (config.get("optimization", {}).get("execution_accelerators", {})
                        .get("cpu_execution_accelerator", []))
        if not accelerators:
            return cls()
        if len(accelerators) > 1:
            raise RuntimeConfigError("only one cpu_execution_accelerator is supported")
        entry = accelerators[0]
        name = entry.get("name", "")
        if name != "openvino":
            raise RuntimeConfigError(f"unsupported cpu_execution_accelerator {name!r}; only 'openvino' runs on CPU")
        precision = entry.get("parameters", {}).get("precision", "f32").lower()
        if precision not in PRECISIONS:
            raise RuntimeConfigError(f"openvino precision {precision!r} is not one of f32, bf16")
        return cls(name, PRECISIONS[precision])


# Triton's `optimization { graph { level } }`, as the native onnxruntime backend reads it.
GRAPH_LEVELS = {0: ort.GraphOptimizationLevel.ORT_ENABLE_ALL, -1: ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                1: ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, 2: ort.GraphOptimizationLevel.ORT_DISABLE_ALL}


@dataclass(frozen=True)
class SessionSettings:
    """The native backend's session knobs that this backend honours too."""

    intra_op_threads: int = 0
    inter_op_threads: int = 0
    mem_arena: bool = True  # `enable_mem_arena`: off returns activation memory after each run
    graph_level: int = 0
    optimized_model_cache: str = "off"  # this backend's own: "auto" (beside the model), "off" or a folder
    # This backend's own `intra_op_spinning`: idle intra-op threads spin for work (onnxruntime's default). Served,
    # several models' threads share the cores, and spinning ones steal them from the model computing: off measured
    # 8% more images/s for a fusion of three int8 VGGs, no change for one net (docs/export.md).
    spinning: bool = True

    @classmethod
    def from_model_config(cls, config: dict, environ: Mapping[str, str] | None = None) -> SessionSettings:
        parameters = config.get("parameters", {})

        def get(key: str, default: str) -> str:
            return parameters.get(key, {}).get("string_value", default)

        level = int(config.get("optimization", {}).get("graph", {}).get("level", 0))
        if level not in GRAPH_LEVELS:
            raise RuntimeConfigError(f"optimization.graph.level {level} is not one of -1, 0, 1, 2")
        threads = (os.environ if environ is None else environ).get(THREADS_ENV, "").strip()
        if threads and not (threads.isdigit() and int(threads) > 0):
            raise RuntimeConfigError(f"${THREADS_ENV} must be a positive whole number of threads, got {threads!r}")
        return cls(int(threads or get("intra_op_thread_count", "0")), int(get("inter_op_thread_count", "0")),
                   get("enable_mem_arena", "1") not in ("0", "false"), level, get("optimized_model_cache", "auto"),
                   get("intra_op_spinning", "0") not in ("0", "false"))


class OnnxRuntimeRunner:
    def __init__(self, path: str, settings: SessionSettings, prepacking: bool = True) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = settings.intra_op_threads
        options.inter_op_num_threads = settings.inter_op_threads
        options.graph_optimization_level = GRAPH_LEVELS[settings.graph_level]
        options.enable_cpu_mem_arena = settings.mem_arena
        options.log_severity_level = 3
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if settings.spinning else "0")
        if not prepacking:  # measured alternative: no pre-packed second copy of the weights
            options.add_session_config_entry("session.disable_prepacking", "1")
        cache_dir = resolve_cache_dir(settings.optimized_model_cache, Path(path))
        self.session = open_session(Path(path), options, settings.graph_level, cache_dir)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, output_names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(output_names, feeds)


class OpenVinoRunner:
    def __init__(self, path: str, precision: str, threads: int, cache_dir: Path | None = None) -> None:
        try:
            import openvino as ov
        except ImportError:
            raise RuntimeConfigError("the model asks for the openvino CPU accelerator, but the openvino package is "
                                     "not installed") from None
        core = ov.Core()
        properties = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
        if threads > 0:
            properties["INFERENCE_NUM_THREADS"] = threads
        cache_dir = writable(cache_dir / "openvino") if cache_dir is not None else None
        if cache_dir is not None:  # OpenVINO's own compiled-model cache: loads in a quarter of the time, lower peak
            properties["CACHE_DIR"] = str(cache_dir)
        self.compiled = core.compile_model(path, "CPU", properties)
        self.request = self.compiled.create_infer_request()
        self.input_names = [port.get_any_name() for port in self.compiled.inputs]
        self.output_names = [port.get_any_name() for port in self.compiled.outputs]

    def run(self, output_names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        results = self.request.infer(feeds)
        by_name = {port.get_any_name(): value for port, value in results.items()}
        return [np.array(by_name[name], copy=True) for name in output_names]


def open_runner(path: str, accelerator: Accelerator,
                settings: SessionSettings = SessionSettings()) -> OnnxRuntimeRunner | OpenVinoRunner:
    if accelerator.name == "openvino":
        return OpenVinoRunner(path, accelerator.precision, settings.intra_op_threads,
                              resolve_cache_dir(settings.optimized_model_cache, Path(path)))
    return OnnxRuntimeRunner(path, settings)
