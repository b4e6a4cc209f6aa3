"""Class score maps through the API: generated `<pipeline>_maps` ensembles, maps equal to the reference protocol's
on real photos, overlay geometry checked on digits drawn at known places, and precise errors for bad requests."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from google.protobuf import text_format
from support.gateway import assert_error
from support.maps import API_KEY, DEMO, digit_picture
from support.reference_protocol import load_rgb, pipeline_posterior, score_maps
from tritonclient.grpc import model_config_pb2 as mc

from export.checkpoint import load_vgg

pytest_plugins = ("support.gateway", "support.maps")
TOLERANCE_SCORES, TOLERANCE_PROBS = 1e-3, 1e-5


@pytest.fixture(scope="module")
def demo_models():
    return {name: load_vgg(DEMO / f"{name}.pt") for name in ("vgg_a", "vgg_d")}


def classify(url: str, data: bytes, pipeline: str, top_k: int = 3, maps: str | None = "true",
             headers: dict[str, str] | None = None) -> httpx.Response:
    query = f"pipeline={pipeline}&top_k={top_k}" + (f"&maps={maps}" if maps is not None else "")
    return httpx.post(f"{url}/v1/classify?{query}", files={"file": ("image", data, "application/octet-stream")},
                      headers=headers, timeout=120)


def softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def test_maps_ensembles_are_generated_for_dense_pipelines_only(maps_repository, maps_gateway):
    assert sorted(p.name for p in maps_repository.iterdir() if p.name.endswith("_maps")) == [
        "both_maps", "flips_maps", "pair_maps"]
    config = text_format.Parse((maps_repository / "flips_maps" / "config.pbtxt").read_text(), mc.ModelConfig())
    plain = text_format.Parse((maps_repository / "flips" / "config.pbtxt").read_text(), mc.ModelConfig())
    assert [s.model_name for s in config.ensemble_scheduling.step] == [
        s.model_name for s in plain.ensemble_scheduling.step]  # the same steps, nothing re-implemented
    assert sorted(o.name for o in config.output) == [
        "m0_dense_64_scores", "m0_dense_96_scores", "probs"]
    assert "pipeline.spec" not in config.parameters  # not a pipeline of its own
    listed = httpx.get(maps_gateway.url + "/v1/pipelines", timeout=10).json()["pipelines"]
    assert {p["name"]: p["maps"] for p in listed} == {"both": True, "crops": False, "flips": True, "pair": True}


def test_maps_equal_the_reference_on_real_photos(maps_gateway, demo_models, sample_images):
    """Every view's raw score map and per-cell softmax equal the PyTorch reference's on the original checkpoint
    (mirrored views mirrored back); all classes' maps give back each view's posterior and the pipeline's answer."""
    worst_scores = worst_probs = worst_posterior = 0.0
    for name, data in sample_images.items():
        body = classify(maps_gateway.url, data, "flips", top_k=10).json()
        maps = body["maps"]
        classes = maps["classes"]
        assert classes == [p["index"] for p in body["predictions"]] and sorted(classes) == list(range(10))
        image = load_rgb(data)
        assert maps["image_size"] == list(image.size) and maps["stride"] == 32
        assert len(maps["views"]) == 4  # 2 scales x (image, mirror)
        view_posteriors = {}
        for view in maps["views"]:
            reference = score_maps(demo_models["vgg_d"], image, view["scale"], flips=True)[int(view["flipped"])]
            if view["flipped"]:
                reference = reference[:, :, ::-1]
            scores = np.array(view["scores"])
            assert scores.shape == (10, view["size"][1], view["size"][0]) == reference[classes].shape, name
            worst_scores = max(worst_scores, float(np.abs(scores - reference[classes]).max()))
            worst_probs = max(worst_probs, float(np.abs(np.array(view["probs"])
                                                        - softmax(reference, 0)[classes]).max()))
            posterior = softmax(scores.mean(axis=(1, 2)), 0)  # the spatial mean gives back the view's posterior
            worst_posterior = max(worst_posterior, float(np.abs(posterior - view["posterior"]).max()))
            view_posteriors.setdefault(view["scale"], []).append(posterior)
        from_maps = np.mean([np.mean(p, axis=0) for p in view_posteriors.values()], axis=0)
        answered = np.array([p["score"] for p in body["predictions"]])
        assert np.abs(from_maps - answered).max() < TOLERANCE_PROBS, name
        expected = pipeline_posterior([demo_models["vgg_d"]], data, [64, 96], flips=True)
        assert np.abs(expected[classes] - answered).max() < TOLERANCE_PROBS, name
    print(f"max |scores - reference| {worst_scores:.2e}, max |probs - reference| {worst_probs:.2e}, "
          f"max |softmax(mean(scores)) - view posterior| {worst_posterior:.2e} over {len(sample_images)} photos")
    assert worst_scores < TOLERANCE_SCORES and worst_probs < TOLERANCE_PROBS and worst_posterior < TOLERANCE_PROBS


def window_centre(grid: dict, stride: int, column: int, row: int, image_size: list[int]) -> tuple[float, float]:
    """The original-image position of a cell's window centre, from the geometry the response gives."""
    fx, fy = (r / s for r, s in zip(grid["rescaled_size"], image_size, strict=True))
    return ((grid["origin"][0] + stride * column + grid["window"] / 2) / fx,
            (grid["origin"][1] + stride * row + grid["window"] / 2) / fy)


@pytest.mark.parametrize("x", [12, 120, 228])
def test_the_cells_under_a_digit_light_up(maps_gateway, x):
    """A 0 (nearly mirror-symmetric) drawn at a known place on a 300x96 canvas. In every view, mirrored ones
    included (their origin is not 0 at this width), and in the fused map, the hottest cell for the answer is one
    whose window holds the digit's centre, and cells whose windows lie a window's width away are cold (for the
    fused map, the coarsest view's window)."""
    side, y = 60, 18
    body = classify(maps_gateway.url, digit_picture(0, (x, y, side), size=(300, 96)), "flips").json()
    assert body["predictions"][0]["label"] == "0"
    maps = body["maps"]
    digit_centre = x + side / 2
    mirrored = [v for v in maps["views"] if v["flipped"] and v["scale"] == 96]
    assert mirrored and mirrored[0]["origin"] == [300 - 64 - 32 * 7, 0]  # the last column ends at the right edge
    coarsest = max(v["window"] / 2 * 300 / v["rescaled_size"][0] for v in maps["views"])
    for grid in [*maps["views"], maps["fused"]]:
        plane = np.array(grid["probs"][0])  # [row][column] of the top class, "0"
        half_window = grid["window"] / 2 * 300 / grid["rescaled_size"][0]  # in original pixels
        if grid is maps["fused"]:
            half_window = coarsest  # it holds the coarser scales' cells too
        centres = [window_centre(grid, 32, c, 0, maps["image_size"])[0] for c in range(grid["size"][0])]
        hottest = int(np.unravel_index(plane.argmax(), plane.shape)[1])
        assert abs(centres[hottest] - digit_centre) <= half_window, (x, grid.get("scale"), centres, plane)
        assert plane.max() > 0.9
        far = [c for c, centre in enumerate(centres) if abs(centre - digit_centre) > 2 * half_window]
        assert far and plane[:, far].max() < 0.5, (x, grid.get("scale"), centres, plane)


def test_fused_map_is_the_weighted_mean_of_the_members(maps_gateway):
    body = classify(maps_gateway.url, digit_picture(3, (150, 20, 56)), "pair").json()
    vgg_a, vgg_d = (np.array(v["probs"]) for v in body["maps"]["views"])
    assert [v["member"] for v in body["maps"]["views"]] == ["vgg_a", "vgg_d"]
    assert np.abs(np.array(body["maps"]["fused"]["probs"]) - (0.25 * vgg_a + 0.75 * vgg_d)).max() < 2e-6
    assert np.abs(vgg_a - vgg_d).max() > 0.01  # two members really differ


def test_dense_and_multi_crop_pipeline_maps_its_dense_views(maps_gateway):
    body = classify(maps_gateway.url, digit_picture(5, (30, 10, 70)), "both").json()
    assert [(v["scale"], v["flipped"]) for v in body["maps"]["views"]] == [(64, False)]
    plain = classify(maps_gateway.url, digit_picture(5, (30, 10, 70)), "both", maps=None).json()
    assert plain["predictions"] == body["predictions"]  # the maps ensemble answers the pipeline's own posterior


def test_requests_without_maps_are_unchanged(maps_gateway):
    data = digit_picture(7, (100, 20, 60))
    multipart = classify(maps_gateway.url, data, "pair", maps=None)
    raw = httpx.post(maps_gateway.url + "/v1/classify?pipeline=pair&top_k=3", content=data,
                     headers={"content-type": "image/png"}, timeout=60)
    off = classify(maps_gateway.url, data, "pair", maps="false")
    for response in (multipart, raw, off):
        assert response.status_code == 200 and "maps" not in response.json(), response.text
    with_maps = httpx.post(maps_gateway.url + "/v1/classify?pipeline=pair&top_k=3&maps=true", content=data,
                           headers={"content-type": "image/png"}, timeout=60)
    assert with_maps.status_code == 200 and with_maps.json()["maps"]["classes"] == [
        p["index"] for p in raw.json()["predictions"]]


def test_bad_maps_requests_get_precise_errors(maps_gateway, keyed_maps_gateway):
    data = digit_picture(1, (10, 10, 60))
    error = assert_error(classify(maps_gateway.url, data, "crops"), 422, "maps_unavailable")
    assert "'crops'" in error["message"]
    assert "maps" in assert_error(classify(maps_gateway.url, data, "pair", maps="perhaps"), 422,
                                  "invalid_request")["message"]
    repeated = httpx.post(maps_gateway.url + "/v1/classify?maps=true&maps=true", content=data,
                          headers={"content-type": "image/png"}, timeout=30)
    assert "'maps'" in assert_error(repeated, 422, "invalid_request")["message"]
    assert_error(classify(maps_gateway.url, b"\x89PNG\r\n\x1a\n broken", "pair"), 422, "invalid_image")
    assert_error(classify(maps_gateway.url, data, "nope"), 404, "unknown_pipeline")
    assert_error(classify(keyed_maps_gateway.url, data, "pair", headers={"Authorization": "Bearer wrong"}), 401,
                 "unauthorized")
    ok = classify(keyed_maps_gateway.url, data, "pair", headers={"Authorization": f"Bearer {API_KEY}"})
    assert ok.status_code == 200 and ok.json()["maps"]["views"]


def test_the_client_sdk_asks_for_maps_through_the_gateway(maps_gateway, maps_triton):
    import asyncio

    from client import AsyncClient, Client, ClientError

    data = digit_picture(8, (60, 20, 60))
    with Client(maps_gateway.url) as client:
        result = client.classify(data, top_k=2, pipeline="flips", maps=True)
        assert result.maps["classes"] == [p.index for p in result.predictions] and len(result.maps["views"]) == 4
        assert client.classify(data, top_k=2, pipeline="flips").maps is None

    async def via_async() -> dict:
        async with AsyncClient(maps_gateway.url) as client:
            return (await client.classify(data, top_k=2, pipeline="pair", maps=True)).maps

    assert [v["member"] for v in asyncio.run(via_async())["views"]] == ["vgg_a", "vgg_d"]
    with Client(f"grpc://{maps_triton.grpc_url}") as direct, pytest.raises(ClientError) as refused:
        direct.classify(data, pipeline="flips", maps=True)
    assert refused.value.code == "maps_unsupported" and "gateway" in str(refused.value)
