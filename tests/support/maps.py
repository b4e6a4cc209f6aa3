"""A Triton serving the project's trained demo nets (digits) with pipelines that have score maps, and gateways in
front of it: shared by the score-map API tests and the page's browser tests (``pytest_plugins``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import encode, free_port
from PIL import Image

from support.gateway import Gateway, start_gateway

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEMO = PROJECT_ROOT / "models" / "demo"
API_KEY = "page-key"
SPEC = """
[pipelines.flips]
description = "VGG-D at Q=64 and 96 with mirrors"
members = ["vgg_d"]
scales = [64, 96]
flips = true

[pipelines.pair]
description = "VGG-A and VGG-D (weights 1:3) at Q=96"
members = ["vgg_a", "vgg_d"]
weights = [1, 3]
scales = [96]

[pipelines.both]
description = "VGG-D dense and multi-crop at Q=64"
members = ["vgg_d"]
scales = [64]
mode = "dense+multi-crop"

[pipelines.crops]
description = "VGG-D multi-crop only at Q=64"
members = ["vgg_d"]
scales = [64]
mode = "multi-crop"
"""


@pytest.fixture(scope="session")
def maps_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo nets exported and the pipelines above generated, by the project's own tools."""
    from export.to_onnx import main as export_main
    from server.repository import generate
    from server.spec_file import load_spec

    repository = tmp_path_factory.mktemp("maps_repository")
    for name in ("vgg_a", "vgg_d"):
        assert export_main([str(DEMO / f"{name}.pt"), "--repository", str(repository), "--name", name,
                            "--labels", str(DEMO / "labels.txt"), "--threads", "1"]) == 0
    spec = tmp_path_factory.mktemp("maps_spec") / "pipelines.toml"
    spec.write_text(SPEC)
    generate(load_spec(spec), repository)
    return repository


@pytest.fixture(scope="session")
def maps_triton(maps_repository: Path, tmp_path_factory: pytest.TempPathFactory):
    from server.triton_launcher import TritonServer

    log = tmp_path_factory.mktemp("maps_triton") / "tritonserver.log"
    with TritonServer(maps_repository, free_port(), free_port(), free_port(), log_path=log) as server:
        yield server


@pytest.fixture(scope="session")
def maps_gateway(maps_triton, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    server = start_gateway(tmp_path_factory, [maps_triton.http_url], "--default-pipeline", "pair", wait_ready=True)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def keyed_maps_gateway(maps_triton, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    server = start_gateway(tmp_path_factory, [maps_triton.http_url], "--api-key", API_KEY, wait_ready=True)
    yield server
    server.stop()


def digit_picture(label: int, box: tuple[int, int, int], size: tuple[int, int] = (288, 96),
                  sample: int = 0) -> bytes:
    """PNG of one of scikit-learn's 8x8 handwritten digits, dark ink scaled to a side x side square with its
    top-left corner at (x, y) on light paper: box = (x, y, side). Where the digit is, is known exactly."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    image = digits.images[np.flatnonzero(digits.target == label)[sample]]
    x, y, side = box
    mask = np.asarray(Image.fromarray((image * 255 / 16).astype(np.uint8)).resize((side, side),
                      Image.Resampling.BICUBIC), dtype=np.float32)[..., None] / 255
    canvas = np.full((size[1], size[0], 3), 235.0, np.float32)
    region = canvas[y:y + side, x:x + side]
    canvas[y:y + side, x:x + side] = region * (1 - mask) + np.array([20.0, 30.0, 60.0]) * mask
    return encode(canvas.round().astype(np.uint8), "PNG")
