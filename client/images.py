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


def _array_to_pil(array: Any) -> Any:
    import numpy as np
    from PIL import Image

    pixels = np.asarray(array)
    if pixels.dtype.kind == "f":  # floats are taken as 0..1 intensities
        pixels = np.clip(pixels * 255.0 + 0.5, 0, 255).astype(np.uint8)
    elif pixels.dtype != np.uint8:
        pixels = np.clip(pixels, 0, 255).astype(np.uint8)
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] not in (3, 4)):
        raise ValueError(f"expected an HxW, HxWx3 or HxWx4 array, got shape {pixels.shape}")
    return Image.fromarray(pixels)


def _pil_to_png(image: Any) -> bytes:
    if image.mode not in ("1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"):
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=1)  # lossless; fast compression, the network is local
    return buffer.getvalue()
