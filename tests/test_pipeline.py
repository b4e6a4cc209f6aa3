"""The served pipelines against the independent reference of the paper's protocol, and their handling of bad input."""

from __future__ import annotations

import io
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.http as httpclient
from conftest import TESTS
from PIL import Image
from support.reference_protocol import pipeline_posterior
from tritonclient.utils import InferenceServerException

from export.checkpoint import load_vgg
from server.spec_file import load_spec

SPEC = load_spec(TESTS / "pipelines.toml")


def infer(triton, pipeline: str, data: bytes, class_count: int = 0) -> httpclient.InferResult:
    client = httpclient.InferenceServerClient(triton.http_url, network_timeout=120)
    image = httpclient.InferInput("image", [1], "BYTES")
    image.set_data_from_numpy(np.array([data], dtype=object))
    return client.infer(pipeline, [image], outputs=[httpclient.InferRequestedOutput("probs", class_count=class_count)])


@pytest.fixture(scope="module")
def models(test_checkpoints):
    return {name: load_vgg(path) for name, path in test_checkpoints.items()}


@pytest.mark.parametrize("pipeline", list(SPEC.pipelines))
def test_pipeline_matches_reference(triton, models, sample_images, pipeline):
    spec = SPEC.pipelines[pipeline]
    worst = 0.0
    for name, data in sample_images.items():
        served = infer(triton, pipeline, data).as_numpy("probs")
        expected = pipeline_posterior([models[m] for m in spec.members], data, list(spec.scales), spec.mode,
                                      spec.flips, list(spec.weights) or None, spec.grid)
        difference = float(np.abs(served - expected).max())
        worst = max(worst, difference)
        assert difference < 1e-4, f"{pipeline} on {name}: max |probs diff| {difference:.2e}"
        assert served.argmax() == expected.argmax()
        assert abs(served.sum() - 1) < 1e-5
    print(f"{pipeline}: max |probs - reference| over {len(sample_images)} photos = {worst:.2e}")


def test_views_change_the_answer(triton, sample_images):
    """Scales, flips and fusion are really evaluated: each pipeline gives its own posterior."""
    data = sample_images["china_500x333.jpg"]
    results = {p: infer(triton, p, data).as_numpy("probs") for p in ("fast", "multiscale", "fusion")}
    assert np.abs(results["fast"] - results["multiscale"]).max() > 1e-3
    assert np.abs(results["multiscale"] - results["fusion"]).max() > 1e-3


def test_classification_extension_returns_labelled_top_k(triton, sample_images):
    data = sample_images["coffee_600x400.webp"]
    probs = infer(triton, "multiscale", data).as_numpy("probs")
    top = infer(triton, "multiscale", data, class_count=3).as_numpy("probs")
    entries = [item.decode().split(":") for item in top]
    assert [int(index) for _, index, _ in entries] == list(np.argsort(-probs)[:3])
    assert [label for _, _, label in entries] == [f"digit_{i}" for i in np.argsort(-probs)[:3]]
    assert float(entries[0][0]) == pytest.approx(float(probs.max()), abs=1e-5)


def test_concurrent_images_of_different_sizes(triton, sample_images):
    """A batch of images is a set of concurrent requests; each answer equals the one-at-a-time answer."""
    names = list(sample_images)
    alone = {n: infer(triton, "multiscale", sample_images[n]).as_numpy("probs") for n in names}
    with ThreadPoolExecutor(max_workers=len(names)) as pool:
        together = dict(zip(names, pool.map(lambda n: infer(triton, "multiscale", sample_images[n]).as_numpy("probs"),
                                            names), strict=True))
    for name in names:
        np.testing.assert_allclose(together[name], alone[name], atol=1e-6)


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG that claims an enormous size: a decompression bomb's signature."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(
        b"IEND", b"")


def encoded(size: tuple[int, int], fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (120, 30, 200)).save(buffer, fmt)
    return buffer.getvalue()


BAD_INPUTS = {
    "empty": (b"", "[invalid_image] empty"),
    "text": (b"this is not an image at all", "[invalid_image] not a supported image"),
    "random bytes": (bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8)),
                     "[invalid_image] not a supported image"),
    "truncated jpeg": (encoded((300, 200), "JPEG")[:400], "[invalid_image]"),
    "corrupt png body": (encoded((300, 200))[:60] + b"\0" * 200, "[invalid_image]"),
    "decompression bomb": (png_header_only(30000, 30000), "[image_too_large] 30000x30000"),
    "too small": (encoded((8, 8)), "[image_too_small] 8x8"),
    "absurd aspect ratio": (encoded((2000, 20)), "[invalid_image] aspect ratio"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_a_clear_error_and_the_server_keeps_serving(triton, sample_images, case):
    data, message = BAD_INPUTS[case]
    with pytest.raises(InferenceServerException) as failure:
        infer(triton, "fast", data)
    assert message in failure.value.message(), failure.value.message()
    assert failure.value.status() == "400"
    client = httpclient.InferenceServerClient(triton.http_url)
    assert client.is_server_ready()
    assert infer(triton, "fast", sample_images["china_500x333.jpg"]).as_numpy("probs").shape == (10,)


def test_member_rejects_images_below_its_training_size(triton):
    client = httpclient.InferenceServerClient(triton.http_url)
    tensor = httpclient.InferInput("image", [1, 3, 40, 200], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 3, 40, 200), np.float32))
    with pytest.raises(InferenceServerException, match=r"\[image_too_small\] vgg_d: input image is 200x40"):
        client.infer("vgg_d", [tensor])
