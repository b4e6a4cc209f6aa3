"""Class score maps for one image: ask the pipeline's `<name>_maps` ensemble and lay its maps out for display.

Triton computes everything of the protocol (the views, every member's score map, the fused posterior); this module
only picks the top-k classes' planes, adds the per-cell softmax, mirrors the flipped views' maps back, and says
where each cell lies on the original image, so a client can overlay them exactly.

Geometry, in the pixels of the view rescaled to Q (``rescaled_size``): cell (row i, column j) is the score of the
``window`` x ``window`` square whose top-left corner is ``origin + stride * (j, i)`` (the training-size window fc6
sees; stride 32). Divide by ``rescaled_size / image_size`` for original pixels.
"""

from __future__ import annotations

import io
import json
import struct
from typing import Any

import numpy as np
from PIL import Image

from client.contract import INPUT, PROBS
from server.gateway.errors import ApiError
from server.gateway.triton_http import TritonHttpClient, TritonHttpError
from vgg.imaging import rescaled_size

VALUES = ("probs: softmax over all classes at each cell (comparable across cells, scales and members); scores: the "
          "raw class scores, whose spatial mean, soft-maxed, is exactly the view's posterior")
_SWAPPED_ORIENTATIONS = {5, 6, 7, 8}  # EXIF rotations by 90 degrees: the preprocess step turns the image upright


def maps_request(outputs: list[str], data: bytes, top_k: int, request_id: str | None = None) -> tuple[bytes, int]:
    """(body, JSON header length) of a v2 inference request: the image as one BYTES element, top-k as the
    classification extension's strings (JSON) and the score maps as binary tensors."""
    wanted = [{"name": PROBS, "parameters": {"classification": top_k, "binary_data": False}}]
    wanted += [{"name": name, "parameters": {"binary_data": True}} for name in outputs]
    header = json.dumps({**({"id": request_id} if request_id else {}),
                         "inputs": [{"name": INPUT, "shape": [1], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": len(data) + 4}}],
                         "outputs": wanted}, separators=(",", ":")).encode()
    return header + struct.pack("<I", len(data)) + data, len(header)


async def infer_maps(client: TritonHttpClient, model: str, outputs: list[str], data: bytes,
                     top_k: int, request_id: str | None = None,
                     headers: bytes = b"") -> tuple[list[str], dict[str, np.ndarray]]:
    """(Triton's top-k strings, output name -> float32 score maps [views, classes, h, w])."""
    payload = await client.infer(model, *maps_request(outputs, data, top_k, request_id), headers)
    # The response is a JSON header, then the binary tensors in the order of the header's outputs.
    _, end = json.JSONDecoder().raw_decode(payload.decode("latin-1"))
    header = json.loads(payload[:end])
    offset, top, maps = end, [], {}
    for output in header.get("outputs", []):
        size = output.get("parameters", {}).get("binary_data_size")
        if size is None:
            top = [str(item) for item in output.get("data", [])]
            continue
        maps[output["name"]] = np.frombuffer(payload, np.float32, size // 4, offset).reshape(output["shape"])
        offset += size
    missing = sorted(set(outputs) - set(maps))
    if missing or not top:
        raise TritonHttpError(502, f"the inference server's response lacks {', '.join(missing) or 'probs'}")
    return top, maps


def upright_size(data: bytes) -> tuple[int, int]:
    """(width, height) of the image as the preprocess step sees it: after its EXIF orientation."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            orientation = image.getexif().get(0x0112)
    except Exception:  # Triton decoded it already; a header PIL cannot read here is the service's fault
        raise ApiError(502, "bad_gateway", "the image's size could not be read back for its score maps") from None
    return (height, width) if orientation in _SWAPPED_ORIENTATIONS else (width, height)


def softmax(scores: np.ndarray, axis: int) -> np.ndarray:
    shifted = np.exp(scores - scores.max(axis=axis, keepdims=True))
    return shifted / shifted.sum(axis=axis, keepdims=True)


def lay_out(geometry: dict[str, Any], maps: dict[str, np.ndarray], classes: list[int],
            image_size: tuple[int, int]) -> dict[str, Any]:
    """The JSON body's `maps`: every (member, scale, mirror) view's planes of the chosen classes and its geometry,
    plus the fused map (the protocol's averaging order, on the grid of the finest view)."""
    stride, width, height = geometry["stride"], *image_size
    views = []
    for view in geometry["views"]:
        q, window = view["scale"], view["window"]
        rescaled = rescaled_size(width, height, q)
        stack = maps[view["tensor"]].astype(np.float64)
        for mirror, scores in enumerate(stack):
            cells_y, cells_x = scores.shape[1:]
            origin = [rescaled[0] - window - stride * (cells_x - 1), 0] if mirror else [0, 0]
            scores = scores[:, :, ::-1] if mirror else scores  # columns left to right on the original image
            probs = softmax(scores, axis=0)
            posterior = softmax(scores.mean(axis=(1, 2)), axis=0)
            views.append({"member": view["member"], "member_index": view["index"], "scale": q, "flipped": bool(mirror),
                          "rescaled_size": list(rescaled), "window": window, "origin": origin,
                          "size": [cells_x, cells_y], "posterior": posterior[classes].round(7).tolist(),
                          "scores": scores[classes].round(5).tolist(), "probs": probs[classes].round(6).tolist(),
                          "_probs": probs[classes]})
    fused = _fuse(geometry, views, image_size)
    for view in views:
        del view["_probs"]
    return {"values": VALUES, "classes": classes, "image_size": list(image_size), "stride": stride,
            "views": views, "fused": fused}


def _fuse(geometry: dict[str, Any], views: list[dict[str, Any]], image_size: tuple[int, int]) -> dict[str, Any]:
    """Every view's per-cell probabilities sampled at the cell centres of the finest view (nearest cell), then
    averaged as the posteriors are: over mirrors, then scales, then members with the pipeline's weights."""
    stride = geometry["stride"]
    base = max(views, key=lambda v: (v["size"][0] * v["size"][1], not v["flipped"]))
    centres = []  # original-image coordinates of the base cells' window centres, per axis
    for axis in (0, 1):
        factor = base["rescaled_size"][axis] / image_size[axis]
        cells = np.arange(base["size"][axis])
        centres.append((base["origin"][axis] + stride * cells + base["window"] / 2) / factor)
    by_member: dict[int, dict[int, list[np.ndarray]]] = {}
    for view in views:
        index = []
        for axis in (0, 1):
            factor = view["rescaled_size"][axis] / image_size[axis]
            cell = np.rint((centres[axis] * factor - view["origin"][axis] - view["window"] / 2) / stride)
            index.append(np.clip(cell, 0, view["size"][axis] - 1).astype(int))
        sampled = view["_probs"][:, index[1][:, None], index[0][None, :]]
        by_member.setdefault(view["member_index"], {}).setdefault(view["scale"], []).append(sampled)
    fused = None
    for member, weight in enumerate(geometry["weights"]):
        if member not in by_member:
            continue
        mean = np.mean([np.mean(mirrors, axis=0) for mirrors in by_member[member].values()], axis=0)
        fused = weight * mean if fused is None else fused + weight * mean
    return {"rescaled_size": base["rescaled_size"], "window": base["window"], "origin": base["origin"],
            "size": base["size"], "probs": fused.round(6).tolist()}
