"""The client SDK over loopback against the real gateway and Triton: inputs, typed results, errors, retries,
the async twin, direct-to-Triton mode, batch scoring with the CLI (interrupted and resumed), and packaging."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support.gateway import PROJECT_ROOT, Gateway, HeldRequest, free_port, start_gateway, wait_for_metric

from client import AsyncClient, Classification, Client, ClientError, Prediction, RetryPolicy

pytest_plugins = ("support.gateway",)


def same(a: Classification, b: Classification) -> None:
    assert [p.index for p in a.predictions] == [p.index for p in b.predictions]
    np.testing.assert_allclose([p.score for p in a.predictions], [p.score for p in b.predictions], atol=1e-5)


def test_classify_accepts_paths_bytes_pil_and_arrays(gateway, sample_images, tmp_path):
    data = sample_images["chelsea_451x300.bmp"]
    path = tmp_path / "chelsea.bmp"
    path.write_bytes(data)
    pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    with Client(gateway.url) as client:
        reference = client.classify(path, top_k=4)
        assert isinstance(reference, Classification) and isinstance(reference.top, Prediction)
        assert len(reference.predictions) == 4 and reference.pipeline == "fast" and reference.models == {"vgg_d": "1"}
        assert reference.top.label == f"digit_{reference.top.index}"
        for same_image in (str(path), data, Image.fromarray(pixels), pixels, pixels.astype(np.float32) / 255.0):
            same(client.classify(same_image, top_k=4), reference)
        fused = client.classify(path, top_k=2, pipeline="fusion")
        assert fused.pipeline == "fusion" and len(fused.models) == 3


def test_errors_are_typed(gateway):
    with Client(gateway.url) as client:
        with pytest.raises(ClientError) as bad:
            client.classify(b"not an image at all")
        assert (bad.value.status, bad.value.code, bad.value.retryable) == (422, "invalid_image", False)
        with pytest.raises(ClientError) as unknown:
            client.classify(np.zeros((80, 80, 3), np.uint8), pipeline="missing")
        assert (unknown.value.status, unknown.value.code) == (404, "unknown_pipeline")
    with Client(f"http://127.0.0.1:{free_port()}", retry=RetryPolicy(attempts=2, base_delay_s=0.01)) as client:
        with pytest.raises(ClientError) as refused:
            client.classify(b"x")
        assert refused.value.code == "connection_error" and refused.value.retryable


def test_pipelines_and_batch(gateway, sample_images):
    with Client(gateway.url) as client:
        pipelines = {p.name: p for p in client.pipelines()}
        assert pipelines["fusion"].members == ("vgg_a", "vgg_d", "vgg_e") and pipelines["fast"].default
        assert client.ready()
        images = list(sample_images.values())
        results = client.classify_batch([images[0], b"junk", images[1]], top_k=3)
        assert isinstance(results[1], ClientError) and results[1].code == "invalid_image"
        same(results[0], client.classify(images[0], top_k=3))
        same(results[2], client.classify(images[1], top_k=3))


def test_bad_arguments_are_refused_before_any_request():
    """Wrong arguments fail at the call, with Python's own exception types, whatever the server would say."""
    from client.images import encode

    with Client(f"http://127.0.0.1:{free_port()}", retry=RetryPolicy(attempts=1)) as client:
        image = np.zeros((80, 80, 3), np.uint8)
        for top_k, error in ((0, ValueError), (-1, ValueError), ("5", TypeError), (True, TypeError), (1.5, TypeError)):
            with pytest.raises(error, match="top_k must be"):
                client.classify(image, top_k=top_k)
        with pytest.raises(ValueError, match="concurrency must be at least 1"):
            client.score(["a.png"], concurrency=0)  # at the call, before any iteration
        with pytest.raises(TypeError, match="not image bytes"):
            next(client.score(b"abc"))
    with pytest.raises(ValueError, match="timeout must be a positive"):
        Client(timeout=0)
    pixels = {
        "float 0..255": (np.full((8, 8, 3), 200.0), ValueError, "float pixels must be in 0..1, got 200..200"),
        "NaN": (np.full((8, 8), np.nan), ValueError, "float pixels must be in 0..1"),
        "16-bit": (np.full((8, 8), 4095, np.uint16), ValueError, "integer pixels must be in 0..255, got 4095..4095"),
        "empty": (np.zeros((0, 0, 3), np.uint8), ValueError, r"the array is empty \(shape \(0, 0, 3\)\)"),
        "objects": (np.array([[None, 1]], dtype=object), TypeError, "unsupported pixel type object"),
        "channels first": (np.zeros((3, 8, 8), np.uint8), ValueError, r"channels first\? pass array.transpose"),
    }
    for array, error, message in pixels.values():
        with pytest.raises(error, match=message):
            encode(array)
    assert encode(Image.new("I", (8, 8), 70000))[1] == "image/png"  # 32-bit ints: converted, not Pillow's error
    assert encode(np.ones((8, 8), bool))[1] == "image/png"


def test_batches_put_each_image_fault_in_its_slot_and_fail_whole_for_the_rest(gateway, triton, sample_images,
                                                                              tmp_path):
    image = next(iter(sample_images.values()))
    for url in (gateway.url, f"grpc://{triton.grpc_url}"):
        with Client(url) as client:
            assert client.classify_batch([]) == []
            results = client.classify_batch([image, tmp_path / "missing.png", b"junk"], top_k=2)
            assert isinstance(results[0], Classification)
            assert (results[1].code, results[2].code) == ("read_error", "invalid_image"), url
            with pytest.raises(ClientError) as unknown:
                client.classify_batch([image, b"junk"], pipeline="nope")
            assert unknown.value.code == "unknown_pipeline" and "available: " in unknown.value.message, url


def test_direct_mode_asks_triton_when_asked_if_ready_and_reuses_its_clients(triton, photo_dir):
    with Client(f"grpc://{triton.grpc_url}") as client:
        assert client.ready()
        for _ in range(3):
            assert all(r.ok for r in client.score(photo_dir / "nested", concurrency=4))
        assert len(client._transport._clients) <= 4  # one per thread in flight, not per thread ever started
    with Client(f"grpc://127.0.0.1:{free_port()}") as closed:
        assert not closed.ready()


def test_retries_on_429_until_served(triton, tmp_path_factory, sample_images):
    server = start_gateway(tmp_path_factory, [triton.http_url], "--max-inflight", "1", "--max-queue", "0",
                           wait_ready=True)
    try:
        data = sample_images["china_500x333.jpg"]
        held = HeldRequest(server.url, data)
        wait_for_metric(server.url, "vgg_gateway_active_requests", 1)
        threading.Timer(0.5, held.release.set).start()  # the slot frees up while the client backs off
        with Client(server.url, retry=RetryPolicy(attempts=6, base_delay_s=0.1, max_delay_s=1.0)) as client:
            result = client.classify(data)
        assert result.predictions
        assert held.finish().status_code == 200
        text = Gateway.metrics_text(server.url)
        assert 'status="429"' in text  # the client really was refused first
    finally:
        server.stop()


def test_retries_connection_errors_until_the_gateway_is_up(triton, tmp_path_factory, sample_images):
    gateway = Gateway([triton.http_url], log_path=tmp_path_factory.mktemp("late") / "gateway.log")
    threading.Timer(0.5, gateway.start).start()
    try:
        with Client(gateway.url, retry=RetryPolicy(attempts=30, base_delay_s=0.2, max_delay_s=0.5)) as client:
            assert client.classify(sample_images["china_500x333.jpg"]).predictions
    finally:
        time.sleep(0.1)
        gateway.stop()


def test_async_client_matches_sync(gateway, sample_images, tmp_path):
    for name, data in sample_images.items():
        (tmp_path / name).write_bytes(data)

    async def run() -> tuple[list[Classification], dict[str, Classification]]:
        async with AsyncClient(gateway.url) as client:
            singles = await asyncio.gather(*(client.classify(d, top_k=3) for d in sample_images.values()))
            scored = {Path(r.source).name: r.classification async for r in client.score(tmp_path, concurrency=3,
                                                                                           top_k=3)}
            return list(singles), scored

    singles, scored = asyncio.run(run())
    with Client(gateway.url) as client:
        for (name, data), single in zip(sample_images.items(), singles, strict=True):
            expected = client.classify(data, top_k=3)
            same(single, expected)
            same(scored[name], expected)


def test_direct_triton_mode_gives_the_same_results(gateway, triton, sample_images):
    with Client(gateway.url) as via_gateway, Client(f"grpc://{triton.grpc_url}") as direct:
        assert {p.name for p in direct.pipelines()} == {p.name for p in via_gateway.pipelines()}
        for data in sample_images.values():
            a, b = via_gateway.classify(data, top_k=5, pipeline="multiscale"), direct.classify(data, top_k=5,
                                                                                               pipeline="multiscale")
            same(a, b)
            assert a.models == b.models and a.pipeline == b.pipeline
        with pytest.raises(ClientError) as bad:
            direct.classify(b"junk")
        assert bad.value.code == "invalid_image"

    async def run() -> Classification:
        async with AsyncClient(f"grpc://{triton.grpc_url}") as client:
            return await client.classify(next(iter(sample_images.values())))
    with Client(gateway.url) as via_gateway:
        same(asyncio.run(run()), via_gateway.classify(next(iter(sample_images.values()))))


# --- batch scoring CLI ------------------------------------------------------------------------------------------

@pytest.fixture()
def photo_dir(tmp_path, sample_images) -> Path:
    """24 real photos (crops and resizes of the samples) in nested folders, plus a broken file and a stray text."""
    root = tmp_path / "photos"
    (root / "nested").mkdir(parents=True)
    for i in range(24):
        name, data = list(sample_images.items())[i % len(sample_images)]
        image = Image.open(io.BytesIO(data)).convert("RGB")
        w, h = image.size
        image = image.crop((i, i, w - i, h - 2 * i))
        folder = root / "nested" if i % 3 else root
        image.save(folder / f"{i:02d}_{Path(name).stem}.png")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff broken")
    (root / "notes.txt").write_text("not an image")
    return root


def client_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "client", *args]


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_score_cli_resumes_after_a_kill_with_the_same_output(gateway, photo_dir, tmp_path):
    full = tmp_path / "full.csv"
    args = ["--url", gateway.url, "score", str(photo_dir), "--pipeline", "multiscale", "--concurrency", "2"]
    done = subprocess.run(client_cli(*args, "-o", str(full)), cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1, done.stderr  # 1: finished, with per-file errors (broken.jpg)
    assert "done: 25 of 25 files" in done.stderr and "invalid_image: 1" in done.stderr
    rows = read_csv(full)
    assert len(rows) == 25 and [r["path"] for r in rows] == sorted(r["path"] for r in rows)
    broken = [r for r in rows if r["status"] == "error"]
    assert len(broken) == 1 and broken[0]["path"].endswith("broken.jpg") and broken[0]["error_code"] == "invalid_image"
    assert all(json.loads(r["predictions"])[0]["index"] == int(r["index"]) for r in rows if r["status"] == "ok")

    partial = tmp_path / "partial.csv"
    job = subprocess.Popen(client_cli(*args, "-o", str(partial)), cwd=PROJECT_ROOT, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not partial.exists() or partial.read_text().count("\n") < 6:  # header + at least 5 rows
        assert time.monotonic() < deadline and job.poll() is None, "job finished before it could be killed"
        time.sleep(0.01)
    os.kill(job.pid, signal.SIGKILL)  # no chance to clean up: the worst interruption
    job.wait()
    interrupted_rows = read_csv(partial)
    assert 5 <= len(interrupted_rows) < 25
    resumed = subprocess.run(client_cli(*args, "-o", str(partial)), cwd=PROJECT_ROOT, capture_output=True,
                             text=True, timeout=120)
    assert f"skipped {len(interrupted_rows)} already" in resumed.stderr, resumed.stderr
    without_ids = [{k: v for k, v in row.items() if k != "request_id"} for row in read_csv(partial)]
    assert without_ids == [{k: v for k, v in row.items() if k != "request_id"} for row in rows]  # the same images
    assert all(row["request_id"] for row in read_csv(partial))  # each row its own request's ID


def test_score_cli_sigint_and_resume_into_jsonl(gateway, photo_dir, tmp_path):
    out = tmp_path / "out.jsonl"
    job = subprocess.Popen(client_cli("--url", gateway.url, "score", str(photo_dir / "nested"), "-o", str(out),
                                      "--pipeline", "fusion", "--concurrency", "1"),
                           cwd=PROJECT_ROOT, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not out.exists() or not out.read_text().strip():  # interrupted mid-job: once its first row is written
        assert time.monotonic() < deadline and job.poll() is None, "the job ended before writing a row"
        time.sleep(0.005)
    job.send_signal(signal.SIGINT)
    _, stderr = job.communicate(timeout=60)
    written = out.read_text().splitlines()
    assert job.returncode == (0 if len(written) == 16 else 130), (job.returncode, len(written), stderr)
    assert all(json.loads(line)["status"] == "ok" for line in written)  # whole rows only
    resumed = subprocess.run(client_cli("--url", gateway.url, "score", str(photo_dir / "nested"), "-o", str(out),
                                        "--pipeline", "fusion"), cwd=PROJECT_ROOT, capture_output=True, text=True,
                             timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 16 and all(r["status"] == "ok" for r in rows)
    assert len({r["path"] for r in rows}) == 16 and {r["pipeline"] for r in rows} == {"fusion"}


def test_score_cli_stops_when_the_gateway_dies_and_a_rerun_finishes(triton, tmp_path_factory, gateway, photo_dir,
                                                                      tmp_path):
    """Killed mid-job, the gateway leaves connection errors: after 8 files in a row (each retried) the job stops
    with status 2 instead of writing an error row for every remaining file; the re-run redoes those rows only."""
    out = tmp_path / "out.csv"
    doomed = start_gateway(tmp_path_factory, [triton.http_url], wait_ready=True)
    job = subprocess.Popen(client_cli("--url", doomed.url, "score", str(photo_dir), "-o", str(out), "--pipeline",
                                      "fusion", "--concurrency", "2"), cwd=PROJECT_ROOT, stderr=subprocess.PIPE,
                           text=True)
    deadline = time.monotonic() + 60
    while not out.exists() or out.read_text().count("\n") < 3:  # header + 2 rows
        assert time.monotonic() < deadline and job.poll() is None, "the job ended before the gateway could die"
        time.sleep(0.01)
    doomed.process.kill()
    doomed.stop()
    _, stderr = job.communicate(timeout=120)
    assert job.returncode == 2, stderr
    assert "stopped:" in stderr and "failed the last 8 files in a row" in stderr, stderr
    rows = read_csv(out)
    lost = [r for r in rows if r["error_code"] == "connection_error"]
    assert len(lost) >= 8 and len(rows) < 25  # it did not plough through the whole folder
    kept = {r["path"] for r in rows if r not in lost}
    resumed = subprocess.run(client_cli("--url", gateway.url, "score", str(photo_dir), "-o", str(out), "--pipeline",
                                        "fusion"), cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 1, resumed.stderr  # finished; broken.jpg is the one per-file error
    assert f"skipped {len(kept)} already" in resumed.stderr
    rows = read_csv(out)
    assert len(rows) == 25 and len({r["path"] for r in rows}) == 25
    assert [r["error_code"] for r in rows if r["status"] == "error"] == ["invalid_image"]


def test_score_cli_refuses_what_it_cannot_do_before_scoring_anything(gateway, photo_dir, tmp_path, capsys):
    """Usage problems are one line and status 2, found before the first file, and leave no output file behind."""
    from client.cli import main

    out = tmp_path / "out.csv"
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = {
        (str(tmp_path / "no_such_folder"),): f"{tmp_path / 'no_such_folder'}: no such file or directory",
        (str(tmp_path / "*.nope"),): f"{tmp_path / '*.nope'}: no file matches",
        (str(empty),): f"no image files in {empty} (looked for .bmp",
        (str(photo_dir), "--pipeline", "nope"): "unknown pipeline 'nope'; served: ",
        (str(photo_dir), "--top-k", "0"): "top_k must be at least 1, got 0",
    }
    for args, message in cases.items():
        assert main(["--url", gateway.url, "score", *args, "-o", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"client: {message}") and err.count("\n") == 1, err
    assert not out.exists()
    outputs = {
        str(tmp_path / "out.txt"): "output must end in .csv, .jsonl or .parquet, got 'out.txt'",
        str(tmp_path / "missing" / "out.csv"): f"cannot write {tmp_path / 'missing' / 'out.csv'}: No such file",
    }
    for output, message in outputs.items():
        assert main(["--url", gateway.url, "score", str(photo_dir), "-o", output]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"client: {message}") and err.count("\n") == 1, err
    closed = f"http://127.0.0.1:{free_port()}"
    assert main(["--url", closed, "score", str(photo_dir), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"client: cannot use {closed}: connection_error") and err.count("\n") == 1, err
    assert not out.exists()


def test_score_inputs_globs_and_lists(gateway, photo_dir, tmp_path):
    listing = tmp_path / "files.txt"
    chosen = sorted(str(p) for p in (photo_dir / "nested").glob("*.png"))[:3]
    listing.write_text("# three photos\n" + "\n".join(chosen) + "\n")
    with Client(gateway.url) as client:
        from_list = {r.source for r in client.score(listing)}
        from_glob = {r.source for r in client.score(str(photo_dir / "*.png"))}
        missing = list(client.score([str(photo_dir / "nope.png")]))
    assert from_list == set(chosen)
    assert from_glob == {str(p) for p in photo_dir.glob("*.png")}
    assert missing[0].error.code == "read_error"


def test_client_package_installs_alone_without_heavy_dependencies(tmp_path):
    wheel_dir, target = tmp_path / "wheel", tmp_path / "site"
    leftovers = [PROJECT_ROOT / "client" / "build", PROJECT_ROOT / "client" / "vgg_serve_client.egg-info"]
    existed = [p.exists() for p in leftovers]
    try:
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                        str(wheel_dir), str(PROJECT_ROOT / "client")], check=True, timeout=120, cwd=tmp_path)
    finally:  # setuptools builds in the source folder: leave the tree as it was
        for path, was_there in zip(leftovers, existed, strict=True):
            if not was_there:
                shutil.rmtree(path, ignore_errors=True)
    wheels = list(wheel_dir.glob("vgg_serve_client-*.whl"))
    assert len(wheels) == 1
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                    str(wheels[0])], check=True, timeout=120, cwd=tmp_path)
    metadata = next(target.glob("vgg_serve_client-*.dist-info")) / "METADATA"
    requires = [line.split(":", 1)[1].strip() for line in metadata.read_text().splitlines()
                if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert sorted(r.split(">")[0] for r in requires) == ["httpx", "numpy", "pillow"]
    extras = [line for line in metadata.read_text().splitlines() if "extra ==" in line]
    assert any(line.startswith("Requires-Dist: ray[data]") and 'extra == "ray"' in line for line in extras), extras
    probe = ("import sys; import client; from client import Client, AsyncClient; import client.cli; "
             "heavy = {'torch', 'fastapi', 'tritonclient', 'onnxruntime', 'server', 'ray', 'pyarrow'}; "
             "heavy &= set(sys.modules); "
             "assert client.__file__.startswith(sys.argv[1]), client.__file__; assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", probe, str(target)], check=True, cwd=tmp_path, timeout=60,
                   env={**os.environ, "PYTHONPATH": str(target)})
    shutil.rmtree(wheel_dir)
