"""Triton's response cache for the pipelines (the launcher's --response-cache-mb; the generator enables it in every
pipeline's config): a repeated image is answered from it, with the very bytes a computed answer has, for any top-k;
Triton counts hits and misses in its statistics and metrics."""

from __future__ import annotations

import shutil
import urllib.request

import numpy as np
import pytest
import tritonclient.http as triton_http
from conftest import TESTS, free_port, make_checkpoint

from export.to_onnx import main as export_main
from server.repository.cli import main as repository_main
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


def test_a_member_s_new_version_is_never_answered_from_the_cache(triton_repository, sample_images, tmp_path, capsys):
    """The cache keys an answer by the pipeline's name and version: a member's new version, applied to the running
    Triton, gives the pipeline a new version, so the next answer is computed by the new member."""
    repository = tmp_path / "repository"
    shutil.copytree(triton_repository, repository)
    image = sample_images["coffee_600x400.webp"]
    with TritonServer(repository, free_port(), free_port(), free_port(), response_cache_mb=8, heal=False,
                      log_path=tmp_path / "tritonserver.log") as server:
        first = infer(server, "fast", image)
        assert infer(server, "fast", image).tobytes() == first.tobytes()
        assert cache_counts(server, "fast") == (1, 1)
        labels = tmp_path / "labels.txt"
        labels.write_text("\n".join(f"digit_{i}" for i in range(10)) + "\n")
        retrained = make_checkpoint(tmp_path / "retrained.pt", "D", seed=99)
        assert export_main([str(retrained), "--repository", str(tmp_path / "new"), "--name", "vgg_d", "--labels",
                            str(labels), "--threads", "1"]) == 0
        shutil.copytree(tmp_path / "new" / "vgg_d" / "1", repository / "vgg_d" / "2")
        assert repository_main(["--spec", str(TESTS / "pipelines.toml"), "--repository", str(repository),
                                "--apply", server.http_url]) == 0
        assert "loaded fast\n" in capsys.readouterr().out
        after = infer(server, "fast", image)
        assert after.tobytes() != first.tobytes()  # computed by version 2, not the cached answer of version 1
        assert infer(server, "fast", image).tobytes() == after.tobytes()  # and cached in turn
        served = {(m["name"], m.get("version")) for m in triton_http.InferenceServerClient(
            server.http_url).get_model_repository_index() if m.get("state") == "READY"}
        assert ("vgg_d", "2") in served and ("vgg_d", "1") not in served
