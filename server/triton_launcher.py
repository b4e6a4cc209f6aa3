"""Start real Triton Inference Server on a model repository, CPU-only, from the nvidia-pytriton wheel's binary.

    python -m server.triton_launcher --repository model_repository [--http-port 8000 --grpc-port 8001 ...]

The wheel ships `tritonserver` 2.51 with the Python backend but not the C++ onnxruntime backend; the launcher
assembles a backend folder holding the Python backend and the project's Python-based `onnxruntime` backend, sets the
library and module paths the binary and its Python stubs need, binds loopback by default, waits until every model is
ready, forwards SIGINT/SIGTERM and shuts Triton down cleanly.

Models are under explicit control: the models present at the first start are loaded, by name, and a restart loads
those and what was loaded since through the model-control API (`server.repository --apply`, noted by `serve` with
`remember_loaded`); nothing else is ever loaded by itself (no repository polling), so a folder that appears in the
repository later, half-written or not, stays unloaded. The stub healer (server/stub_healer.py) reloads a model whose
stub died. With an access key (server/triton_access.py) every API but health requires it; the CLIs always run with
one.

Triton's Python backend talks to each stub through a shared-memory region in /dev/shm (16 MB here, RAM) that only a
clean shutdown removes: a killed or crashed server leaves its regions behind, and enough of them fill /dev/shm
until Triton itself cannot start. Each server started here names its regions after this process
(`shm-region-prefix-name`), removes them once it has exited, however it exited, and sweeps those of servers whose
launching process has died.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path

from server.shared_memory import (
    GROWTH_BYTES,
    MIB,
    REGION_BYTES,
    SHARED_MEMORY,
    SharedMemoryTooSmall,
    check_capacity,
    python_instances,
)
from server.step_watch import DEFAULT_TIMEOUT_S as DEFAULT_STEP_TIMEOUT_S
from server.step_watch import PREFIX_ENV, TIMEOUT_ENV, TIMEOUT_PARAMETER
from server.stub_healer import StubHealer
from server.supervisor import HANG_AFTER_S, Liveness, answers
from server.telemetry import TRITON_SERVICE, TelemetryConfigError, TraceExport, trace_export
from server.triton_access import (
    KEY_ENV,
    KEY_FILE_ENV,
    AccessKeyError,
    is_loopback,
    keyed_request,
    new_key,
    read_key,
    restriction_flags,
    write_key_file,
)
from server.triton_progress import DEFAULT_STALL_AFTER_S, Progress

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ONNXRUNTIME_BACKEND = Path(__file__).resolve().parent / "backends" / "onnxruntime" / "model.py"
DEFAULT_RESPONSE_CACHE_MB = 64.0  # a pipeline's answer is a few KB: tens of thousands of repeated images
DEFAULT_LOAD_THREADS = 8  # models loaded at once: loads wait on stub processes starting more than on the cores
SHM_PREFIX = "vgg-serve-triton"  # then "-<launching pid>-<server id>-", then the backend's own unique suffix


class LaunchError(RuntimeError):
    """Triton could not be started or did not become ready; the message says why."""


def pytriton_root() -> Path:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise LaunchError("the nvidia-pytriton package is not installed (it ships the tritonserver binary); "
                          "run `make install`")
    return Path(next(iter(spec.submodule_search_locations))) / "tritonserver"


def backend_sources() -> dict[str, Path]:
    """Each file of the backend folder (relative to it) and where it comes from: the wheel's Python backend, the
    stub for this interpreter, the project's onnxruntime backend."""
    root = pytriton_root()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    return {
        "python/libtriton_python.so": root / "backends/python/libtriton_python.so",
        "python/triton_python_backend_utils.py": root / "backends/python/triton_python_backend_utils.py",
        "python/triton_python_backend_stub": root / f"python_backend_stubs/{version}/triton_python_backend_stub",
        "onnxruntime/model.py": ONNXRUNTIME_BACKEND,
    }


def assemble_backends(target: Path) -> Path:
    """backends/python (the wheel's Python backend + the stub for this interpreter) and backends/onnxruntime."""
    for relative, source in backend_sources().items():
        if not source.exists():
            raise LaunchError(f"missing {source} (needed for {relative}); reinstall nvidia-pytriton")
        destination = target / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        if not destination.exists() or destination.read_bytes() != source.read_bytes():
            shutil.copy2(source, destination)
    return target


def missing_libraries() -> list[str]:
    """What the wheel's tritonserver and this interpreter's stub link against and can't find (ldd), e.g. a base
    image without libpython's shared library; an image build runs this to fail then rather than at start."""
    sources = backend_sources()
    missing = []
    for binary in (pytriton_root() / "bin" / "tritonserver", sources["python/triton_python_backend_stub"],
                   sources["python/libtriton_python.so"]):
        listing = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, env=triton_environment(),
                                 check=False).stdout
        missing += [f"{binary.name}: {line.split()[0]}" for line in listing.splitlines() if "not found" in line]
    return missing


def triton_environment(bundled: bool = True) -> dict[str, str]:
    """The wheel's bundled libraries (for its binary), libpython for the stubs, and this venv's packages for model
    code."""
    env = dict(os.environ)
    libs = [str(pytriton_root().parent.parent / "nvidia_pytriton.libs")] if bundled else []
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in (*libs, sysconfig.get_config_var("LIBDIR") or "", env.get("LD_LIBRARY_PATH", "")) if p)
    # The stub's embedded interpreter ignores PYTHONPATH but finds "python3" on PATH; this venv's python3 first
    # makes it start inside the venv (pyvenv.cfg), with the venv's numpy < 2 and the project's editable install.
    env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
    env.setdefault("OMP_NUM_THREADS", "1")  # thread counts come from the model configs, not from OpenMP's default
    return env


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_orphaned_shared_memory() -> None:
    """Remove the regions of servers whose launching process is gone (it was killed before it could clean up)."""
    for region in SHARED_MEMORY.glob(f"{SHM_PREFIX}-*"):
        pid = region.name.removeprefix(f"{SHM_PREFIX}-").split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            with contextlib.suppress(OSError):
                region.unlink()


def check_port_free(address: str, port: int, what: str) -> None:
    """LaunchError naming the port if something already listens there: found in a millisecond instead of after
    Triton has loaded every model (it binds its ports last) or deep in its log."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is no conflict
        try:
            probe.bind((address, port))
        except OSError as exc:
            raise LaunchError(f"cannot use {address}:{port} for {what}: {exc.strerror or exc}") from None


def _die_with_parent() -> None:
    """Linux: SIGKILL Triton if the process that started it dies without stopping it (no orphaned servers)."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class TritonServer:
    """One tritonserver process; a context manager that is ready on entry and stopped on exit."""

    def __init__(self, repository: Path, http_port: int = 8000, grpc_port: int = 8001, metrics_port: int = 8002,
                 address: str = "127.0.0.1", log_path: Path | None = None, ready_timeout: float = 180.0,
                 key: str | None = None, heal: bool = True,
                 report: Callable[[str], None] | None = None, binary: Path | None = None,
                 backend_dir: Path | None = None, step_timeout_s: float | None = None,
                 response_cache_mb: float = 0.0, tracing: TraceExport | None = None,
                 load_threads: int = DEFAULT_LOAD_THREADS) -> None:
        """``binary`` and ``backend_dir``: an installed Triton (NVIDIA's container) instead of the wheel's;
        ``step_timeout_s``: how long a Python-backend instance may hold one request (server/step_watch.py);
        ``response_cache_mb``: Triton's response cache (off here; the CLIs turn it on, see add_server_arguments);
        ``tracing``: Triton's OpenTelemetry mode (server/telemetry.py; off when None); ``load_threads``: models
        loaded at once."""
        self.repository = Path(repository).resolve()
        self.binary, self.backend_dir = binary, backend_dir
        self.address, self.http_port, self.grpc_port, self.metrics_port = address, http_port, grpc_port, metrics_port
        self.log_path = log_path
        self.ready_timeout = ready_timeout
        self.key = key
        self.heal = heal
        self.step_timeout_s = step_timeout_s
        self.response_cache_mb = response_cache_mb
        self.tracing = tracing
        self.load_threads = load_threads
        self.report = report or (lambda line: print(line, file=sys.stderr, flush=True))
        self.models: list[str] | None = None  # what a start loads: the folders at the first, then remember_loaded
        self.healer: StubHealer | None = None
        self.process: subprocess.Popen | None = None
        self._log_file = None
        self.shm_prefix = f"{SHM_PREFIX}-{os.getpid()}-{uuid.uuid4().hex[:8]}-"

    @property
    def http_url(self) -> str:
        return f"{self.address}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.address}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"{self.address}:{self.metrics_port}"

    def command(self, backend_dir: Path) -> list[str]:
        binary = self.binary or pytriton_root() / "bin" / "tritonserver"
        if not binary.exists():
            raise LaunchError(f"tritonserver binary not found at {binary}" + ("" if self.binary else
                                                                              "; reinstall nvidia-pytriton"))
        return [
            str(binary),
            f"--model-repository={self.repository}",
            f"--backend-directory={backend_dir}",
            f"--http-address={self.address}", f"--http-port={self.http_port}",
            f"--grpc-address={self.address}", f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.address}", f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false", "--allow-cpu-metrics=true",
            "--exit-on-error=true", "--strict-readiness=true", "--log-verbose=0",
            "--model-control-mode=explicit", *(f"--load-model={name}" for name in self.models or ()),
            f"--model-load-thread-count={self.load_threads}",
            *(restriction_flags(self.key) if self.key else ()),
            # small regions at load (a container's /dev/shm is small), grown in steps for large requests
            f"--backend-config=python,shm-default-byte-size={REGION_BYTES}",
            f"--backend-config=python,shm-growth-byte-size={GROWTH_BYTES}",
            # every Python-based backend (the project's onnxruntime one too) takes the Python backend's settings
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            *self.cache_flags(),
            *(self.tracing.triton_flags() if self.tracing else ()),
        ]

    def cache_flags(self) -> list[str]:
        """Triton's `local` response cache for the models whose configs enable it (the pipelines: their answers
        are deterministic); it lives in Triton's memory, so a restart empties it."""
        if not self.response_cache_mb:
            return []
        flags = [f"--cache-config=local,size={int(self.response_cache_mb * MIB)}"]
        if self.binary is None:  # the wheel keeps its cache library beside its binary; NVIDIA's image in the default
            flags.append(f"--cache-directory={pytriton_root() / 'caches'}")
        return flags

    def repository_models(self) -> list[str]:
        """The model folders of the repository (each with its config.pbtxt), as they are now."""
        return sorted(p.parent.name for p in self.repository.glob("*/config.pbtxt"))

    def remember_loaded(self) -> list[str]:
        """Make what Triton serves now part of what a restart loads: a model loaded since through the model-control
        API (`server.repository --apply`) comes back after a crash, one whose folder is gone no longer makes the
        restart fail, and a folder nobody loaded stays unloaded. Returns the models added; none while Triton does
        not answer."""
        if self.models is None:
            return []
        try:
            index = keyed_request(self.http_url, "/v2/repository/index", self.key, {"ready": True}, 2.0)
        except OSError:
            return []
        ready = {model["name"] for model in index if model.get("state") == "READY"}
        remembered = sorted((set(self.models) | ready) & set(self.repository_models()))
        added = sorted(set(remembered) - set(self.models))
        self.models = remembered
        return added

    def shared_memory_regions(self) -> list[Path]:
        """This server's regions in /dev/shm: one per Python-backend model instance while it runs."""
        return sorted(SHARED_MEMORY.glob(f"{self.shm_prefix}*"))

    def _release_shared_memory(self) -> None:
        """After the process has exited: what a clean shutdown removes itself, a killed or crashed one leaves."""
        for region in self.shared_memory_regions():
            with contextlib.suppress(OSError):
                region.unlink()

    def start(self) -> TritonServer:
        if not self.repository.is_dir():
            raise LaunchError(f"model repository {self.repository} does not exist; run `make repository`")
        if self.models is None:
            self.models = self.repository_models()
        try:
            check_capacity(python_instances(self.repository, () if self.binary else ("onnxruntime_onnx",)))
        except SharedMemoryTooSmall as exc:
            raise LaunchError(str(exc)) from None
        backend_dir = self.backend_dir or assemble_backends(PROJECT_ROOT / "build" / "triton_backends")
        for port, what in ((self.http_port, "Triton's HTTP endpoint"), (self.grpc_port, "Triton's gRPC endpoint"),
                           (self.metrics_port, "Triton's metrics")):
            check_port_free(self.address, port, what)
        sweep_orphaned_shared_memory()
        if self.log_path is None:
            handle, name = tempfile.mkstemp(prefix="tritonserver-", suffix=".log")
            os.close(handle)
            self.log_path = Path(name)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        try:
            env = {**triton_environment(self.binary is None), PREFIX_ENV: self.shm_prefix}
            if self.step_timeout_s:
                env[TIMEOUT_ENV] = f"{self.step_timeout_s:g}"
            self.process = subprocess.Popen(self.command(backend_dir), env=env,
                                            stdout=self._log_file, stderr=subprocess.STDOUT, start_new_session=True,
                                            preexec_fn=_die_with_parent)
            self._wait_ready()
        except BaseException:  # not ready, or Ctrl-C meanwhile: nothing half-started stays behind
            self.kill()
            raise
        if self.heal:
            process = self.process
            self.healer = StubHealer(self.shm_prefix, self.http_url, self.key, report=self.report,
                                     alive=lambda: process.poll() is None).start()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        url = f"http://{self.http_url}/v2/health/ready"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:  # start() cleans up after any failure here
                raise LaunchError(f"tritonserver exited with status {self.process.returncode} before it was ready:\n"
                                  + (self.load_failures() or self.log_tail()))
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.25)
        raise LaunchError(f"tritonserver was not ready within {self.ready_timeout:.0f} s:\n" + self.log_tail())

    def load_failures(self) -> str:
        """Triton's one-line reasons for each model that failed to load, without its tables and tracebacks."""
        if not self.log_path or not self.log_path.exists():
            return ""
        found = re.findall(r"\"(failed to load '[^']+' version \d+: .*?)(?:\\n|\"$)",
                           self.log_path.read_text(errors="replace"), flags=re.MULTILINE)
        return "\n".join(dict.fromkeys(found))

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM lets Triton finish in-flight requests and unload models; SIGKILL if it hangs."""
        self._stop_healer()  # unloading ends every stub: nothing to heal
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._finish()

    def kill(self) -> None:
        self._stop_healer()
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)  # the stubs are in its process group too
            self.process.wait()
        self._finish()

    def _finish(self) -> None:
        """Once Triton has exited: its stubs too (a killed server can leave them blocked on a lock, holding memory;
        they are in its process group), then their shared-memory regions."""
        self._stop_healer()
        if self.process and self.process.poll() is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self._release_shared_memory()
        self._close_log()

    def _stop_healer(self) -> None:
        if self.healer:
            self.healer.stop()
            self.healer = None

    def _close_log(self) -> None:
        if self._log_file:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def add_server_arguments(parser: argparse.ArgumentParser, default_log: Path | None = None) -> None:
    """The flags of every command that starts Triton (this launcher, `server.serve`)."""
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--triton-address", default="127.0.0.1",
                        help="Triton's bind address (default loopback; any other needs an access key)")
    parser.add_argument("--triton-key-file", type=Path,
                        help=f"Triton's access key (else ${KEY_ENV} or ${KEY_FILE_ENV}; on loopback without one, "
                             "a new key is written to triton-<http port>.key beside --log, else in build/)")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--log", type=Path, default=default_log, help="Triton's log file")
    parser.add_argument("--tritonserver", type=Path, default=os.environ.get("VGG_TRITONSERVER") or None,
                        help="an installed tritonserver binary (default: the nvidia-pytriton wheel's; env "
                             "VGG_TRITONSERVER)")
    parser.add_argument("--hang-after-s", type=float, default=HANG_AFTER_S,
                        help=f"a Triton (or gateway) whose health endpoint has not answered for this long is hung: "
                             f"killed, then restarted (server.serve) or exited with status 1 for the container's "
                             f"restart policy (this launcher); default {HANG_AFTER_S:g}, 0: never")
    parser.add_argument("--response-cache-mb", type=float, default=DEFAULT_RESPONSE_CACHE_MB,
                        help=f"Triton's response cache for the pipelines, in MB (default "
                             f"{DEFAULT_RESPONSE_CACHE_MB:g}; 0: off)")
    parser.add_argument("--stall-after-s", type=float, default=DEFAULT_STALL_AFTER_S,
                        help=f"Triton counts as hung too when requests have been pending this long with none "
                             f"completing (its metrics; default {DEFAULT_STALL_AFTER_S:g}, 0: never)")
    parser.add_argument("--step-timeout-s", type=float, default=None,
                        help=f"a Python-backend instance holding one request longer is replaced (default "
                             f"{DEFAULT_STEP_TIMEOUT_S:g}; a model's `{TIMEOUT_PARAMETER}` parameter wins)")
    parser.add_argument("--backend-directory", type=Path, default=os.environ.get("VGG_TRITON_BACKENDS") or None,
                        help="its backends folder, e.g. /opt/tritonserver/backends (env VGG_TRITON_BACKENDS)")
    parser.add_argument("--model-load-threads", type=int, default=DEFAULT_LOAD_THREADS,
                        help=f"models Triton loads at once (default {DEFAULT_LOAD_THREADS}; Triton's own is 4): a "
                             "load mostly waits on a stub process starting, so more than the cores pay off")


def triton_probe(server: TritonServer, stall_after_s: float) -> Callable[[], bool]:
    """Triton answers: its health endpoint within 2 s, and (unless ``stall_after_s`` is 0) its core completes
    pending requests (server/triton_progress.py)."""
    live = answers(f"http://{server.http_url}/v2/health/live")
    progress = Progress(server.metrics_url, stall_after_s) if stall_after_s > 0 else None
    return lambda: live() and (progress is None or progress())


def access_key(args: argparse.Namespace) -> tuple[str, Path | None]:
    """(key, file it was written to or None): the configured key, or a new one where Triton binds loopback.

    A Triton reachable from other machines must be given its key on purpose: an exposed Triton whose key sits in
    a file nobody distributed would be locked to its legitimate clients too, or tempt them to turn the lock off.
    """
    try:
        key = read_key(args.triton_key_file)
    except AccessKeyError as exc:
        raise LaunchError(str(exc)) from None
    if key is not None:
        return key, None
    if not is_loopback(args.triton_address):
        raise LaunchError(f"refusing --triton-address {args.triton_address}: exposing Triton needs its access key "
                          f"(--triton-key-file, ${KEY_ENV} or ${KEY_FILE_ENV})")
    key = new_key()
    folder = args.log.parent if args.log else PROJECT_ROOT / "build"  # where the service keeps its run-time files
    return key, write_key_file(folder / f"triton-{args.http_port}.key", key)


def run_with_key(args: argparse.Namespace, program: str,
                 run: Callable[[argparse.Namespace, str, Path | None], int]) -> int:
    """``run(args, key, key_file)`` with the access key the flags ask for (exit status 2 when they can't have it);
    a generated key's file lives exactly as long as the run: the key dies with its Triton."""
    try:
        key, key_file = access_key(args)
    except LaunchError as exc:  # a usage error: the key or the address asked for
        print(f"{program}: error: {exc}", file=sys.stderr)
        return 2
    try:
        return run(args, key, key_file)
    finally:
        if key_file is not None:
            key_file.unlink(missing_ok=True)


def server_from_args(args: argparse.Namespace, key: str | None,
                     environ: Mapping[str, str] | None = None) -> TritonServer:
    """The server the flags describe, tracing as ``environ``'s (default os.environ's) OTEL_* variables say;
    LaunchError when they can't be honoured."""
    try:
        tracing = trace_export(os.environ if environ is None else environ, TRITON_SERVICE)
    except TelemetryConfigError as exc:
        raise LaunchError(str(exc)) from None
    return TritonServer(args.repository, args.http_port, args.grpc_port, args.metrics_port, args.triton_address,
                        args.log, key=key, binary=args.tritonserver, backend_dir=args.backend_directory,
                        step_timeout_s=args.step_timeout_s, response_cache_mb=args.response_cache_mb,
                        tracing=tracing, load_threads=args.model_load_threads)


class StopRequest:
    """Set by SIGINT or SIGTERM, so a foreground command can shut its children down in order."""

    def __init__(self) -> None:
        self.requested = False
        signal.signal(signal.SIGINT, self._set)
        signal.signal(signal.SIGTERM, self._set)

    def _set(self, _signum: int, _frame: object) -> None:
        self.requested = True


def start_reporting(server: TritonServer, program: str, key_file: Path | None = None) -> bool:
    """Start Triton; on failure print one error and return False."""
    try:
        server.start()
    except LaunchError as exc:
        print(f"{program}: error: {exc}", file=sys.stderr)
        return False
    print(f"Triton ready: HTTP {server.http_url}, gRPC {server.grpc_url}, metrics {server.metrics_url} "
          f"(log: {server.log_path}; access key {'in ' + str(key_file) if key_file else 'as configured'})",
          flush=True)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_server_arguments(parser)
    parser.add_argument("--address", dest="triton_address", default=argparse.SUPPRESS,
                        help="the same as --triton-address")
    parser.add_argument("--assemble-backends", type=Path, metavar="DIR",
                        help="only write the backend folder to DIR (an image bakes it; see --backend-directory)")
    parser.add_argument("--check-libraries", action="store_true",
                        help="only check that tritonserver and the Python stub find every shared library")
    args = parser.parse_args(argv)
    try:
        if args.assemble_backends:
            print(f"backends assembled in {assemble_backends(args.assemble_backends)}")
            return 0
        if args.check_libraries:
            missing = missing_libraries()
            print("; ".join(missing) if missing else "every library found", file=sys.stderr if missing else sys.stdout)
            return 1 if missing else 0
    except LaunchError as exc:
        print(f"triton_launcher: error: {exc}", file=sys.stderr)
        return 1
    return run_with_key(args, "triton_launcher", run)


def run(args: argparse.Namespace, key: str, key_file: Path | None) -> int:
    """Triton alone, unsupervised, until it exits, hangs, or Ctrl-C."""
    try:
        server = server_from_args(args, key)
    except LaunchError as exc:
        print(f"triton_launcher: error: {exc}", file=sys.stderr)
        return 2
    stop = StopRequest()
    if not start_reporting(server, "triton_launcher", key_file):
        return 1
    # Unsupervised on purpose: this is the building block (and what a container's own restart policy runs);
    # `server.serve` is the supervised service. A hung Triton is killed and reported like a dead one, so the
    # container exits and its restart policy brings it back (Docker's HEALTHCHECK alone restarts nothing).
    liveness = Liveness(triton_probe(server, args.stall_after_s)) if args.hang_after_s > 0 else None
    while not stop.requested and server.process.poll() is None:
        if liveness and liveness.silent_s() > args.hang_after_s:
            print(f"triton_launcher: tritonserver has not answered (or completed a pending request) for "
                  f"{liveness.silent_s():.0f} s; killed it", file=sys.stderr)
            server.kill()
            return 1
        time.sleep(0.5)
    server.stop()
    if not stop.requested:
        print(f"triton_launcher: tritonserver exited with status {server.process.returncode}:\n{server.log_tail()}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
