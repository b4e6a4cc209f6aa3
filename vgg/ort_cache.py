"""onnxruntime's optimized-model cache: optimize a model once per machine, load the optimized graph ever after.

With every graph optimization on, loading full-size VGG-16 FP32 peaks at about 4x its weights (2.25 GB for 0.55 GB):
the NCHWc layout transform holds the original and the re-laid-out weights at once, on top of the parsed protobuf.
The same session saved after optimization loads at about 1.1x (0.65 GB) and runs as fast (bench/results/precision.md).
The saved graph is specific to the CPU and the onnxruntime version (onnxruntime warns so), so both are part of the
cache key, as they are of TensorRT's engine cache on GPUs. Entries appear atomically, so instances of one model
loading at once never read a half-written entry; a broken entry is rebuilt, and an unwritable cache only costs the
memory it would have saved. OpenVINO models keep their compiled-model cache (CACHE_DIR) in `openvino/` inside it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

import onnxruntime as ort

PROVIDERS = ["CPUExecutionProvider"]
DEFAULT_DIR_NAME = ".optimized"  # next to the model file: removing the model removes its cache
CACHE_ENV = "VGG_MODEL_CACHE"
_log = logging.getLogger(__name__)


def _cpu_flags() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        return next((line for line in cpuinfo if line.startswith("flags")), "")
    return ""


def cache_key(model_path: Path, graph_level: int) -> str:
    """`<model>-<build>`: the first half names the model file, the second what the optimized graph depends on."""
    stat = model_path.stat()
    model = hashlib.sha256(str(model_path.resolve()).encode()).hexdigest()[:12]
    build = f"{ort.__version__}|{graph_level}|{stat.st_size}|{stat.st_mtime_ns}|{_cpu_flags()}"
    return f"{model}-{hashlib.sha256(build.encode()).hexdigest()[:12]}"


def resolve_cache_dir(setting: str, model_path: Path) -> Path | None:
    """The model config's `optimized_model_cache`: "auto", "off", or a folder. "auto" is ``$VGG_MODEL_CACHE``
    where set (an image's model repository is read-only; entries are keyed by the model's path, so models share
    it), else a folder beside the model."""
    if setting.lower() in ("off", "none", "false", "0"):
        return None
    if setting not in ("", "auto"):
        return Path(setting)
    return Path(os.environ[CACHE_ENV]) if os.environ.get(CACHE_ENV) else model_path.parent / DEFAULT_DIR_NAME


def writable(cache_dir: Path | None) -> Path | None:
    """``cache_dir`` once created, or None (with a warning) where it can't be: a cache is never worth a failure."""
    if cache_dir is None:
        return None
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _log.warning("model cache %s is not writable (%s); loading without it", cache_dir, exc)
        return None
    return cache_dir if os.access(cache_dir, os.W_OK) else None


def open_session(model_path: Path, options: ort.SessionOptions, graph_level: int,
                 cache_dir: Path | None) -> ort.InferenceSession:
    if cache_dir is None:
        return ort.InferenceSession(str(model_path), options, providers=PROVIDERS)
    key = cache_key(model_path, graph_level)
    entry = cache_dir / key
    if (entry / "model.onnx").exists():
        try:
            return ort.InferenceSession(str(entry / "model.onnx"), options, providers=PROVIDERS)
        except Exception as exc:  # whatever broke the entry, the source model still loads
            _log.warning("rebuilding the optimized-model cache entry %s: %s", entry, exc)
            shutil.rmtree(entry, ignore_errors=True)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=cache_dir))
    except OSError as exc:
        _log.warning("optimized-model cache %s is not writable (%s); loading without it", cache_dir, exc)
        return ort.InferenceSession(str(model_path), options, providers=PROVIDERS)
    options.optimized_model_filepath = str(staging / "model.onnx")
    options.add_session_config_entry("session.optimized_model_external_initializers_file_name", "model.onnx.data")
    options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    try:
        session = ort.InferenceSession(str(model_path), options, providers=PROVIDERS)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    try:
        os.rename(staging, entry)
    except OSError:  # another instance of the model committed the same entry first: keep theirs
        shutil.rmtree(staging, ignore_errors=True)
        return session
    _remove_older_entries(cache_dir, key)
    return session


def _remove_older_entries(cache_dir: Path, key: str) -> None:
    """Entries of the same model file built for an older file, runtime or CPU."""
    model = key.split("-")[0]
    for other in cache_dir.glob(f"{model}-*"):
        if other.name != key:
            shutil.rmtree(other, ignore_errors=True)
