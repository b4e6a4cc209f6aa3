"""Triton Python model: every pipeline's last step. Average soft-max posteriors as the paper does (Sec. 3.2, 4.4).

One model serves every pipeline: it has one output per pipeline, `probs_<pipeline>`, and each ensemble maps out its
own, so the output Triton asks for says whose posteriors came in (the inputs `m{member}_{kind}_{Q}` are optional:
each ensemble fills only its pipeline's). Per member: the mean over the views of one kind (flips and crops) and
then over the scales; dense and multi-crop posteriors averaged when both are on; finally the members' posteriors
averaged with the pipeline's weights.
"""

from __future__ import annotations

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from server.pipeline_spec import FUSIONS_PARAMETER, Pipeline, posterior
from server.step_watch import Marker, watched


def fuse(pipeline: Pipeline, posteriors: dict[str, np.ndarray]) -> np.ndarray:
    """posteriors: input name `m{member}_{kind}_{Q}` -> [views, classes]. Returns [classes]."""
    fused = None
    for index, weight in enumerate(pipeline.member_weights()):
        by_kind: dict[str, list[np.ndarray]] = {}
        for view in pipeline.views():
            by_kind.setdefault(view.kind, []).append(posteriors[posterior(index, view)].mean(axis=0))
        member = np.mean([np.mean(per_scale, axis=0) for per_scale in by_kind.values()], axis=0)
        fused = weight * member if fused is None else fused + weight * member
    return fused.astype(np.float32)


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        parameters = json.loads(args["model_config"]).get("parameters", {})
        self.pipelines = {output: Pipeline.from_json(json.dumps(spec)) for output, spec in
                          json.loads(parameters[FUSIONS_PARAMETER]["string_value"]).items()}
        self.marker = Marker(args["model_config"])

    @watched
    def execute(self, requests: list) -> list:
        return [self._one(request) for request in requests]

    def _one(self, request: object) -> object:
        tensors = []
        for output in request.requested_output_names():
            pipeline = self.pipelines[output]
            posteriors = {name: pb_utils.get_input_tensor_by_name(request, name) for name in pipeline.posteriors()}
            missing = sorted(name for name, tensor in posteriors.items() if tensor is None)
            if missing:  # an ensemble that does not match this step's config: a generator bug, said plainly
                message = f"fuse: {output} needs the inputs {', '.join(missing)}"
                return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, pb_utils.TritonError.INTERNAL))
            probs = fuse(pipeline, {name: tensor.as_numpy() for name, tensor in posteriors.items()})
            tensors.append(pb_utils.Tensor(output, probs))
        return pb_utils.InferenceResponse(output_tensors=tensors)
