"""bench.capacity's sizing form: pods from the recorded per-pod figures, the record it used named, bad input refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import capacity

ROOT = Path(__file__).resolve().parent.parent


def levels(*rows: tuple[int, float, float]) -> list[dict]:
    return [{"concurrency": c, "images_per_s": ips, "p50_ms": 10.0 * c, "p95_ms": 20.0 * c, "pending_mean": pending,
             "pending_max": pending * 2} for c, ips, pending in rows]


@pytest.fixture
def records(tmp_path) -> Path:
    path = tmp_path / "capacity.json"
    path.write_text(json.dumps({
        "date": "2026-12-01 10:00 UTC", "machine": "test machine", "cores": 4, "ort_threads": 4,
        "seconds_per_level": 8, "image": "x", "triton_resident_mb": 1500,
        "records": [
            {"pipeline": "fast", "base": "fast", "precision": "fp32", "members": ["vgg_d"],
             "levels": levels((1, 40.0, 0.1), (2, 70.0, 0.4), (4, 95.0, 1.6), (8, 100.0, 5.0))},
            {"pipeline": "fast_int8", "base": "fast", "precision": "int8", "members": ["vgg_d_int8"],
             "levels": levels((1, 60.0, 0.1), (2, 120.0, 0.6))},
        ]}))
    return path


def test_pods_come_from_the_knee_of_the_recorded_curve(records):
    # knee: the lowest concurrency reaching 90% of the best (95 >= 90 at 4 clients); 75% of it is 71.25 per pod
    answer = capacity.size(500, "fast", "fp32", 0.75, records)
    first, used, scaler = answer.splitlines()
    assert first.startswith("fast at fp32, 500 images/s: 8 Triton pods of 4 cores (32 cores)")
    assert "95.0 images/s per pod at 4 concurrent requests" in used and "test machine" in used
    assert "threshold 2 pending requests per pod" in scaler and "maxReplicaCount at least 8" in scaler
    assert capacity.size(120, "fast", "int8", 1.0, records).startswith("fast at int8, 120 images/s: 1 Triton pod of")


def test_a_precision_that_was_not_measured_names_what_was(records):
    with pytest.raises(capacity.SizingError, match=r"no measurement of fusion at int8 .*fast fp32, fast int8"):
        capacity.size(50, "fusion", "int8", 0.75, records)


@pytest.mark.parametrize(("args", "message"), [
    (["--rps", "0", "--pipeline", "fast"], "capacity: error: --rps must be positive, got 0"),
    (["--rps", "10", "--pipeline", "fast", "--utilisation", "1.5"], "capacity: error: --utilisation must be in"),
    (["--rps", "10", "--pipeline", "fast", "--records", "/nonexistent/capacity.json"],
     "capacity: error: no measurements at /nonexistent/capacity.json"),
    (["--rps", "10", "--pipeline", "nosuch"], "capacity: error: no measurement of nosuch at fp32"),
])
def test_bad_input_is_one_line_and_status_2(args, message):
    result = subprocess.run([sys.executable, "-m", "bench.capacity", *args], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.startswith(message), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_the_committed_records_answer_the_documented_command():
    result = subprocess.run([sys.executable, "-m", "bench.capacity", "--rps", "50", "--pipeline", "fusion"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("fusion at fp32, 50 images/s: ") and "bench/results/capacity.json" in result.stdout


def test_precision_is_read_from_the_members():
    assert capacity.precision_of(["vgg_d_int8"]) == "int8"
    assert capacity.precision_of(["vgg_a_bf16", "vgg_d_bf16"]) == "bf16"
    assert capacity.precision_of(["vgg_a_int8", "vgg_d"]) == "fp32"
