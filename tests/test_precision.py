"""int8 and bf16 variants: exported, gated on agreement with FP32, served by Triton, OpenVINO config honoured."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient
from conftest import free_port
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from export.quantize import FIRST_CONV_CHANNELS, pad_first_conv
from server.triton_launcher import LaunchError, TritonServer
from vgg.imaging import ImageLimits, decode_rgb, rescale
from vgg.runtimes import Accelerator, OnnxRuntimeRunner, RuntimeConfigError, SessionSettings

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def calibration(tmp_path_factory, sample_images) -> Path:
    folder = tmp_path_factory.mktemp("calibration")
    for name, data in sample_images.items():
        (folder / name).write_bytes(data)
    return folder


@pytest.fixture(scope="module")
def variants(tmp_path_factory, test_checkpoints, calibration) -> Path:
    repository = tmp_path_factory.mktemp("variants")
    result = subprocess.run([sys.executable, str(ROOT / "export" / "to_onnx.py"), str(test_checkpoints["vgg_d"]),
                             "--repository", str(repository), "--name", "net", "--quantize", "int8", "--bf16",
                             "--calibration", str(calibration), "--min-top1-agreement", "0.5", "--threads", "1"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "int8 vs FP32 on" in result.stdout and "bf16 vs FP32 on" in result.stdout
    return repository


def test_variants_are_written_with_their_configs(variants):
    assert sorted(p.name for p in variants.iterdir()) == ["net", "net_bf16", "net_int8"]
    int8 = text_format.Parse((variants / "net_int8" / "config.pbtxt").read_text(), mc.ModelConfig())
    assert int8.parameters["vgg.precision"].string_value == "int8"
    ops = {n.op_type for n in onnx.load(str(variants / "net_int8" / "1" / "model.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    bf16 = text_format.Parse((variants / "net_bf16" / "config.pbtxt").read_text(), mc.ModelConfig())
    (accelerator,) = bf16.optimization.execution_accelerators.cpu_execution_accelerator
    assert accelerator.name == "openvino" and accelerator.parameters["precision"] == "bf16"


def test_first_conv_widened_to_eight_channels_changes_nothing(variants, tmp_path):
    """int8's conv1_1 gets zero channels and zero weights (a faster VNNI kernel): same FP32 outputs, exactly."""
    fp32 = variants / "net" / "1" / "model.onnx"
    model = onnx.load(str(fp32))
    pad_first_conv(model, FIRST_CONV_CHANNELS)
    image = np.random.default_rng(0).uniform(0, 255, (2, 3, 80, 96)).astype(np.float32)
    settings = SessionSettings(1, 1)
    original = OnnxRuntimeRunner(str(fp32), settings).run(["scores"], {"image": image})[0]
    widened_path = tmp_path / "widened.onnx"
    onnx.save(model, str(widened_path))
    widened = OnnxRuntimeRunner(str(widened_path), settings).run(["scores"], {"image": image})[0]
    assert np.abs(widened - original).max() < 1e-4 * np.abs(original).max()
    int8 = onnx.load(str(variants / "net_int8" / "1" / "model.onnx"))
    first = next(n for n in int8.graph.node if n.op_type == "Conv")
    weights = {t.name: t for t in int8.graph.initializer}
    producer = {o: n for n in int8.graph.node for o in n.output}[first.input[1]]  # DequantizeLinear of int8 weights
    assert weights[producer.input[0]].dims[1] == FIRST_CONV_CHANNELS


def test_served_models_do_not_spin(variants):
    """The exported config turns intra-op spinning off, and the session the backend opens from it obeys."""
    config = text_format.Parse((variants / "net_int8" / "config.pbtxt").read_text(), mc.ModelConfig())
    settings = SessionSettings.from_model_config(
        {"parameters": {k: {"string_value": v.string_value} for k, v in config.parameters.items()}})
    assert config.parameters["intra_op_spinning"].string_value == "0" and not settings.spinning
    runner = OnnxRuntimeRunner(str(variants / "net_int8" / "1" / "model.onnx"), settings)
    assert runner.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_served_variants_agree_with_fp32(variants, sample_images, tmp_path):
    with TritonServer(variants, free_port(), free_port(), free_port(), log_path=tmp_path / "log") as triton:
        client = grpcclient.InferenceServerClient(triton.grpc_url)
        images = [rescale(decode_rgb(data, ImageLimits()), q)[None] for data in sample_images.values()
                  for q in (64, 96)]
        outputs = {}
        for model in ("net", "net_int8", "net_bf16"):
            probs = []
            for image in images:
                tensor = grpcclient.InferInput("image", list(image.shape), "FP32")
                tensor.set_data_from_numpy(image)
                probs.append(client.infer(model, [tensor]).as_numpy("probs")[0])
            outputs[model] = np.stack(probs)
    fp32 = outputs["net"]
    for variant, tolerance in (("net_int8", 0.05), ("net_bf16", 0.02)):
        agreement = np.mean(outputs[variant].argmax(1) == fp32.argmax(1))
        assert agreement >= 0.9, (variant, agreement)
        assert np.abs(outputs[variant] - fp32).max() < tolerance, variant
    assert np.abs(outputs["net_bf16"] - fp32).max() > 0, "bf16 ran at full precision"


def test_export_refuses_a_variant_below_the_agreement_threshold(test_checkpoints, calibration, tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "export" / "to_onnx.py"), str(test_checkpoints["vgg_a"]),
                             "--repository", str(tmp_path / "repo"), "--quantize", "int8", "--calibration",
                             str(calibration), "--min-top1-agreement", "1.01"], capture_output=True, text=True,
                            cwd=ROOT)
    assert result.returncode == 1
    assert "is below --min-top1-agreement 101.00%; vgg_a_int8 was not written" in result.stderr
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["vgg_a"]


def test_missing_calibration_folder_fails_before_any_work(test_checkpoints, tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "export" / "to_onnx.py"), str(test_checkpoints["vgg_a"]),
                             "--repository", str(tmp_path / "repo"), "--quantize", "int8", "--calibration",
                             str(tmp_path / "nothing")], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 1 and "calibration folder does not exist" in result.stderr
    assert not (tmp_path / "repo").exists()


def test_accelerator_config_is_read_like_the_native_backend():
    config = {"optimization": {"execution_accelerators": {"cpu_execution_accelerator": [
        {"name": "openvino", "parameters": {"precision": "BF16"}}]}, "graph": {"level": -1}},
        "parameters": {"intra_op_thread_count": {"string_value": "3"}, "enable_mem_arena": {"string_value": "0"}}}
    assert Accelerator.from_model_config(config) == Accelerator("openvino", "bf16")
    assert SessionSettings.from_model_config(config) == SessionSettings(3, 0, False, -1, "auto", spinning=False)
    spinning = {"parameters": {"intra_op_spinning": {"string_value": "1"}}}
    assert SessionSettings.from_model_config(spinning).spinning
    assert Accelerator.from_model_config({}) == Accelerator()
    with pytest.raises(RuntimeConfigError, match="unsupported cpu_execution_accelerator 'tensorrt'"):
        Accelerator.from_model_config({"optimization": {"execution_accelerators": {"cpu_execution_accelerator": [
            {"name": "tensorrt"}]}}})
    with pytest.raises(RuntimeConfigError, match="precision 'int4' is not one of f32, bf16"):
        Accelerator.from_model_config({"optimization": {"execution_accelerators": {"cpu_execution_accelerator": [
            {"name": "openvino", "parameters": {"precision": "int4"}}]}}})


def test_openvino_missing_is_a_clear_error():
    code = ("import sys; sys.modules['openvino'] = None\n"
            "from vgg.runtimes import Accelerator, RuntimeConfigError, open_runner\n"
            "try:\n    open_runner('model.onnx', Accelerator('openvino', 'bf16'))\n"
            "except RuntimeConfigError as e:\n    print(e)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.stdout.strip() == ("the model asks for the openvino CPU accelerator, but the openvino package is "
                                     "not installed")


def test_triton_reports_an_unsupported_accelerator(variants, tmp_path):
    repository = tmp_path / "repository"
    shutil.copytree(variants / "net_bf16", repository / "net_bf16")
    config = (repository / "net_bf16" / "config.pbtxt").read_text().replace('name: "openvino"', 'name: "magic"')
    (repository / "net_bf16" / "config.pbtxt").write_text(config)
    with pytest.raises(LaunchError, match=r"net_bf16.*unsupported cpu_execution_accelerator 'magic'"):
        TritonServer(repository, free_port(), free_port(), free_port(), log_path=tmp_path / "log").start()
