"""Triton Python model: the pipeline's first step. Encoded image -> the rescaled views every member evaluates.

One request holds one image (images differ in size, and the paper's isotropic rescale rules out padding them into
one tensor); its views at each scale Q go out as one tensor per (kind, Q): `dense_Q` [1|2, 3, H, W] (the image and
its mirror) and `crops_Q` [grid² (x2), 3, c, c].
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import triton_python_backend_utils as pb_utils

from client.contract import INPUT, INVALID_IMAGE, LIMITS_PARAMETER, SPEC_PARAMETER, image_error
from server.pipeline_spec import Pipeline
from server.step_watch import Marker, watched
from vgg.imaging import ImageLimits, ImageRejected, decode_rgb, dense_views, grid_crops, rescale

if TYPE_CHECKING:
    from PIL import Image


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        parameters = json.loads(args["model_config"]).get("parameters", {})
        self.pipeline = Pipeline.from_json(parameters[SPEC_PARAMETER]["string_value"])
        self.limits = ImageLimits(**json.loads(parameters[LIMITS_PARAMETER]["string_value"]))
        self.marker = Marker(args["model_config"])

    @watched
    def execute(self, requests: list) -> list:
        return [self._one(request) for request in requests]

    def _one(self, request: object) -> object:
        image = decode_request(request, self.limits)
        if isinstance(image, str):
            return _error(image)
        pipeline = self.pipeline
        tensors = []
        for q in pipeline.scales:
            chw = rescale(image, q)
            if pipeline.dense:
                tensors.append(pb_utils.Tensor(f"dense_{q}", dense_views(chw, pipeline.flips)))
            if pipeline.multi_crop:
                crops = grid_crops(chw, pipeline.crop_size, pipeline.grid, pipeline.flips)
                tensors.append(pb_utils.Tensor(f"crops_{q}", crops))
        return pb_utils.InferenceResponse(output_tensors=tensors)

def decode_request(request: object, limits: ImageLimits) -> Image.Image | str:
    """The request's one encoded image decoded within the limits, or the invalid-image message refusing it (the
    preprocess step and the cascade answer bad input alike)."""
    data = pb_utils.get_input_tensor_by_name(request, INPUT).as_numpy()
    if data.size != 1:
        return image_error(INVALID_IMAGE, f"expected one encoded image per request, got {data.size}")
    try:
        return decode_rgb(bytes(data.reshape(-1)[0]), limits)
    except ImageRejected as exc:
        return str(exc)
    except Exception as exc:  # decoders meet hostile bytes with all kinds of exceptions; none may escape
        return image_error(INVALID_IMAGE, f"undecodable image ({type(exc).__name__}: {exc})")


def _error(message: str) -> object:
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG))
