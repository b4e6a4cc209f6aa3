"""A Python-based Triton backend named `onnxruntime`, for Triton builds that lack the native C++ one.

Models configured `platform: "onnxruntime_onnx"` load unchanged through it, so one model repository means the same
thing here and in NVIDIA's tritonserver container. It honours what it can of the native backend's configuration:
instance groups (Triton starts one of these per instance), dynamic batching (requests of equal shape that Triton
hands over together run as one batch), `intra_op_thread_count`, `inter_op_thread_count`, `enable_mem_arena`,
`optimization { graph { level } }`, `default_model_filename`, and the `openvino` CPU execution accelerator (run
with the openvino package; see vgg/runtimes.py). Two parameters are its own: `optimized_model_cache` ("auto": a
`.optimized/` folder beside the model; "off"; or a folder), which loads full-size VGG-16 at a quarter of the peak
memory (vgg/ort_cache.py), and `intra_op_spinning` ("0" unless set: served models share the cores).
"""

from __future__ import annotations

import json
import os
from collections import defaultdict

import numpy as np
import triton_python_backend_utils as pb_utils

from client.contract import IMAGE_TOO_SMALL, MIN_INPUT_SIZE_PARAMETER, image_error
from server.step_watch import Marker, watched
from vgg.runtimes import Accelerator, RuntimeConfigError, SessionSettings, open_runner


def _parameter(config: dict, key: str, default: str) -> str:
    return config.get("parameters", {}).get(key, {}).get("string_value", default)


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        self.name = config["name"]
        filename = config.get("default_model_filename") or "model.onnx"
        path = os.path.join(args["model_repository"], args["model_version"], filename)
        try:
            self.runner = open_runner(path, Accelerator.from_model_config(config),
                                      settings=SessionSettings.from_model_config(config))
        except RuntimeConfigError as exc:
            raise RuntimeError(f"{self.name}: {exc}") from None
        self.input_names, self.output_names = self.runner.input_names, self.runner.output_names
        self.batching = int(config.get("max_batch_size", 0)) > 0
        self.min_input_size = int(_parameter(config, MIN_INPUT_SIZE_PARAMETER, "0"))
        self.marker = Marker(config)

    @watched
    def execute(self, requests: list) -> list:
        responses: list = [None] * len(requests)
        groups: dict[tuple, list[int]] = defaultdict(list)  # equal input shapes run as one batch
        inputs: list[dict[str, np.ndarray]] = []
        for index, request in enumerate(requests):
            feeds = {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.input_names}
            inputs.append(feeds)
            problem = self._check(feeds)
            if problem:
                responses[index] = pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(problem, pb_utils.TritonError.INVALID_ARG))
                continue
            key = tuple((name, feeds[name].shape[1:] if self.batching else feeds[name].shape)
                        for name in self.input_names)
            groups[key].append(index)
        for indices in groups.values():
            self._run_group(requests, inputs, indices, responses)
        return responses

    def _check(self, feeds: dict[str, np.ndarray]) -> str | None:
        """Say clearly what the net cannot take, rather than letting a conv fail with a shape error."""
        if not self.min_input_size:
            return None
        for name, array in feeds.items():
            if array.ndim == 4 and min(array.shape[2:]) < self.min_input_size:
                return image_error(IMAGE_TOO_SMALL, f"{self.name}: input {name} is {array.shape[3]}x"
                                   f"{array.shape[2]}; the net needs at least {self.min_input_size}x"
                                   f"{self.min_input_size}")
        return None

    def _run_group(self, requests: list, inputs: list, indices: list[int], responses: list) -> None:
        try:
            if self.batching and len(indices) > 1:
                feeds = {name: np.concatenate([inputs[i][name] for i in indices]) for name in self.input_names}
            else:
                feeds = inputs[indices[0]]
            outputs = self.runner.run(self.output_names, feeds)
        except Exception as exc:  # the runtime's own message is the most precise one available
            error = pb_utils.TritonError(f"{self.name}: inference failed: {exc}")
            for i in indices:
                responses[i] = pb_utils.InferenceResponse(error=error)
            return
        offset = 0
        for i in indices:
            size = inputs[i][self.input_names[0]].shape[0] if self.batching and len(indices) > 1 else None
            wanted = set(requests[i].requested_output_names()) or set(self.output_names)
            tensors = []
            for name, value in zip(self.output_names, outputs, strict=True):
                if name in wanted:
                    part = value[offset:offset + size] if size is not None else value
                    tensors.append(pb_utils.Tensor(name, np.ascontiguousarray(part)))
            responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
            offset += size or 0

    def finalize(self) -> None:
        self.runner = None
