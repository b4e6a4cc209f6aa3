"""Triton Python model: the pipeline's last step. Average soft-max posteriors as the paper does (Sec. 3.2, 4.4).

Per member: the mean over the views of one kind (flips and crops) and then over the scales; dense and multi-crop
posteriors averaged when both are on; finally the members' posteriors averaged with the pipeline's weights.
"""

from __future__ import annotations

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from client.contract import PROBS, SPEC_PARAMETER
from server.pipeline_spec import Pipeline
from server.step_watch import Marker, watched


def fuse(pipeline: Pipeline, posteriors: dict[str, np.ndarray]) -> np.ndarray:
    """posteriors: input name `m{member}_{kind}_{Q}` -> [views, classes]. Returns [classes]."""
    fused = None
    for index, weight in enumerate(pipeline.member_weights()):
        by_kind: dict[str, list[np.ndarray]] = {}
        for view in pipeline.views():
            by_kind.setdefault(view.kind, []).append(posteriors[f"m{index}_{view.tensor}"].mean(axis=0))
        member = np.mean([np.mean(per_scale, axis=0) for per_scale in by_kind.values()], axis=0)
        fused = weight * member if fused is None else fused + weight * member
    return fused.astype(np.float32)


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        parameters = json.loads(args["model_config"]).get("parameters", {})
        self.pipeline = Pipeline.from_json(parameters[SPEC_PARAMETER]["string_value"])
        self.inputs = [f"m{i}_{view.tensor}" for i in range(len(self.pipeline.members))
                       for view in self.pipeline.views()]
        self.marker = Marker(args["model_config"])

    @watched
    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:
            posteriors = {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.inputs}
            probs = fuse(self.pipeline, posteriors)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(PROBS, probs)]))
        return responses
