"""Run an ONNX file with onnxruntime, or with OpenVINO when the model config asks for that CPU accelerator.

Native Triton's onnxruntime backend takes `optimization { execution_accelerators { cpu_execution_accelerator:
[{ name: "openvino" }] } }`; the project's Python-based backend honours the same config through the `openvino`
package, with a `precision` parameter (f32 or bf16), so one repository means the same thing on both runtimes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import onnxruntime as ort

PRECISIONS = {"f32": "f32", "fp32": "f32", "bf16": "bf16"}


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


class OnnxRuntimeRunner:
    def __init__(self, path: str, intra_op_threads: int, inter_op_threads: int, lean: bool = False) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = inter_op_threads
        options.log_severity_level = 3
        if lean:  # no arena holding freed activations, no pre-packed second copy of the weights
            options.enable_cpu_mem_arena = False
            options.add_session_config_entry("session.disable_prepacking", "1")
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, output_names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(output_names, feeds)


class OpenVinoRunner:
    def __init__(self, path: str, precision: str, threads: int) -> None:
        try:
            import openvino as ov
        except ImportError:
            raise RuntimeConfigError("the model asks for the openvino CPU accelerator, but the openvino package is "
                                     "not installed") from None
        core = ov.Core()
        properties = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
        if threads > 0:
            properties["INFERENCE_NUM_THREADS"] = threads
        self.compiled = core.compile_model(core.read_model(path), "CPU", properties)
        self.request = self.compiled.create_infer_request()
        self.input_names = [port.get_any_name() for port in self.compiled.inputs]
        self.output_names = [port.get_any_name() for port in self.compiled.outputs]

    def run(self, output_names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        results = self.request.infer(feeds)
        by_name = {port.get_any_name(): value for port, value in results.items()}
        return [np.array(by_name[name], copy=True) for name in output_names]


def open_runner(path: str, accelerator: Accelerator, intra_op_threads: int = 0,
                inter_op_threads: int = 0) -> OnnxRuntimeRunner | OpenVinoRunner:
    if accelerator.name == "openvino":
        return OpenVinoRunner(path, accelerator.precision, intra_op_threads)
    return OnnxRuntimeRunner(path, intra_op_threads, inter_op_threads)
