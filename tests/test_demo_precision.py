"""The reduced-precision variants as servable pipelines: the committed demo nets in int8 and bf16, served by Triton
through the same ensembles as FP32, agree with FP32 on held-out demo digits (handwriting never seen in training or
calibration)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from conftest import free_port

from server.repository import generate
from server.spec_file import load_spec
from server.triton_launcher import TritonServer
from train import demo_data

ROOT = Path(__file__).resolve().parent.parent
NETS = ("vgg_a", "vgg_b", "vgg_d")
PRECISIONS = ("fp32", "int8", "bf16")
MIN_AGREEMENT = 0.99  # the goal, and the exporter's default gate


def member(net: str, precision: str) -> str:
    return net if precision == "fp32" else f"{net}_{precision}"


def spec_text() -> str:
    """`fast` (VGG-D, Q=80) and `fusion` (A, B, D at Q=64,80,96) in each precision, as pipelines.toml has them."""
    text = ""
    for precision in PRECISIONS:
        text += (f'[pipelines.fast_{precision}]\nmembers = ["{member("vgg_d", precision)}"]\nscales = [80]\n'
                 f'[pipelines.fusion_{precision}]\nmembers = {[member(n, precision) for n in NETS]}\n'
                 "scales = [64, 80, 96]\n".replace("'", '"'))
    return text


@pytest.fixture(scope="module")
def demo_digits(tmp_path_factory) -> Path:
    """Calibration images from the validation split, evaluation images from the test split."""
    folder = tmp_path_factory.mktemp("digits")
    demo_data.build(folder, per_class_train=0, per_class_val=10, per_class_test=20, seed=0)
    return folder


@pytest.fixture(scope="module")
def repository(tmp_path_factory, demo_digits) -> Path:
    repository = tmp_path_factory.mktemp("repository")
    for net in NETS:
        result = subprocess.run(
            [sys.executable, str(ROOT / "export" / "to_onnx.py"), str(ROOT / "models" / "demo" / f"{net}.pt"),
             "--repository", str(repository), "--name", net, "--labels", str(ROOT / "models" / "demo" / "labels.txt"),
             "--quantize", "int8", "--bf16", "--calibration", str(demo_digits / "val"), "--threads", "1"],
            capture_output=True, text=True, cwd=ROOT)
        assert result.returncode == 0, result.stderr
        print(result.stdout)
    (repository.parent / "spec.toml").write_text(spec_text())
    generate(load_spec(repository.parent / "spec.toml"), repository)
    return repository


def test_int8_and_bf16_pipelines_agree_with_fp32_on_held_out_digits(repository, demo_digits, tmp_path):
    images = sorted((demo_digits / "test").glob("*/*.png"))
    assert len(images) == 200
    with TritonServer(repository, free_port(), free_port(), free_port(), log_path=tmp_path / "log") as triton:
        client = grpcclient.InferenceServerClient(triton.grpc_url)

        def posteriors(pipeline: str) -> np.ndarray:
            rows = []
            for path in images:
                tensor = grpcclient.InferInput("image", [1], "BYTES")
                tensor.set_data_from_numpy(np.array([path.read_bytes()], dtype=np.object_))
                rows.append(client.infer(pipeline, [tensor]).as_numpy("probs"))
            return np.stack(rows)

        probs = {(kind, p): posteriors(f"{kind}_{p}") for kind in ("fast", "fusion") for p in PRECISIONS}
    labels = np.array([int(path.parent.name) for path in images])
    for kind in ("fast", "fusion"):
        fp32 = probs[kind, "fp32"]
        assert np.mean(fp32.argmax(1) == labels) >= 0.9, f"{kind} FP32 is not the trained net"
        for precision in ("int8", "bf16"):
            low = probs[kind, precision]
            agreement = np.mean(low.argmax(1) == fp32.argmax(1))
            print(f"{kind} {precision}: top-1 agreement {agreement:.1%}, max |probs diff| "
                  f"{np.abs(low - fp32).max():.2e}, top-1 accuracy {np.mean(low.argmax(1) == labels):.1%} "
                  f"(FP32 {np.mean(fp32.argmax(1) == labels):.1%})")
            assert agreement >= MIN_AGREEMENT, (kind, precision, agreement)
            assert 0 < np.abs(low - fp32).max() < 0.2, (kind, precision)  # really low precision, still close
