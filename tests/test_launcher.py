"""The Triton launcher: clear failures, loopback by default, clean shutdown on a signal, no leaked shared memory."""

from __future__ import annotations

import os
import shutil
import signal
import socket
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


def _group_gone(pgid: int, within_s: float = 2.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_a_taken_port_is_named_before_anything_starts(tmp_path, triton_repository):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = TritonServer(triton_repository, free_port(), port, free_port(), log_path=tmp_path / "log")
        with pytest.raises(LaunchError, match=rf"cannot use 127.0.0.1:{port} for Triton's gRPC endpoint: "
                                              "Address already in use"):
            server.start()
        assert server.process is None
        serve = subprocess.run([sys.executable, "-m", "server.serve", "--repository", str(triton_repository),
                                "--gateway-port", str(port), "--log", str(tmp_path / "serve.log")],
                               cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert serve.returncode == 1
    assert serve.stderr == f"serve: error: cannot use 127.0.0.1:{port} for the gateway: Address already in use\n"
    assert "Triton ready" not in serve.stdout


def test_the_launcher_cleans_up_after_triton_dies_under_it(tmp_path, triton_repository):
    """Killed Triton: the launcher exits 1 and leaves neither its stubs (same process group) nor their regions,
    even when the stubs are stuck (stopped here: seen under load, blocked on a lock) and cannot clean up."""
    repository = tmp_path / "repository"
    shutil.copytree(triton_repository / "vgg_a", repository / "vgg_a")
    process = subprocess.Popen(
        [sys.executable, "-m", "server.triton_launcher", "--repository", str(repository), "--http-port",
         str(free_port()), "--grpc-port", str(free_port()), "--metrics-port", str(free_port())],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().startswith("Triton ready")
        regions = list(SHARED_MEMORY.glob(f"{SHM_PREFIX}-{process.pid}-*"))
        triton_pid = int(Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()[0])
        assert regions and Path(f"/proc/{triton_pid}/cmdline").read_bytes().split(b"\0")[0].endswith(b"tritonserver")
        stubs = [int(pid) for pid in Path(f"/proc/{triton_pid}/task/{triton_pid}/children").read_text().split()]
        assert stubs
        for stub in stubs:
            os.kill(stub, signal.SIGSTOP)
        os.kill(triton_pid, signal.SIGKILL)
        assert process.wait(30) == 1
        assert "tritonserver exited with status -9" in process.stderr.read()
        assert _group_gone(triton_pid), "Triton's stubs outlived it"
        assert not any(r.exists() for r in regions)
    finally:
        if process.poll() is None:
            process.kill()


def test_an_installed_tritonserver_that_is_missing_is_named(tmp_path, triton_repository):
    result = subprocess.run([sys.executable, "-m", "server.triton_launcher", "--repository", str(triton_repository),
                             "--tritonserver", str(tmp_path / "bin" / "tritonserver"), "--backend-directory",
                             str(tmp_path), "--http-port", str(free_port()), "--grpc-port", str(free_port()),
                             "--metrics-port", str(free_port()), "--log", str(tmp_path / "triton.log")],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    missing = tmp_path / "bin" / "tritonserver"
    assert result.stderr.strip() == f"triton_launcher: error: tritonserver binary not found at {missing}"
