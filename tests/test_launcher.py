"""The Triton launcher: clear failures, loopback by default, clean shutdown on a signal, no leaked shared memory."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import free_port

from server.triton_launcher import SHARED_MEMORY, SHM_PREFIX, LaunchError, TritonServer

ROOT = Path(__file__).resolve().parent.parent


def test_missing_repository_is_a_clear_error(tmp_path):
    with pytest.raises(LaunchError, match=r"model repository .*nowhere does not exist"):
        TritonServer(tmp_path / "nowhere", free_port(), free_port(), free_port()).start()


def test_a_model_that_fails_to_load_is_reported(tmp_path, triton_repository):
    repository = tmp_path / "repository"
    shutil.copytree(triton_repository / "vgg_a", repository / "vgg_a")
    (repository / "vgg_a" / "1" / "model.onnx").write_bytes(b"not onnx")
    server = TritonServer(repository, free_port(), free_port(), free_port(), log_path=tmp_path / "log")
    with pytest.raises(LaunchError, match=r"(?s)exited with status 1 before it was ready.*vgg_a"):
        server.start()


def test_cli_binds_loopback_and_stops_cleanly_on_sigterm(tmp_path, triton_repository):
    repository = tmp_path / "repository"
    shutil.copytree(triton_repository / "vgg_a", repository / "vgg_a")
    ports = [free_port() for _ in range(3)]
    process = subprocess.Popen(
        [sys.executable, "-m", "server.triton_launcher", "--repository", str(repository), "--http-port",
         str(ports[0]), "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2])],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        assert line.startswith(f"Triton ready: HTTP 127.0.0.1:{ports[0]}, gRPC 127.0.0.1:{ports[1]}"), line
        sockets = [line.split()[3] for line in subprocess.run(["ss", "-ltnH"], capture_output=True,
                                                               text=True).stdout.splitlines()]
        for port in ports:
            bound = [local for local in sockets if local.endswith(f":{port}")]
            assert bound and all(b in (f"127.0.0.1:{port}", f"[::ffff:127.0.0.1]:{port}") for b in bound), bound
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
        assert time.monotonic() - started < 60
    finally:
        if process.poll() is None:
            process.kill()


def test_a_killed_server_leaves_no_shared_memory_behind(tmp_path, triton_repository):
    """The Python backend's regions are RAM: a SIGKILLed Triton (here the server alone, as a crash would) must not
    keep them, and a launcher that died before cleaning up has its regions swept by the next start."""
    repository = tmp_path / "repository"
    shutil.copytree(triton_repository / "vgg_a", repository / "vgg_a")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = SHARED_MEMORY / f"{SHM_PREFIX}-{dead.pid}-0-python-orphan"
    orphan.write_bytes(b"\0" * 4096)
    server = TritonServer(repository, free_port(), free_port(), free_port(), log_path=tmp_path / "log").start()
    try:
        assert not orphan.exists()
        regions = server.shared_memory_regions()
        assert regions and all(r.name.startswith(f"{SHM_PREFIX}-{os.getpid()}-") for r in regions)
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait()
        assert all(r.exists() for r in regions)  # what Triton leaves when it dies
    finally:
        server.stop()
    assert not any(r.exists() for r in regions)
