"""Triton Python model: every pipeline's first step. Encoded image -> the rescaled views its members evaluate.

One model serves every pipeline: its outputs are the union of their views, each named by its recipe (kind, Q,
crop and flips: `dense_80`, `crops_96_64x5_flip`, ...), and each ensemble maps out only the views it needs, which
are all Triton asks this step for. One request holds one image (images differ in size, and the paper's isotropic
rescale rules out padding them into one tensor); a dense view is [1|2, 3, H, W] (the image and its mirror), a crops
view [grid² (x2), 3, c, c].
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import triton_python_backend_utils as pb_utils

from client.contract import INPUT, INVALID_IMAGE, LIMITS_PARAMETER, image_error
from server.pipeline_spec import VIEWS_PARAMETER, View
from server.step_watch import Marker, watched
from vgg.imaging import ImageLimits, ImageRejected, decode_rgb, dense_views, grid_crops, rescale

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        parameters = json.loads(args["model_config"]).get("parameters", {})
        self.views = {name: View(**view) for name, view in
                      json.loads(parameters[VIEWS_PARAMETER]["string_value"]).items()}
        self.limits = ImageLimits(**json.loads(parameters[LIMITS_PARAMETER]["string_value"]))
        self.marker = Marker(args["model_config"])

    @watched
    def execute(self, requests: list) -> list:
        return [self._one(request) for request in requests]

    def _one(self, request: object) -> object:
        image = decode_request(request, self.limits)
        if isinstance(image, str):
            return _error(image)
        rescaled: dict[int, np.ndarray] = {}
        tensors = [pb_utils.Tensor(name, view_tensor(self.views[name], image, rescaled))
                   for name in request.requested_output_names()]
        return pb_utils.InferenceResponse(output_tensors=tensors)


def view_tensor(view: View, image: Image.Image, rescaled: dict[int, np.ndarray]) -> np.ndarray:
    """The view's tensor; `rescaled` keeps each scale's rescaled image for the other views at that scale."""
    if view.scale not in rescaled:
        rescaled[view.scale] = rescale(image, view.scale)
    chw = rescaled[view.scale]
    if view.kind == "dense":
        return dense_views(chw, view.flips)
    return grid_crops(chw, view.crop_size, view.grid, view.flips)


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
