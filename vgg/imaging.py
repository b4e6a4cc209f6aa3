"""Decode untrusted image bytes and lay out the paper's test-time views (Sec. 3.2).

Used by the pipeline's preprocess step inside Triton. Every rejection raises `ImageRejected` whose message starts
with a bracketed code ("[invalid_image]", "[image_too_large]", "[image_too_small]") that the gateway maps to HTTP.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, TiffImagePlugin, UnidentifiedImageError, WebPImagePlugin

from client.contract import IMAGE_TOO_LARGE, IMAGE_TOO_SMALL, INVALID_IMAGE, image_error

FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")  # JPEG includes multi-picture (MPO) phone photos
BACKGROUND = (255, 255, 255)  # transparent pixels are composited on white
Image.MAX_IMAGE_PIXELS = None  # the pixel limit below replaces PIL's warning-only check
# Image.open(formats=...) loads all of PIL's ~40 plugins (4 MB per process) unless every format named is registered:
# the preloaded BMP, GIF, JPEG and PNG, and these two.
_REGISTERED = (TiffImagePlugin, WebPImagePlugin)


class ImageRejected(ValueError):
    """An image the pipeline cannot evaluate; the message names the problem."""


@dataclass(frozen=True)
class ImageLimits:
    max_pixels: int = 40_000_000  # a 40 MP photo decodes to 120 MB of RGB; bombs claim far more
    min_side: int = 16  # smaller sources carry too little to upscale to any test scale meaningfully
    max_aspect_ratio: float = 10.0  # rescaling the short side to Q would blow the long side up past this


def decode_rgb(data: bytes, limits: ImageLimits) -> Image.Image:
    """Bytes -> upright 8-bit RGB image, or ImageRejected."""
    if not data:
        raise ImageRejected(image_error(INVALID_IMAGE, "empty image data"))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError:
        raise ImageRejected(image_error(INVALID_IMAGE, f"not a supported image ({', '.join(FORMATS)})")) from None
    except (OSError, ValueError) as exc:
        raise ImageRejected(image_error(INVALID_IMAGE, f"unreadable image header: {exc}")) from None
    width, height = image.size
    if width * height > limits.max_pixels:
        raise ImageRejected(image_error(IMAGE_TOO_LARGE, f"{width}x{height} is {width * height:,} pixels; the limit "
                                        f"is {limits.max_pixels:,}"))
    if min(width, height) < limits.min_side:
        raise ImageRejected(image_error(IMAGE_TOO_SMALL, f"{width}x{height}: the smaller side must be at least "
                                        f"{limits.min_side}"))
    if max(width, height) > limits.max_aspect_ratio * min(width, height):
        raise ImageRejected(image_error(INVALID_IMAGE, f"aspect ratio of {width}x{height} exceeds "
                                        f"{limits.max_aspect_ratio:g}:1"))
    try:
        image.seek(0)  # GIF/TIFF: the first frame
        image.load()
        ImageOps.exif_transpose(image, in_place=True)  # in place: a copy of a 12 MP photo costs milliseconds
        return to_rgb(image)
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageRejected(image_error(INVALID_IMAGE, f"corrupt or truncated {image.format} data: {exc}")) from None


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB: alpha composited on the background, 16-bit and float scaled to 8 bits."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        scale = 255.0 / 65535.0 if image.mode.startswith("I") and array.max(initial=0) > 255 else 1.0
        image = Image.fromarray(np.clip(array * scale + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def rescaled_size(width: int, height: int, q: int) -> tuple[int, int]:
    """Isotropic rescale: the smaller side becomes Q, the other keeps the aspect ratio."""
    if width <= height:
        return q, max(q, round(height * q / width))
    return max(q, round(width * q / height)), q


def rescale(image: Image.Image, q: int) -> np.ndarray:
    """RGB image -> float32 [3, H, W] (0-255) with its smaller side equal to Q (bilinear, antialiased)."""
    size = rescaled_size(*image.size, q)
    resized = image if size == image.size else image.resize(size, Image.Resampling.BILINEAR)
    hwc = np.asarray(resized)
    chw = np.empty((3, *hwc.shape[:2]), np.float32)
    np.copyto(chw, hwc.transpose(2, 0, 1))  # cast and transpose in one pass, without a float HWC copy
    return chw


def dense_views(chw: np.ndarray, flips: bool) -> np.ndarray:
    """The whole rescaled image, and its horizontal mirror when flips are on: [1 or 2, 3, H, W].

    Without flips it is a view of `chw` (no copy of a megabyte-sized tensor on every request)."""
    chw = np.ascontiguousarray(chw)
    if not flips:
        return chw[np.newaxis]
    views = np.empty((2, *chw.shape), chw.dtype)
    views[0] = chw
    views[1] = chw[:, :, ::-1]
    return views


def grid_offsets(length: int, crop: int, grid: int) -> list[int]:
    """`grid` evenly spaced crop origins from one edge to the other."""
    if grid == 1:
        return [(length - crop) // 2]
    return [round(i * (length - crop) / (grid - 1)) for i in range(grid)]


def grid_crops(chw: np.ndarray, crop: int, grid: int, flips: bool) -> np.ndarray:
    """The paper's multi-crop: a grid x grid regular grid of crop x crop windows (and their mirrors)."""
    _, height, width = chw.shape
    crops = [chw[:, y:y + crop, x:x + crop]
             for y in grid_offsets(height, crop, grid) for x in grid_offsets(width, crop, grid)]
    if flips:
        crops += [c[:, :, ::-1] for c in crops]
    return np.ascontiguousarray(np.stack(crops))
