"""Decoding untrusted images into the RGB the nets expect, and the paper's view layout."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from vgg.imaging import (
    ImageLimits,
    ImageRejected,
    decode_rgb,
    dense_views,
    grid_crops,
    grid_offsets,
    rescale,
    rescaled_size,
)

LIMITS = ImageLimits()


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def gradient(width: int = 60, height: int = 40) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None, None]
    rgb = np.concatenate([np.broadcast_to(x, (height, width, 1)), np.broadcast_to(y, (height, width, 1)),
                          np.full((height, width, 1), 90, np.float32)], axis=2)
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF"])
def test_every_supported_format_decodes_to_rgb(fmt):
    image = decode_rgb(encode(gradient(), fmt), LIMITS)
    assert image.mode == "RGB" and image.size == (60, 40)


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    image = decode_rgb(encode(gradient(60, 40), "JPEG", exif=exif), LIMITS)
    assert image.size == (40, 60)


def test_grayscale_palette_cmyk_become_rgb():
    gray = gradient().convert("L")
    decoded = np.asarray(decode_rgb(encode(gray, "PNG"), LIMITS))
    assert (decoded[..., 0] == decoded[..., 1]).all() and (decoded[..., 0] == np.asarray(gray)).all()
    palette = gradient().convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    assert decode_rgb(encode(palette, "PNG"), LIMITS).mode == "RGB"
    cmyk = gradient().convert("CMYK")
    assert decode_rgb(encode(cmyk, "JPEG"), LIMITS).mode == "RGB"


def test_transparency_is_composited_on_white():
    rgba = Image.new("RGBA", (32, 32), (255, 0, 0, 0))
    rgba.paste((0, 0, 255, 255), (0, 0, 16, 32))
    decoded = np.asarray(decode_rgb(encode(rgba, "PNG"), LIMITS))
    assert tuple(decoded[0, 0]) == (0, 0, 255) and tuple(decoded[0, 31]) == (255, 255, 255)
    la = Image.new("LA", (32, 32), (0, 0))
    assert tuple(np.asarray(decode_rgb(encode(la, "PNG"), LIMITS))[5, 5]) == (255, 255, 255)


def test_sixteen_bit_is_scaled_to_eight():
    array = np.full((20, 30), 65535, np.uint16)
    array[:, :15] = 32896
    image = Image.fromarray(array)
    decoded = np.asarray(decode_rgb(encode(image, "PNG"), LIMITS))
    assert decoded[0, 0, 0] == 128 and decoded[0, 29, 0] == 255


def test_gif_first_frame():
    frames = [Image.new("RGB", (30, 30), c) for c in ((255, 0, 0), (0, 255, 0))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert tuple(np.asarray(decode_rgb(data, LIMITS))[0, 0]) == (255, 0, 0)


def test_limits():
    with pytest.raises(ImageRejected, match=r"^\[image_too_large\] 300x200 is 60,000 pixels"):
        decode_rgb(encode(gradient(300, 200), "PNG"), ImageLimits(max_pixels=50_000))
    with pytest.raises(ImageRejected, match=r"^\[image_too_small\] 10x40"):
        decode_rgb(encode(gradient(10, 40), "PNG"), LIMITS)
    with pytest.raises(ImageRejected, match=r"^\[invalid_image\] aspect ratio of 400x20"):
        decode_rgb(encode(gradient(400, 20), "PNG"), LIMITS)


def test_isotropic_rescale_keeps_aspect_ratio():
    assert rescaled_size(500, 333, 256) == (384, 256)
    assert rescaled_size(224, 1000, 384) == (384, 1714)
    assert rescale(gradient(60, 40), 80).shape == (3, 80, 120)


def test_views_and_crops():
    chw = rescale(gradient(60, 40), 64)
    views = dense_views(chw, flips=True)
    assert views.shape == (2, 3, 64, 96)
    np.testing.assert_array_equal(views[1], chw[:, :, ::-1])
    assert grid_offsets(96, 64, 5) == [0, 8, 16, 24, 32]
    crops = grid_crops(chw, 64, 5, flips=True)
    assert crops.shape == (50, 3, 64, 64)
    np.testing.assert_array_equal(crops[4], chw[:, 0:64, 32:96])
    np.testing.assert_array_equal(crops[25 + 4], chw[:, 0:64, 32:96][:, :, ::-1])
