"""The optimized-model cache (vgg/ort_cache.py): built once, reused, rebuilt when stale or broken, never fatal."""

from __future__ import annotations

import logging
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from vgg.ort_cache import DEFAULT_DIR_NAME, open_session, resolve_cache_dir


def conv_model(path, seed: int = 0) -> None:
    """A 3x3 conv + ReLU with weights large enough to be stored as external data in the cache."""
    rng = np.random.default_rng(seed)
    weight = numpy_helper.from_array(rng.standard_normal((32, 16, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])],
        "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def run(session: ort.InferenceSession) -> np.ndarray:
    x = np.random.default_rng(1).standard_normal((1, 16, 20, 24)).astype(np.float32)
    return session.run(["y"], {"x": x})[0]


def entries(cache):
    return sorted(p.name for p in cache.iterdir() if not p.name.startswith(".staging"))


def test_first_load_writes_an_optimized_entry_that_later_loads_use(tmp_path):
    model, cache = tmp_path / "model.onnx", tmp_path / "cache"
    conv_model(model)
    direct = run(ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]))
    first = run(open_session(model, ort.SessionOptions(), 0, cache))
    (key,) = entries(cache)
    assert (cache / key / "model.onnx").exists() and (cache / key / "model.onnx.data").exists()
    assert not list(cache.glob(".staging*"))
    second = run(open_session(model, ort.SessionOptions(), 0, cache))
    assert np.abs(first - direct).max() < 1e-5 and np.abs(second - direct).max() < 1e-5
    assert entries(cache) == [key]


def test_a_broken_entry_is_rebuilt(tmp_path, caplog):
    model, cache = tmp_path / "model.onnx", tmp_path / "cache"
    conv_model(model)
    open_session(model, ort.SessionOptions(), 0, cache)
    (key,) = entries(cache)
    (cache / key / "model.onnx").write_bytes(b"not a model")
    with caplog.at_level(logging.WARNING):
        session = open_session(model, ort.SessionOptions(), 0, cache)
    assert "rebuilding the optimized-model cache entry" in caplog.text
    assert run(session).shape == (1, 32, 20, 24)
    onnx.checker.check_model(str(cache / key / "model.onnx"))


def test_a_changed_model_replaces_its_old_entry_and_keeps_other_models(tmp_path):
    cache = tmp_path / "cache"
    conv_model(tmp_path / "a.onnx")
    conv_model(tmp_path / "b.onnx")
    open_session(tmp_path / "a.onnx", ort.SessionOptions(), 0, cache)
    open_session(tmp_path / "b.onnx", ort.SessionOptions(), 0, cache)
    before = entries(cache)
    conv_model(tmp_path / "a.onnx", seed=7)
    os.utime(tmp_path / "a.onnx", ns=(1, 1))  # a new file: a new key even within the clock's resolution
    retrained = run(open_session(tmp_path / "a.onnx", ort.SessionOptions(), 0, cache))
    after = entries(cache)
    assert len(before) == len(after) == 2 and len(set(before) & set(after)) == 1  # b's entry kept, a's replaced
    expected = run(ort.InferenceSession(str(tmp_path / "a.onnx"), providers=["CPUExecutionProvider"]))
    assert np.abs(retrained - expected).max() < 1e-5


def test_an_unwritable_cache_only_costs_the_saving(tmp_path, caplog):
    model = tmp_path / "model.onnx"
    conv_model(model)
    (tmp_path / "file").write_text("")
    with caplog.at_level(logging.WARNING):
        session = open_session(model, ort.SessionOptions(), 0, tmp_path / "file" / "cache")
    assert "is not writable" in caplog.text and run(session).shape == (1, 32, 20, 24)


def test_cache_setting(tmp_path):
    model = tmp_path / "1" / "model.onnx"
    assert resolve_cache_dir("auto", model) == tmp_path / "1" / DEFAULT_DIR_NAME
    assert resolve_cache_dir("", model) == tmp_path / "1" / DEFAULT_DIR_NAME
    assert resolve_cache_dir("off", model) is None
    assert resolve_cache_dir("/var/cache/vgg", model).as_posix() == "/var/cache/vgg"


@pytest.mark.usefixtures("triton")
def test_served_members_fill_their_cache(triton_repository):
    members = [p for p in triton_repository.iterdir() if (p / "1" / "model.onnx").exists()]
    assert members
    for member in members:
        assert entries(member / "1" / DEFAULT_DIR_NAME), member.name
