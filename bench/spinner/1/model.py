"""Fault injection only: a Python-backend step that never returns from an input starting with b"spin" (a stuck
computation), and answers the input's length otherwise. Marked like the project's own steps (server/step_watch.py)."""

from __future__ import annotations

import numpy as np
import triton_python_backend_utils as pb_utils

from server.step_watch import Marker, watched


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        self.marker = Marker(args["model_config"])

    @watched
    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:
            data = bytes(pb_utils.get_input_tensor_by_name(request, "image").as_numpy().reshape(-1)[0])
            while data.startswith(b"spin"):  # stuck: busy, alive, never done
                pass
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("length", np.array([len(data)]))]))
        return responses
