"""`make serve`'s own repository: pipelines.toml over the committed demo models, on real Triton."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
from conftest import free_port

from server.pipeline_spec import load_spec
from server.repository import generate
from server.triton_launcher import TritonServer
from train import demo_data

ROOT = Path(__file__).resolve().parent.parent


def test_default_pipelines_classify_held_out_digits(tmp_path):
    """The shipped spec exports the demo nets and serves every pipeline, far above chance on unseen digits."""
    spec = load_spec(ROOT / "pipelines.toml")
    repository = tmp_path / "model_repository"
    generate(spec, repository)
    members = {m for p in spec.pipelines.values() for m in p.members}
    assert {"vgg_d_int8", "vgg_d_bf16"} <= members  # the reduced-precision variants ship as pipelines
    steps = ("_preprocess", "_fuse", "_maps")
    assert sorted(p.name for p in repository.iterdir() if not p.name.endswith(steps)) == sorted(
        {*spec.pipelines, *members})
    data = tmp_path / "digits"
    demo_data.build(data, per_class_train=0, per_class_val=0, per_class_test=3, seed=0)
    images = sorted((data / "test").glob("*/*.png"))
    with TritonServer(repository, free_port(), free_port(), free_port(), log_path=tmp_path / "log") as triton:
        client = grpcclient.InferenceServerClient(triton.grpc_url)
        for pipeline in spec.pipelines:
            correct = 0
            for path in images:
                tensor = grpcclient.InferInput("image", [1], "BYTES")
                tensor.set_data_from_numpy(np.array([path.read_bytes()], dtype=np.object_))
                top = client.infer(pipeline, [tensor], outputs=[
                    grpcclient.InferRequestedOutput("probs", class_count=1)]).as_numpy("probs")[0]
                correct += top.decode().split(":")[2] == path.parent.name
            assert correct / len(images) >= 0.8, f"{pipeline}: {correct}/{len(images)} (chance: 10%)"
    shutil.rmtree(data)
