"""Triton's response cache for the pipelines (the launcher's --response-cache-mb; the generator enables it in every
pipeline's config): a repeated image is answered from it, with the very bytes a computed answer has, for any top-k;
Triton counts hits and misses in its statistics and metrics."""

from __future__ import annotations

import urllib.request

import numpy as np
import pytest
import tritonclient.http as triton_http
from conftest import free_port

from server.triton_launcher import TritonServer

KEY = "response-cache-test-key-0123"


@pytest.fixture(scope="module")
def cached(triton_repository, tmp_path_factory):
    server = TritonServer(triton_repository, free_port(), free_port(), free_port(), key=KEY, response_cache_mb=8,
                          log_path=tmp_path_factory.mktemp("cache") / "tritonserver.log")
    with server:
        yield server


def infer(server: TritonServer, pipeline: str, image: bytes, top_k: int | None = None,
          headers: dict[str, str] | None = None) -> np.ndarray:
    client = triton_http.InferenceServerClient(server.http_url)
    tensor = triton_http.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([image], dtype=object))
    outputs = [triton_http.InferRequestedOutput("probs", class_count=top_k or 0)]
    return client.infer(pipeline, [tensor], outputs=outputs, headers=headers).as_numpy("probs")


def cache_counts(server: TritonServer, pipeline: str) -> tuple[int, int]:
    client = triton_http.InferenceServerClient(server.http_url)
    stats = client.get_inference_statistics(pipeline, headers={"vgg-triton-key": KEY})["model_stats"][0]
    return int(stats["inference_stats"]["cache_hit"]["count"]), int(stats["inference_stats"]["cache_miss"]["count"])


@pytest.mark.parametrize("pipeline", ["fast", "fusion"])
def test_a_repeated_image_is_a_cache_hit_with_the_computed_answer(cached, triton, sample_images, pipeline):
    image = sample_images["coffee_600x400.webp"]
    auth = {"vgg-triton-key": KEY}
    hits, misses = cache_counts(cached, pipeline)
    first = infer(cached, pipeline, image, headers=auth)
    again = [infer(cached, pipeline, image, headers=auth) for _ in range(3)]
    assert cache_counts(cached, pipeline) == (hits + 3, misses + 1)
    for answer in again:
        assert answer.tobytes() == first.tobytes()
    uncached = infer(triton, pipeline, image)  # the session's Triton has no cache
    assert uncached.tobytes() == first.tobytes()
    for top_k in (1, 3):  # the classification extension is applied to the cached answer, not cached with it
        assert list(infer(cached, pipeline, image, top_k, auth)) == list(infer(triton, pipeline, image, top_k))


def test_hits_and_misses_are_in_tritons_metrics(cached, sample_images):
    infer(cached, "fast", sample_images["rocket_1000x224.png"], headers={"vgg-triton-key": KEY})
    infer(cached, "fast", sample_images["rocket_1000x224.png"], headers={"vgg-triton-key": KEY})
    metrics = urllib.request.urlopen(f"http://{cached.metrics_url}/metrics", timeout=10).read().decode()
    hits = [line for line in metrics.splitlines() if line.startswith('nv_cache_num_hits_per_model{model="fast"')]
    assert hits and float(hits[0].split()[-1]) >= 1, hits
    assert 'nv_cache_num_misses_per_model{model="fast"' in metrics
