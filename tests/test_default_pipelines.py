"""`make serve`'s own repository: pipelines.toml over the committed demo models, on real Triton."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from conftest import free_port
from support.reference_protocol import pipeline_posterior

from export.checkpoint import load_vgg
from server.cascade_spec import Cascade, stops_at
from server.pipeline_spec import Spec
from server.repository import generate
from server.spec_file import load_spec
from server.triton_launcher import TritonServer
from train import demo_data
from vgg.nets import VGG

ROOT = Path(__file__).resolve().parent.parent
SPEC = load_spec(ROOT / "pipelines.toml")


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three held-out demo digits a class: handwriting never seen in training, calibration or τ's choice."""
    data = tmp_path_factory.mktemp("digits")
    demo_data.build(data, per_class_train=0, per_class_val=0, per_class_test=3, seed=0)
    return sorted((data / "test").glob("*/*.png"))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, grpcclient.InferenceServerClient]]:
    folder = tmp_path_factory.mktemp("default")
    repository = folder / "model_repository"
    generate(SPEC, repository)
    with TritonServer(repository, free_port(), free_port(), free_port(), log_path=folder / "log") as triton:
        yield repository, grpcclient.InferenceServerClient(triton.grpc_url)


def infer(client: grpcclient.InferenceServerClient, pipeline: str, path: Path,
          *outputs: grpcclient.InferRequestedOutput) -> grpcclient.InferResult:
    tensor = grpcclient.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([path.read_bytes()], dtype=np.object_))
    return client.infer(pipeline, [tensor], outputs=list(outputs))


def test_default_pipelines_classify_held_out_digits(served, digits):
    """The shipped spec exports the demo nets and serves every pipeline, far above chance on unseen digits."""
    repository, client = served
    members = {m for p in SPEC.pipelines.values() for m in p.members}
    assert {"vgg_d_int8", "vgg_d_bf16"} <= members  # the reduced-precision variants ship as pipelines
    steps = ("preprocess", "fuse", "_maps")
    assert sorted(p.name for p in repository.iterdir() if not p.name.endswith(steps)) == sorted(
        {*SPEC.pipelines, *members})
    for pipeline in SPEC.pipelines:
        correct = 0
        for path in digits:
            top = infer(client, pipeline, path, grpcclient.InferRequestedOutput("probs", class_count=1))
            correct += top.as_numpy("probs")[0].decode().split(":")[2] == path.parent.name
        assert correct / len(digits) >= 0.8, f"{pipeline}: {correct}/{len(digits)} (chance: 10%)"


@functools.cache
def demo_net(checkpoint: str) -> VGG:
    return load_vgg(ROOT / checkpoint)


def reference_posteriors(spec: Spec, cascade: Cascade, image: bytes) -> list[np.ndarray]:
    """Each stage's posterior by the independent reference protocol, from the committed checkpoints."""
    posteriors = []
    for stage in cascade.stage_pipelines:
        nets = [demo_net(spec.models[m].checkpoint) for m in stage.members]
        posteriors.append(pipeline_posterior(nets, image, list(stage.scales), stage.mode, stage.flips,
                                             list(stage.weights) or None, stage.grid))
    return posteriors


def test_the_shipped_cascade_answers_as_the_reference_stage_it_stops_at(served, digits):
    _, client = served
    cascade = SPEC.pipelines["cascade"]
    assert isinstance(cascade, Cascade)
    stopped, worst = [], 0.0
    for path in digits:
        result = infer(client, "cascade", path, grpcclient.InferRequestedOutput("probs"),
                       grpcclient.InferRequestedOutput("stage"))
        references = reference_posteriors(SPEC, cascade, path.read_bytes())
        expected = stops_at(references, cascade.rule, cascade.thresholds)
        assert result.as_numpy("stage")[0].decode() == cascade.stages[expected], path.name
        difference = float(np.abs(result.as_numpy("probs") - references[expected]).max())
        assert difference <= 1e-4, f"{path.name}: max |probs diff| {difference:.2e} against {cascade.stages[expected]}"
        stopped.append(expected)
        worst = max(worst, difference)
    assert 0 in stopped and len(cascade.stages) - 1 in stopped, f"the digits did not exercise both stages: {stopped}"
    print(f"cascade vs the reference on {len(digits)} digits: max |probs diff| {worst:.2e}; "
          f"{stopped.count(0)} answered by {cascade.stages[0]}")
