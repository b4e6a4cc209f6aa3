"""The project's Python-based `onnxruntime` backend honours the native backend's config where it matters."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient


def model_stats(client: httpclient.InferenceServerClient, name: str) -> tuple[int, int]:
    stats = client.get_inference_statistics(name)["model_stats"][0]
    return int(stats["inference_count"]), int(stats["execution_count"])


def test_dynamic_batching_merges_same_shape_requests(triton):
    """Concurrent requests of one shape reach the backend together and run as one onnxruntime batch."""
    image = np.random.default_rng(0).uniform(0, 255, (1, 3, 64, 96)).astype(np.float32)
    stats_client = httpclient.InferenceServerClient(triton.http_url)
    before = model_stats(stats_client, "vgg_a")
    barrier = threading.Barrier(16)

    def one(_: int) -> np.ndarray:
        client = grpcclient.InferenceServerClient(triton.grpc_url)
        tensor = grpcclient.InferInput("image", list(image.shape), "FP32")
        tensor.set_data_from_numpy(image)
        barrier.wait()
        return client.infer("vgg_a", [tensor]).as_numpy("probs")

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(one, range(16)))
    inferences, executions = (after - prior for after, prior in
                              zip(model_stats(stats_client, "vgg_a"), before, strict=True))
    assert inferences == 16
    assert executions < 16, "no two requests were batched"
    for result in results:
        np.testing.assert_allclose(result, results[0], atol=1e-6)


def test_both_outputs_and_only_the_requested_one(triton):
    client = httpclient.InferenceServerClient(triton.http_url)
    image = np.random.default_rng(1).uniform(0, 255, (2, 3, 96, 128)).astype(np.float32)
    tensor = httpclient.InferInput("image", list(image.shape), "FP32")
    tensor.set_data_from_numpy(image)
    both = client.infer("vgg_e", [tensor])
    assert both.as_numpy("probs").shape == (2, 10) and both.as_numpy("scores").shape == (2, 10, 2, 3)
    only = client.infer("vgg_e", [tensor], outputs=[httpclient.InferRequestedOutput("scores")])
    assert only.as_numpy("probs") is None
    np.testing.assert_allclose(only.as_numpy("scores"), both.as_numpy("scores"), atol=1e-6)
