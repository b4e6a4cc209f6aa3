"""The exporter: every configuration equals PyTorch, the paper's dense property holds, bad input fails clearly."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import make_checkpoint
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from export.checkpoint import load_vgg
from export.onnx_graph import Normalization, write_onnx
from export.to_onnx import main as export_main
from export.validate import compare_with_pytorch
from vgg.nets import LAYOUTS, VGG, VGGConfig

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "export" / "to_onnx.py"), *args], capture_output=True,
                          text=True, cwd=ROOT)


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("batch_norm", [False, True], ids=["plain", "bn"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_configuration_exports_equal_to_pytorch(tmp_path, layout, batch_norm):
    checkpoint = make_checkpoint(tmp_path / "net.pt", layout, seed=3, batch_norm=batch_norm)
    assert export_main([str(checkpoint), "--repository", str(tmp_path / "repo"), "--name", "net"]) == 0
    vgg = load_vgg(checkpoint)
    assert (vgg.config.layout, vgg.config.batch_norm) == (layout, batch_norm)
    model_path = tmp_path / "repo" / "net" / "1" / "model.onnx"
    comparisons = compare_with_pytorch(model_path, vgg, Normalization.preset("torchvision"), seed=11)
    for comparison in comparisons:
        assert comparison.ok, str(comparison)
        assert comparison.probs_max_abs < 1e-5
    graph = onnx.load(str(model_path)).graph
    assert not [n for n in graph.node if n.op_type in ("Gemm", "MatMul", "Dropout", "BatchNormalization",
                                                        "Flatten", "GlobalAveragePool")]
    convs = {n.name: n for n in graph.node if n.op_type == "Conv"}
    kernel = next(a.ints for a in convs["fc6"].attribute if a.name == "kernel_shape")
    assert list(kernel) == [2, 2] and {"fc7", "fc8"} <= set(convs)


@pytest.mark.slow  # a full-size net: minutes of CPU on a loaded machine; make test runs it, make test-fast does not
def test_full_size_vgg16_at_224(tmp_path):
    torch.manual_seed(0)
    model = VGG(VGGConfig("D"))
    model.init_glorot()
    checkpoint = tmp_path / "vgg16.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, checkpoint)
    del model
    result = run_cli(str(checkpoint), "--repository", str(tmp_path / "repo"))
    assert result.returncode == 0, result.stderr
    assert "loaded vgg-D: width 1, 1000 classes, hidden 4096, training size 224, 138.4 M parameters" in result.stdout
    assert result.stdout.count("-> ok") == 2
    labels = (tmp_path / "repo" / "vgg16" / "labels.txt").read_text().splitlines()
    assert len(labels) == 1000 and labels[0] == "tench" and labels[207] == "golden_retriever"


def test_dense_score_map_equals_classifier_on_every_window(tmp_path):
    """The paper's property, checked independently of the exporter's own validation: at a larger input, score-map
    cell (i, j) is the original FC classifier applied to the training-size window at (32 i, 32 j) of the image's
    feature map (windows cut from the image itself differ at their borders, where the convs zero-pad)."""
    checkpoint = make_checkpoint(tmp_path / "net.pt", "B", seed=5)
    vgg = load_vgg(checkpoint)
    normalization = Normalization.preset("torchvision")
    write_onnx(tmp_path / "net.onnx", vgg, normalization)
    size = vgg.config.training_size
    image = torch.rand(1, 3, size + 64, size + 96) * 255
    scores = session(tmp_path / "net.onnx").run(["scores"], {"image": image.numpy()})[0][0]
    assert scores.shape == (10, 3, 4)
    k = vgg.config.fc6_kernel
    with torch.no_grad():
        features = vgg.features(normalization.apply(image))
    assert features.shape[2:] == (size // 32 + 2, size // 32 + 3)
    worst = 0.0
    for i in range(scores.shape[1]):
        for j in range(scores.shape[2]):
            with torch.no_grad():
                logits = vgg.classifier(features[:, :, i:i + k, j:j + k].flatten(1))[0].numpy()
            worst = max(worst, float(np.abs(scores[:, i, j] - logits).max()))
    assert worst < 1e-4, worst


def test_normalisation_and_channel_order_are_in_the_graph(tmp_path):
    checkpoint = make_checkpoint(tmp_path / "caffe.pt", "A", seed=7)
    assert export_main([str(checkpoint), "--repository", str(tmp_path / "repo"), "--normalize", "mean-rgb",
                        "--bgr"]) == 0
    vgg = load_vgg(checkpoint)
    image = np.random.default_rng(0).uniform(0, 255, (1, 3, 64, 96)).astype(np.float32)
    probs = session(tmp_path / "repo" / "caffe" / "1" / "model.onnx").run(["probs"], {"image": image})[0]
    bgr = image[:, ::-1] - np.array([103.939, 116.779, 123.68], np.float32).reshape(1, 3, 1, 1)
    with torch.no_grad():
        scores = vgg.features(torch.from_numpy(bgr.copy()))
        from vgg.nets import FullyConvolutionalVGG
        expected = torch.softmax(FullyConvolutionalVGG(vgg)(torch.from_numpy(bgr.copy())).mean((2, 3)), 1).numpy()
    assert scores.shape[1] == vgg.config.last_channels
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    config = text_format.Parse((tmp_path / "repo" / "caffe" / "config.pbtxt").read_text(), mc.ModelConfig())
    assert '"bgr": true' in config.parameters["vgg.normalization"].string_value
    metadata = {p.key: p.value for p in onnx.load(str(tmp_path / "repo" / "caffe" / "1" / "model.onnx")).metadata_props}
    assert '"name": "mean-rgb"' in metadata["normalization"] and metadata["min_input_size"] == "64"


def test_triton_model_directory_and_versions(tmp_path):
    checkpoint = make_checkpoint(tmp_path / "net.pt", "A", seed=1)
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"c{i}" for i in range(10)))
    for _ in range(2):
        assert export_main([str(checkpoint), "--repository", str(tmp_path / "repo"), "--labels", str(labels)]) == 0
    model_dir = tmp_path / "repo" / "net"
    assert sorted(p.name for p in model_dir.iterdir()) == ["1", "2", "config.pbtxt", "labels.txt"]
    config = text_format.Parse((model_dir / "config.pbtxt").read_text(), mc.ModelConfig())
    assert config.platform == "onnxruntime_onnx" and config.max_batch_size == 64
    assert list(config.input[0].dims) == [3, -1, -1] and config.input[0].name == "image"
    assert [(o.name, list(o.dims)) for o in config.output] == [("probs", [10]), ("scores", [10, -1, -1])]
    assert config.output[0].label_filename == "labels.txt" and config.HasField("dynamic_batching")
    assert config.parameters["enable_mem_arena"].string_value == "1"  # onnxruntime's default, written out
    assert (model_dir / "labels.txt").read_text().split() == [f"c{i}" for i in range(10)]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".net-")], "staging directory left behind"


def test_versions_below_1_and_an_empty_name_are_refused(tmp_path):
    checkpoint = make_checkpoint(tmp_path / "net.pt", "A", seed=1)
    for args, message in ((["--version", "0"], "version 0: Triton serves only versions 1 and up"),
                          (["--name", ""], "model name '' must be letters, digits")):
        result = run_cli(str(checkpoint), "--repository", str(tmp_path / "repo"), *args)
        assert result.returncode == 1 and result.stderr.startswith(f"to_onnx.py: error: {message}"), result.stderr
        assert result.stderr.count("\n") == 1
    assert not (tmp_path / "repo" / "net").exists()


def test_fp16_weights(tmp_path):
    checkpoint = make_checkpoint(tmp_path / "net.pt", "D", seed=4, batch_norm=True)
    assert export_main([str(checkpoint), "--repository", str(tmp_path / "repo"), "--fp16"]) == 0
    model = onnx.load(str(tmp_path / "repo" / "net" / "1" / "model.onnx"))
    weights = {t.name: t.data_type for t in model.graph.initializer}
    assert weights["fc6.weight"] == onnx.TensorProto.FLOAT16 and weights["conv1_1.weight"] == onnx.TensorProto.FLOAT16
    image = np.random.default_rng(1).uniform(0, 255, (1, 3, 64, 64)).astype(np.float32)
    probs = session(tmp_path / "repo" / "net" / "1" / "model.onnx").run(["probs"], {"image": image})[0]
    assert probs.dtype == np.float32 and abs(probs.sum() - 1) < 1e-3


def test_torchvision_layout_and_wrappers_load(tmp_path):
    checkpoint = make_checkpoint(tmp_path / "plain.pt", "E", seed=2, batch_norm=True)
    state = torch.load(checkpoint)
    for wrapped in ({"model": state}, {"model_state_dict": {f"module.{k}": v for k, v in state.items()}},
                    {"epoch": 3, "state_dict": state}):
        torch.save(wrapped, tmp_path / "wrapped.pt")
        assert load_vgg(tmp_path / "wrapped.pt").config == load_vgg(checkpoint).config


def test_arch_flag_overrides_and_is_checked(tmp_path):
    checkpoint = make_checkpoint(tmp_path / "d.pt", "D", seed=2)
    assert load_vgg(checkpoint, arch="vgg16").config.layout == "D"
    result = run_cli(str(checkpoint), "--arch", "vgg19", "--repository", str(tmp_path / "repo"))
    assert result.returncode == 1
    assert result.stderr.startswith("to_onnx.py: error: checkpoint does not fit vgg-E: missing keys features.")
    assert not (tmp_path / "repo").exists() or not any((tmp_path / "repo").iterdir())


def corrupt_cases(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    good = make_checkpoint(tmp_path / "good.pt", "A", seed=0)
    (tmp_path / "truncated.pt").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (tmp_path / "text.pt").write_text("not a checkpoint\n")
    (tmp_path / "empty.pt").write_bytes(b"")
    resnet = {"conv1.weight": torch.zeros(64, 3, 7, 7), "bn1.weight": torch.zeros(64),
              "layer1.0.conv1.weight": torch.zeros(64, 64, 3, 3), "fc.weight": torch.zeros(1000, 512)}
    torch.save(resnet, tmp_path / "resnet.pt")
    state = torch.load(good)
    torch.save({k: v for k, v in state.items() if k != "features.3.weight"}, tmp_path / "missing.pt")
    torch.save({**state, "features.99.weight": torch.zeros(3)}, tmp_path / "unexpected.pt")
    torch.save({**state, "classifier.3.weight": torch.zeros(64, 63)}, tmp_path / "shape.pt")
    torch.save(load_vgg(good), tmp_path / "module.pt")
    return {
        "missing file": ([str(tmp_path / "nope.pt")], "nope.pt: no such file"),
        "empty file": ([str(tmp_path / "empty.pt")], "empty.pt: file is empty"),
        "not a torch file": ([str(tmp_path / "text.pt")], "text.pt: not a PyTorch checkpoint"),
        "truncated": ([str(tmp_path / "truncated.pt")], "truncated.pt: truncated or corrupt checkpoint"),
        "resnet": ([str(tmp_path / "resnet.pt")], "not a VGG state dict: no 'features.N' / 'classifier.0' tensors"),
        "missing key": ([str(tmp_path / "missing.pt")], "convolution layout matches none of VGG"),
        "unexpected key": ([str(tmp_path / "unexpected.pt"), "--arch", "A"], "unexpected keys features.99.weight"),
        "shape mismatch": ([str(tmp_path / "shape.pt")], "classifier.3.weight has shape (64, 63), expected (64, 64)"),
        "unsafe pickle": ([str(tmp_path / "module.pt")], "pass --trust-pickle if you trust its source"),
        "bad arch": ([str(good), "--arch", "vgg17"], "unknown architecture 'vgg17'"),
        "wrong labels": ([str(good), "--labels", str(tmp_path / "text.pt")], "1 labels for a model with 10 classes"),
    }


def test_bad_checkpoints_fail_with_one_clear_line(tmp_path):
    repository = tmp_path / "repo"
    cases = corrupt_cases(tmp_path)
    with ThreadPoolExecutor(max_workers=4) as pool:  # a process each, side by side: none of them writes anything
        results = dict(zip(cases, pool.map(lambda args: run_cli(*args, "--repository", str(repository)),
                                           [args for args, _ in cases.values()]), strict=True))
    for case, (_, message) in cases.items():
        result = results[case]
        assert result.returncode == 1, case
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], f"{case}: {result.stderr}"
        assert "Traceback" not in result.stderr
    assert not repository.exists() or not any(repository.iterdir()), "a failed export wrote something"


def test_trusted_pickle_loads(tmp_path):
    good = make_checkpoint(tmp_path / "good.pt", "A", seed=0)
    torch.save(load_vgg(good), tmp_path / "module.pt")
    result = run_cli(str(tmp_path / "module.pt"), "--trust-pickle", "--repository", str(tmp_path / "repo"))
    assert result.returncode == 0, result.stderr


def test_inputs_below_training_size_fail_rather_than_give_garbage(tmp_path):
    vgg = load_vgg(make_checkpoint(tmp_path / "net.pt", "A", seed=0))
    write_onnx(tmp_path / "net.onnx", vgg, Normalization.preset("torchvision"))
    with pytest.raises(Exception, match=r"(?i)invalid|shape|dimension"):
        session(tmp_path / "net.onnx").run(["probs"], {"image": np.zeros((1, 3, 48, 96), np.float32)})


# torchvision's own layouts (torchvision.models.vgg16 / vgg16_bn / vgg11), written out independently of vgg/nets.py:
# the indices of the conv layers in `features`, and the classifier's linear layers.
TORCHVISION_CONV_INDICES = {
    ("D", False): [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28],
    ("D", True): [0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40],
    ("A", False): [0, 3, 6, 8, 11, 13, 16, 18],
    ("E", False): [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34],
}


@pytest.mark.parametrize("layout,batch_norm", list(TORCHVISION_CONV_INDICES))
def test_parameter_names_are_torchvisions(layout, batch_norm):
    with torch.device("meta"):
        state = VGG(VGGConfig(layout, batch_norm)).state_dict()
    convs = sorted(int(k.split(".")[1]) for k, v in state.items() if k.startswith("features.") and v.ndim == 4)
    assert convs == TORCHVISION_CONV_INDICES[(layout, batch_norm)]
    assert state["features.0.weight"].shape == (64, 3, 3, 3)
    assert [tuple(state[f"classifier.{i}.weight"].shape) for i in (0, 3, 6)] == [(4096, 25088), (4096, 4096),
                                                                                  (1000, 4096)]
    if batch_norm:
        assert {"features.1.running_mean", "features.1.running_var", "features.1.num_batches_tracked"} <= set(state)
