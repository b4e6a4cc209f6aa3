"""The launcher's /dev/shm check: the Python-backend instances a repository runs, counted from its configs as Triton
reads them, and a refusal in one line that names the fix when they do not fit."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.shared_memory import SharedMemoryTooSmall, check_capacity, python_instances


def model(repository: Path, name: str, text: str) -> None:
    (repository / name).mkdir(parents=True)
    (repository / name / "config.pbtxt").write_text(text)


def test_instances_are_counted_from_every_way_a_config_writes_them(tmp_path):
    model(tmp_path, "step", 'name: "step"\nbackend: "python"\ninstance_group {\n  count: 2\n  kind: KIND_CPU\n}\n')
    model(tmp_path, "member", 'platform: "onnxruntime_onnx"\ninstance_group [ { count: 3, kind: KIND_CPU },'
                              ' { kind: KIND_CPU } ]  # a second group without a count: one instance\n')
    model(tmp_path, "plain", 'backend: "python"  # no instance_group: one instance\n')
    model(tmp_path, "ensemble", 'platform: "ensemble"\nensemble_scheduling { step [ { model_name: "step" } ] }\n')
    model(tmp_path, "commented", '# backend: "python"\nbackend: "onnxruntime"\ninstance_group { count: 9 }\n')
    assert python_instances(tmp_path) == 2 + 4 + 1
    assert python_instances(tmp_path, python_based=()) == 2 + 1  # NVIDIA's Triton: its onnxruntime is native


def test_too_little_shared_memory_is_one_line_naming_the_fix(tmp_path):
    check_capacity(1, tmp_path)  # this machine's disk holds a handful of regions
    with pytest.raises(SharedMemoryTooSmall) as refused:
        check_capacity(10**9, tmp_path)  # a petabyte of regions: no disk has it
    message = str(refused.value)
    assert "\n" not in message and "--shm-size=" in message and "1000000000 Python-backend instances" in message
