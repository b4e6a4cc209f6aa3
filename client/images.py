"""Turn whatever the caller has (path, bytes, PIL image, numpy array) into encoded bytes and a content type.

Files and bytes are sent as they are (no re-encoding, so no quality loss and no CPU spent); in-memory pixels are
encoded losslessly as PNG.
"""

from __future__ import annotations

import io
import mimetypes
import os
from pathlib import Path
from typing import Any

from client.errors import ClientError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
_MAGIC = ((b"\xff\xd8\xff", "image/jpeg"), (b"\x89PNG\r\n\x1a\n", "image/png"), (b"GIF8", "image/gif"),
          (b"BM", "image/bmp"), (b"II*\x00", "image/tiff"), (b"MM\x00*", "image/tiff"))
ImageInput = Any  # str | os.PathLike | bytes | PIL.Image.Image | numpy.ndarray


def sniff(data: bytes) -> str:
    """The image content type from the first bytes; application/octet-stream when unknown (the server decides)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    for magic, kind in _MAGIC:
        if data.startswith(magic):
            return kind
    return "application/octet-stream"


def encode(image: ImageInput) -> tuple[bytes, str, str | None]:
    """(bytes, content type, file name or None) for any supported image input."""
    if isinstance(image, bytes | bytearray | memoryview):
        data = bytes(image)
        return data, sniff(data), None
    if isinstance(image, str | os.PathLike):
        path = Path(image)
        data = path.read_bytes()
        guessed = mimetypes.guess_type(path.name)[0]
        kind = guessed if guessed and guessed.startswith("image/") else sniff(data)
        return data, kind, path.name
    if hasattr(image, "__array_interface__") and not hasattr(image, "save"):
        image = _array_to_pil(image)
    if hasattr(image, "save") and hasattr(image, "mode"):
        return _pil_to_png(image), "image/png", None
    raise TypeError(f"unsupported image input {type(image).__name__}: use a path, bytes, a PIL image or an array")


def encode_or_error(image: ImageInput) -> tuple[bytes, str, str | None] | ClientError:
    """encode(), with a file that cannot be read as a ClientError ("read_error", as score() reports it), so one
    bad path in a batch fails only its own slot; a wrong type still raises."""
    try:
        return encode(image)
    except OSError as exc:
        return ClientError(0, "read_error", f"{image}: {exc.strerror or exc}")


def _array_to_pil(array: Any) -> Any:
    import numpy as np
    from PIL import Image

    pixels = np.asarray(array)
    if pixels.size == 0:
        raise ValueError(f"the array is empty (shape {pixels.shape})")
    if pixels.dtype.kind == "b":
        pixels = pixels.astype(np.uint8) * 255
    elif pixels.dtype.kind == "f":  # floats are 0..1 intensities; out-of-range values would be silently wrong
        low, high = float(np.min(pixels)), float(np.max(pixels))
        if not (low >= 0.0 and high <= 1.0):  # NaN fails too
            raise ValueError(f"float pixels must be in 0..1, got {low:g}..{high:g}; for 0..255 values pass uint8")
        pixels = (pixels * 255.0 + 0.5).astype(np.uint8)
    elif pixels.dtype.kind in "iu":
        low, high = int(np.min(pixels)), int(np.max(pixels))
        if low < 0 or high > 255:
            raise ValueError(f"integer pixels must be in 0..255, got {low}..{high}; scale 16-bit images to uint8")
        pixels = pixels.astype(np.uint8)
    else:
        raise TypeError(f"unsupported pixel type {pixels.dtype}: use uint8, or floats in 0..1")
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] not in (3, 4)):
        hint = "; channels first? pass array.transpose(1, 2, 0)" if pixels.ndim == 3 and pixels.shape[0] in (3, 4) \
            else ""
        raise ValueError(f"expected an HxW, HxWx3 or HxWx4 array, got shape {pixels.shape}{hint}")
    return Image.fromarray(pixels)


def _pil_to_png(image: Any) -> bytes:
    if image.width == 0 or image.height == 0:
        raise ValueError(f"the image is empty ({image.width}x{image.height})")
    if image.mode not in ("1", "L", "LA", "I;16", "P", "RGB", "RGBA"):  # what PNG stores as it is
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=1)  # lossless; fast compression, the network is local
    return buffer.getvalue()
