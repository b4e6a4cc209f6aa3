"""The training recipe end to end on a tiny demo dataset, and the committed demo models on held-out demo images."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import tritonclient.grpc as grpcclient
from conftest import free_port

from export.checkpoint import load_vgg
from export.onnx_graph import Normalization, write_onnx
from server.triton_launcher import TritonServer
from train import demo_data, fit
from train.augment import rescale_shortest, to_tensor
from train.batches import global_batches, shard
from train.dense import dense_posteriors
from train.distributed import World
from train.imagefolder import load_rgb, scan
from train.init import conv_names, init_from_a
from train.progress import ProgressBar
from vgg.nets import VGG, VGGConfig

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "models" / "demo"
DEMO_MODELS = sorted(DEMO.glob("vgg_*.pt"))
# A net small enough to train a few batches in a second or two: 5 batches of 8 per epoch.
TINY = ["--arch", "A", "--width", "0.125", "--hidden", "16", "--train-size", "64", "--scale", "64", "80",
        "--batch-size", "8", "--no-flip", "--no-progress", "--threads", "1"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("digits")
    demo_data.build(out, per_class_train=4, per_class_val=2, per_class_test=2, seed=0)
    return out


def run_fit(data: Path, out: Path, *extra: str) -> None:
    assert fit.main(["--data", str(data), "--out", str(out), *TINY, *extra]) == 0


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --- the demo dataset -------------------------------------------------------------------------------------------

def test_demo_data_is_deterministic_and_holds_out_unseen_digits(tiny_data: Path, tmp_path: Path) -> None:
    manifest = json.loads((tiny_data / "manifest.json").read_text())
    for label in manifest["classes"]:
        train, val, test = (set(manifest["sources"][split][label]) for split in ("train", "val", "test"))
        assert train and test and not (train & test) and not (train & val) and not (val & test)
    assert (tiny_data / "labels.txt").read_text().split() == [str(c) for c in range(10)]
    again = tmp_path / "again"
    demo_data.build(again, per_class_train=4, per_class_val=2, per_class_test=2, seed=0)

    def digest(root: Path) -> dict[str, str]:
        return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*.png")}

    assert digest(again) == digest(tiny_data)
    sizes = [load_rgb(p).size for p, _ in scan(tiny_data / "test").samples]
    assert len(sizes) == 20 and all(96 <= side <= 160 for size in sizes for side in size)


# --- building blocks --------------------------------------------------------------------------------------------

def test_batches_are_split_evenly_over_processes() -> None:
    batches = global_batches(37, batch_size=8, world_size=2, seed=0, epoch=3)
    assert [len(b) for b in batches] == [8, 8, 8, 8, 4]  # the last 5 trimmed to a multiple of 2
    assert len(set(np.concatenate(batches).tolist())) == 36
    for batch in batches:
        left, right = shard(batch, World(0, 2)), shard(batch, World(1, 2))
        assert len(left) == len(right) and set(left) | set(right) == set(batch)
    assert [b.tolist() for b in batches] != [b.tolist() for b in global_batches(37, 8, 2, seed=0, epoch=4)]


def test_deeper_net_starts_from_a_by_layer_name(tmp_path: Path) -> None:
    a = VGG(VGGConfig("A", False, 0.125, 10, 16, 2))
    a.init_glorot()
    torch.save({"state_dict": a.state_dict()}, tmp_path / "a.pt")
    d = VGG(VGGConfig("D", False, 0.125, 10, 16, 2))
    d.init_glorot()
    copied = init_from_a(d, tmp_path / "a.pt")
    assert list(conv_names(d.config).items())[:5] == [("conv1_1", 0), ("conv1_2", 2), ("conv2_1", 5),
                                                      ("conv2_2", 7), ("conv3_1", 10)]
    for d_index, a_index in ((0, 0), (5, 3), (10, 6), (12, 8)):  # conv1_1, conv2_1, conv3_1, conv3_2
        assert torch.equal(d.features[d_index].weight, a.features[a_index].weight)
    assert not torch.equal(d.features[2].weight[:, :8], a.features[3].weight[:8])  # conv1_2 stays random
    for i in (0, 3, 6):
        assert torch.equal(d.classifier[i].weight, a.classifier[i].weight)
    assert len(copied) == 14


# --- training end to end ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run") / "tiny.pt"
    run_fit(tiny_data, out, "--epochs", "2")
    return out


def test_training_writes_a_loadable_checkpoint_and_a_log(trained: Path) -> None:
    saved = torch.load(trained, weights_only=True)
    assert saved["epoch"] == 2 and saved["classes"] == [str(c) for c in range(10)]
    assert {"state_dict", "config", "optimizer", "scheduler", "best_val_acc", "recipe"} <= set(saved)
    vgg = load_vgg(trained)
    assert vgg.config == VGGConfig("A", False, 0.125, 10, 16, 2)
    log = read_log(trained.with_name("tiny.log.jsonl"))
    assert [e["epoch"] for e in log] == [1, 2]
    assert {"epoch", "loss", "train_acc", "val_acc", "lr", "seconds"} <= set(log[0])
    assert all(np.isfinite(e["loss"]) and 0 <= e["val_acc"] <= 1 for e in log)


def test_resume_continues_exactly_where_training_stopped(tiny_data: Path, trained: Path, tmp_path: Path) -> None:
    out = tmp_path / "tiny.pt"
    threads = torch.get_num_threads()
    run_fit(tiny_data, out, "--epochs", "1")
    run_fit(tiny_data, out, "--epochs", "2", "--resume")
    assert torch.get_num_threads() == threads  # --threads 1 applied to the run only
    resumed, straight = torch.load(out, weights_only=True), torch.load(trained, weights_only=True)
    assert resumed["epoch"] == 2
    for key, tensor in straight["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][key], tensor, rtol=0, atol=1e-6)
    assert [e["epoch"] for e in read_log(tmp_path / "tiny.log.jsonl")] == [1, 2]


def test_ddp_over_two_gloo_processes_averages_gradients(tiny_data: Path, tmp_path: Path) -> None:
    """Without dropout, 2 processes on half-batches must take the same steps as 1 process on whole batches."""
    run_fit(tiny_data, tmp_path / "one.pt", "--epochs", "1", "--dropout", "0")
    run_fit(tiny_data, tmp_path / "two.pt", "--epochs", "1", "--dropout", "0", "--world-size", "2")
    one, two = torch.load(tmp_path / "one.pt", weights_only=True), torch.load(tmp_path / "two.pt", weights_only=True)
    assert read_log(tmp_path / "two.log.jsonl")[0]["world_size"] == 2
    initial = fit.prepare(fit.parse_args(["--data", str(tiny_data), "--out", str(tmp_path / "x.pt"), *TINY]))
    assert any(not torch.equal(one["state_dict"][k], v) for k, v in initial.model.state_dict().items())
    for key, tensor in one["state_dict"].items():
        torch.testing.assert_close(two["state_dict"][key], tensor, rtol=1e-4, atol=1e-5)


def test_trained_checkpoint_exports_to_a_triton_repository(tiny_data: Path, tmp_path: Path) -> None:
    """Batch-norm variant trained with DDP, exported by the real exporter CLI."""
    checkpoint = tmp_path / "tiny_bn.pt"
    run_fit(tiny_data, checkpoint, "--epochs", "1", "--arch", "A_bn", "--world-size", "2")
    result = subprocess.run(
        [sys.executable, "export/to_onnx.py", str(checkpoint), "--repository", str(tmp_path / "repo"), "--name",
         "tiny", "--labels", str(tiny_data / "labels.txt")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "repo" / "tiny" / "1" / "model.onnx").is_file()
    assert (tmp_path / "repo" / "tiny" / "labels.txt").read_text().split() == [str(c) for c in range(10)]
    image = to_tensor(rescale_shortest(load_rgb(next((tiny_data / "test").glob("*/*.png"))), 64))[None].numpy()
    ports = [free_port() for _ in range(3)]
    with TritonServer(tmp_path / "repo", *ports, log_path=tmp_path / "triton.log") as triton:  # and it serves
        tensor = grpcclient.InferInput("image", list(image.shape), "FP32")
        tensor.set_data_from_numpy(image)
        probs = grpcclient.InferenceServerClient(triton.grpc_url).infer("tiny", [tensor]).as_numpy("probs")
    assert probs.shape == (1, 10) and abs(float(probs.sum()) - 1) < 1e-4


# --- clear errors -------------------------------------------------------------------------------------------------

def _bad_datasets(root: Path) -> dict[str, tuple[Path, str]]:
    (root / "empty").mkdir()
    (root / "no_images" / "cat").mkdir(parents=True)
    (root / "no_images" / "dog").mkdir()
    (root / "loose").mkdir()
    (root / "loose" / "x.png").write_bytes(b"")
    (root / "file.txt").write_text("not a folder")
    return {
        "missing": (root / "nowhere", "no such directory"),
        "file": (root / "file.txt", "not a directory"),
        "empty": (root / "empty", "no class sub-folders"),
        "no_images": (root / "no_images", "no images"),
        "loose": (root / "loose", "one sub-folder per class"),
    }


def test_bad_datasets_fail_with_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for path, message in _bad_datasets(tmp_path).values():
        assert fit.main(["--data", str(path), "--out", str(tmp_path / "x.pt"), *TINY]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("fit: error: ") and message in err, err
    assert not (tmp_path / "x.pt").exists()


def test_bad_resume_and_init_fail_with_one_clear_line(tiny_data: Path, trained: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    d = VGG(VGGConfig("D", False, 0.125, 10, 16, 2))
    torch.save({"state_dict": d.state_dict()}, tmp_path / "d.pt")
    cases = [
        (["--out", str(trained), "--resume", "--arch", "D"], "--resume: "),
        (["--out", str(tmp_path / "never.pt"), "--resume"], "does not exist"),
        (["--out", str(tmp_path / "x.pt"), "--arch", "E", "--init-from", str(tmp_path / "d.pt")], "configuration A"),
        (["--out", str(tmp_path / "x.pt"), "--arch", "E", "--init-from", str(tmp_path / "none.pt")], "no such file"),
        (["--out", str(tmp_path)], f"--out {tmp_path} is a folder; name the checkpoint file"),
        (["--out", str(tmp_path / "d.pt" / "x.pt")], f"cannot write into {tmp_path / 'd.pt'}"),
    ]
    for args, message in cases:
        assert fit.main(["--data", str(tiny_data), *TINY, *args]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err


def test_progress_bar_draws_on_terminals_only() -> None:
    bar = ProgressBar(40, prefix="epoch 3 ", stream=io.StringIO())
    bar.update(12, loss=0.5123, acc=0.831)
    assert not bar.enabled and bar.stream.getvalue() == ""
    assert bar.render({"loss": 0.5123, "acc": 0.831}, elapsed=2.0) == \
        "epoch 3 [#########.....................] 12/40 loss 0.512 acc 83.1% 6.0 it/s"


def test_cli_error_has_no_traceback(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "train.fit", "--data", str(tmp_path / "nowhere"), "--out",
                             str(tmp_path / "x.pt")], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip() == f"fit: error: {tmp_path / 'nowhere'}: no such directory"


# --- the committed demo models ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def heldout(tmp_path_factory: pytest.TempPathFactory) -> tuple[list, torch.Tensor]:
    """60 test-split images: drawn from source digits no demo model saw (the committed build used seed 0)."""
    out = tmp_path_factory.mktemp("heldout")
    demo_data.build(out, per_class_train=0, per_class_val=0, per_class_test=6, seed=0)
    dataset = scan(out / "test")
    return [load_rgb(p) for p, _ in dataset.samples], torch.from_numpy(dataset.labels)


def test_demo_models_are_committed_and_small() -> None:
    assert {p.name for p in DEMO_MODELS} >= {"vgg_a.pt", "vgg_d.pt"}
    assert (DEMO / "labels.txt").read_text().split() == [str(c) for c in range(10)]
    for path in DEMO_MODELS:
        assert path.stat().st_size < 2_000_000
        saved = torch.load(path, weights_only=True)
        assert "optimizer" not in saved and all(v.dtype != torch.float64 for v in saved["state_dict"].values())
        assert read_log(path.with_name(path.stem + ".log.jsonl"))[-1]["epoch"] == saved["epoch"]


@pytest.mark.parametrize("path", DEMO_MODELS, ids=[p.stem for p in DEMO_MODELS])
def test_demo_model_classifies_heldout_digits_in_pytorch_and_onnx(path: Path, heldout: tuple, tmp_path: Path) -> None:
    images, labels = heldout
    vgg = load_vgg(path)
    scale = 96  # the middle of the training scales 64-128: the paper's single-scale Q
    torch_acc = float((dense_posteriors(vgg, images, [scale]).argmax(1) == labels).float().mean())
    assert torch_acc >= 0.7, f"{path.name}: {torch_acc:.1%} on held-out digits (chance: 10%)"
    write_onnx(tmp_path / "model.onnx", vgg, Normalization.preset("torchvision"))
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    predictions = [int(session.run(["probs"], {"image": to_tensor(rescale_shortest(im, scale))[None].numpy()})[0]
                       .argmax()) for im in images]
    onnx_acc = float((torch.tensor(predictions) == labels).float().mean())
    assert abs(onnx_acc - torch_acc) <= 1 / len(labels)
