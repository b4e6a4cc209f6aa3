"""`python -m client score --ray` on a real single-node Ray cluster against the real gateway and Triton: the same
output as the plain client (CSV, JSONL, Parquet; folders and file:// URIs), a killed driver's job resumed to the
same result, bad files as rows, and each bad option or unreachable thing as one line and exit status 2."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support.gateway import PROJECT_ROOT, free_port

from client.ray_score import MISSING_RAY

pytest_plugins = ("support.gateway",)
PIPELINE = "multiscale"
# Ray prints this for every actor pool (ray-project/ray issue 57733: Ray Data's own actor arguments, not ours).
RAY_NOISE = "has constructor arguments in the object store and max_restarts > 0"


@pytest.fixture(scope="module")
def ray_address():
    """A real single-node Ray cluster, started by this process; the jobs under test join it as drivers."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def photos(tmp_path_factory, sample_images) -> Path:
    """22 real photos (crops of the samples) in nested folders, a broken JPEG and a stray text file."""
    root = tmp_path_factory.mktemp("ray_photos")
    (root / "nested").mkdir()
    for i in range(22):
        name, data = list(sample_images.items())[i % len(sample_images)]
        image = Image.open(io.BytesIO(data)).convert("RGB")
        w, h = image.size
        folder = root / "nested" if i % 2 else root
        image.crop((2 * i, i, w - i, h - 2 * i)).save(folder / f"{i:02d}_{Path(name).stem}.png")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff broken")
    (root / "notes.txt").write_text("not an image")
    return root


def run_cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "client", *args], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=timeout)


def read_rows(path: Path) -> list[dict]:
    """Rows of a CSV, JSONL or Parquet result file, normalised to one shape for comparison."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
        for row in rows:
            row["models"] = dict(row["models"]) if row["models"] is not None else None
    elif path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text().splitlines()]
    else:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
        for row in rows:
            for key in ("predictions", "models"):
                row[key] = json.loads(row[key]) if row[key] else None
    normalised = []
    for row in rows:
        ok = row["status"] == "ok"
        normalised.append({
            "path": row["path"], "status": row["status"], "pipeline": row.get("pipeline") or None,
            "label": row.get("label") or None, "index": int(row["index"]) if ok else None,
            "score": float(row["score"]) if ok else None, "predictions": row.get("predictions"),
            "models": row.get("models"), "error_code": row.get("error_code") or None,
            "error_status": int(row["error_status"]) if not ok else None,
        })
    return normalised


def assert_same_rows(actual: list[dict], expected: list[dict]) -> None:
    """Equal row for row and in the same order; scores within float noise (Triton may batch differently)."""
    assert [r["path"] for r in actual] == [r["path"] for r in expected]
    for got, want in zip(actual, expected, strict=True):
        for key in ("status", "pipeline", "label", "index", "models", "error_code", "error_status"):
            assert got[key] == want[key], (got["path"], key, got[key], want[key])
        if want["status"] == "ok":
            assert [p["index"] for p in got["predictions"]] == [p["index"] for p in want["predictions"]]
            np.testing.assert_allclose([p["score"] for p in got["predictions"]],
                                       [p["score"] for p in want["predictions"]], atol=1e-5)


@pytest.fixture(scope="module")
def plain_csv(gateway, photos, tmp_path_factory) -> Path:
    """The plain client's output on the folder: what every Ray run must reproduce."""
    out = tmp_path_factory.mktemp("plain") / "plain.csv"
    done = run_cli("--url", gateway.url, "score", str(photos), "-o", str(out), "--pipeline", PIPELINE)
    assert done.returncode == 1, done.stderr  # finished, with one per-file error: broken.jpg
    return out


def test_ray_on_a_new_local_cluster_writes_what_the_plain_client_writes(gateway, photos, plain_csv, tmp_path):
    out = tmp_path / "ray.csv"
    done = run_cli("--url", gateway.url, "score", str(photos), "-o", str(out), "--pipeline", PIPELINE, "--ray")
    assert done.returncode == 1, done.stderr
    said = [line for line in done.stderr.splitlines() if RAY_NOISE not in line]
    assert len(said) == 1 and said[0].startswith("done: 23 of 23 files"), done.stderr  # the summary, no Ray chatter
    assert "invalid_image: 1" in said[0], done.stderr
    rows = read_rows(out)
    assert_same_rows(rows, read_rows(plain_csv))
    broken = [r for r in rows if r["status"] == "error"]
    assert [(Path(r["path"]).name, r["error_code"], r["error_status"]) for r in broken] == [
        ("broken.jpg", "invalid_image", 422)]
    assert out.read_text().splitlines()[0] == plain_csv.read_text().splitlines()[0]  # the same columns


def test_parquet_from_a_file_uri_on_a_running_cluster(ray_address, gateway, photos, plain_csv, tmp_path):
    out = tmp_path / "ray.parquet"
    done = run_cli("--url", gateway.url, "score", f"file://{photos}", "-o", str(out), "--pipeline", PIPELINE,
                   "--ray", "--ray-address", ray_address, "--ray-actors", "2", "--concurrency", "3")
    assert done.returncode == 1, done.stderr
    rows = read_rows(out)
    assert all(r["path"].startswith(f"file://{photos}/") for r in rows)
    for row in rows:
        row["path"] = row["path"].removeprefix("file://")
    assert_same_rows(rows, read_rows(plain_csv))
    assert not (tmp_path / "ray.parquet.partial.jsonl").exists()  # the journal is gone once the file is written
    again = run_cli("--url", gateway.url, "score", f"file://{photos}", "-o", str(out), "--pipeline", PIPELINE,
                    "--ray", "--ray-address", ray_address)
    assert again.returncode == 0 and "0 of 0 files" in again.stderr, again.stderr  # all done: nothing rescored
    assert "skipped 23 already" in again.stderr, again.stderr  # a 422 is final too: broken.jpg is not redone
    plain = tmp_path / "plain.parquet"  # Parquet is an output format of the plain client too
    assert run_cli("--url", gateway.url, "score", str(photos), "-o", str(plain), "--pipeline", PIPELINE).returncode == 1
    assert_same_rows(read_rows(plain), read_rows(plain_csv))


def test_a_killed_driver_resumes_to_the_same_result(ray_address, gateway, photos, tmp_path):
    reference = tmp_path / "plain.jsonl"
    assert run_cli("--url", gateway.url, "score", str(photos), "-o", str(reference), "--pipeline", "fusion",
                   "--concurrency", "1").returncode == 1
    out = tmp_path / "ray.jsonl"
    args = ["-m", "client", "--url", gateway.url, "score", str(photos), "-o", str(out), "--pipeline", "fusion",
            "--ray", "--ray-address", ray_address, "--ray-actors", "1", "--concurrency", "1"]
    job = subprocess.Popen([sys.executable, *args], cwd=PROJECT_ROOT, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not out.exists() or out.read_text().count("\n") < 4:
        assert time.monotonic() < deadline and job.poll() is None, "job finished before it could be killed"
        time.sleep(0.01)
    os.kill(job.pid, signal.SIGKILL)  # the driver dies with no chance to clean up
    job.wait()
    written = read_rows(out)
    assert 4 <= len(written) < 23
    resumed = run_cli(*args[2:])
    broken_left = not any(Path(r["path"]).name == "broken.jpg" for r in written)
    assert resumed.returncode == (1 if broken_left else 0), resumed.stderr  # the status is this run's rows
    assert f"skipped {len(written)} already" in resumed.stderr, resumed.stderr
    assert_same_rows(read_rows(out), read_rows(reference))  # nothing lost, nothing duplicated, same order


def test_files_that_cannot_be_read_or_decoded_are_rows(ray_address, gateway, photos, tmp_path):
    listing = tmp_path / "files.txt"
    listing.write_text(f"{photos / '00_china_500x333.png'}\n{photos / 'broken.jpg'}\n{tmp_path / 'gone.png'}\n")
    out = tmp_path / "out.jsonl"
    done = run_cli("--url", gateway.url, "score", str(listing), "-o", str(out), "--ray", "--ray-address", ray_address)
    assert done.returncode == 1, done.stderr
    rows = {Path(r["path"]).name: r for r in read_rows(out)}
    assert rows["00_china_500x333.png"]["status"] == "ok"
    assert (rows["broken.jpg"]["error_code"], rows["broken.jpg"]["error_status"]) == ("invalid_image", 422)
    assert (rows["gone.png"]["error_code"], rows["gone.png"]["error_status"]) == ("read_error", 0)


def test_what_cannot_work_is_one_line_and_status_2(ray_address, gateway, photos, tmp_path):
    out = tmp_path / "out.csv"
    closed = f"127.0.0.1:{free_port()}"
    cases = {
        ("--ray-address", closed): f"client: cannot reach the Ray cluster at {closed}: Connection refused",
        ("--ray-address", "nowhere"): "client: --ray-address must be HOST:PORT, ray://HOST:PORT or auto",
        ("--ray-address", ray_address, "--ray-actors", "0"): "client: --ray-actors must be at least 1, got 0",
    }
    for extra, message in cases.items():
        done = run_cli("--url", gateway.url, "score", str(photos), "-o", str(out), "--ray", *extra)
        assert done.returncode == 2 and done.stderr.startswith(message), (extra, done.stderr)
        assert done.stderr.count("\n") == 1, done.stderr
    missing = f"file://{tmp_path}/no_such_bucket"
    done = run_cli("--url", gateway.url, "score", missing, "-o", str(out), "--ray", "--ray-address", ray_address)
    assert done.returncode == 2 and done.stderr == f"client: {missing}: no such file or directory\n", done.stderr
    assert not out.exists()


def test_without_ray_installed_the_switch_says_how_to_get_it(gateway, photos, tmp_path):
    """The client runs without Ray (it is an extra); asking for --ray then says what to install, in one line."""
    probe = ("import sys; sys.modules['ray'] = None; from client.cli import main; "
             "sys.exit(main(sys.argv[1:]))")
    out = tmp_path / "out.csv"
    done = subprocess.run([sys.executable, "-c", probe, "--url", gateway.url, "score", str(photos), "-o", str(out),
                           "--ray"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stderr == f"client: {MISSING_RAY}\n", done.stderr
    plain = subprocess.run([sys.executable, "-c", probe, "--url", gateway.url, "score", str(photos / "nested"),
                            "-o", str(out), "--pipeline", "fast"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                           timeout=120)
    assert plain.returncode == 0, plain.stderr
