"""Bring back a model whose Python-backend stub died or froze, through Triton's model-control API.

Every Python-backend model instance (the pipelines' preprocess and fuse steps, and each ONNX member served by the
project's Python-based onnxruntime backend) runs in a stub process. Triton 2.51 notices a dead or frozen stub only
as "Stub process '<instance>' is not healthy" on each request that reaches it, and never replaces it: a pipeline
with one broken instance fails a share of its requests for good while reporting ready. Triton does replace every
instance of a model when the model is loaded again, so the healer watches the stubs of its server and reloads the
model of any stub that has exited or been stopped.

Triton skips a load whose configuration and files are unchanged, so the reload passes the model's own
configuration with a ``vgg.reloads`` parameter counting the reloads: the same model, new instances. The new
instances start before the old ones are released, so the model's healthy instances keep answering meanwhile.

A stub that is running but stuck (spinning, or waiting on a call that never returns) is found by how long it has
held its current request (server/step_watch.py): past its model's limit, it is killed and its model reloaded the
same way; its requests fail at once ("Stub process ... is not healthy"), which the gateway retries elsewhere.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from server.step_watch import marker_path, read_marker
from server.triton_access import keyed_request

STUB_BINARY = "triton_python_backend_stub"
RELOAD_PARAMETER = "vgg.reloads"
PROC = Path("/proc")
RETIRE_GRACE_S = 10.0  # what a replaced instance gets to finish the requests it holds


def model_of(instance: str) -> str:
    """Triton names instances ``<model>_<group>_<index>``."""
    return instance.rsplit("_", 2)[0]


@dataclass(frozen=True)
class Stub:
    """One stub process: ``state`` is the kernel's one-letter process state (Z: exited, T: stopped)."""

    pid: int
    instance: str
    state: str

    @property
    def model(self) -> str:
        return model_of(self.instance)


def find_stubs(shm_prefix: str) -> dict[int, Stub]:
    """The stubs of the one server whose shared-memory regions start with ``shm_prefix``, by pid."""
    found: dict[int, Stub] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if len(argv) < 9 or not argv[0].endswith(STUB_BINARY.encode()) \
                    or not argv[2].decode(errors="replace").startswith(shm_prefix):
                continue
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue  # exited while being read
        found[int(entry.name)] = Stub(int(entry.name), argv[8].decode(errors="replace"), state)
    return found


@dataclass
class Heal:
    """One broken model and its repair: ``healed_s`` is None until the reload succeeded."""

    model: str
    reason: str
    detected_at: float
    healed_s: float | None = None


class StubHealer:
    """A background thread that watches one Triton server's stubs and reloads the model of a broken one.

    ``expected`` maps each instance to the pid of its current stub; a stub that exited (gone, or a zombie) or has
    been stopped (SIGSTOP, a debugger) for two scans in a row breaks its model. A stopped stub is killed first, so
    the requests it holds fail at once instead of at their timeout, and no frozen process is left behind.
    """

    def __init__(self, shm_prefix: str, http_url: str, key: str | None, alive: Callable[[], bool],
                 report: Callable[[str], None], interval_s: float = 0.25, reload_timeout_s: float = 120.0) -> None:
        self.shm_prefix, self.http_url, self.key = shm_prefix, http_url, key
        self.alive, self.report = alive, report
        self.interval_s, self.reload_timeout_s = interval_s, reload_timeout_s
        self.expected: dict[str, int] = {}
        self.heals: list[Heal] = []
        self.broken: dict[str, Heal] = {}  # model -> its heal in progress
        self._stopped_once: set[int] = set()
        self._retired: dict[int, float] = {}  # stubs of replaced instances -> when to kill them if still there
        self._reloads = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> StubHealer:
        self.expected = {stub.instance: pid for pid, stub in find_stubs(self.shm_prefix).items()}
        self._thread = threading.Thread(target=self._run, name="stub-healer", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread and self._thread is not threading.current_thread():
            self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s) and self.alive():
            try:
                self.scan()
            except Exception as exc:  # the watch must outlive any one failure
                self.report(f"stub healer: scan failed: {exc}")

    def scan(self) -> None:
        stubs = find_stubs(self.shm_prefix)
        for instance, pid in self.expected.items():
            stub = stubs.get(pid)
            model = model_of(instance)
            if model in self.broken:
                continue
            if stub is None or stub.state in "ZX":
                self._forget_marker(pid)
                self._broken(model, f"stub {instance} (pid {pid}) exited")
            elif (held := read_marker(self.shm_prefix, pid)) and held[0] > held[1]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                self._forget_marker(pid)
                self._broken(model, f"stub {instance} (pid {pid}) held a request for {held[0]:.0f} s, past its "
                                    f"limit of {held[1]:g} s; killed it")
            elif stub.state in "Tt":
                if pid in self._stopped_once:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                    self._broken(model, f"stub {instance} (pid {pid}) was stopped; killed it")
                else:
                    self._stopped_once.add(pid)
            else:
                self._stopped_once.discard(pid)
        for model in list(self.broken):
            self._reload(model)
        self._reap(stubs)

    def _reap(self, stubs: dict[int, Stub]) -> None:
        """Triton never releases the replaced instances of a model that had a dead stub: their surviving stubs
        would stay forever, idle, each holding its memory. Once in-flight requests have had time to finish,
        they are killed."""
        now = time.monotonic()
        for pid, deadline in list(self._retired.items()):
            if pid not in stubs or stubs[pid].state in "ZX":
                del self._retired[pid]
            elif now >= deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                self._forget_marker(pid)
                del self._retired[pid]

    def _forget_marker(self, pid: int) -> None:
        with contextlib.suppress(OSError):
            marker_path(self.shm_prefix, pid).unlink()

    def _broken(self, model: str, reason: str) -> None:
        heal = Heal(model, reason, time.monotonic())
        self.broken[model] = heal
        self.heals.append(heal)
        self.report(f"stub healer: {model}: {reason}; reloading the model")

    def _reload(self, model: str) -> None:
        heal = self.broken[model]
        old = {pid for instance, pid in self.expected.items() if model_of(instance) == model}
        try:
            config = self._request(f"/v2/models/{model}/config")
            config.setdefault("parameters", {})[RELOAD_PARAMETER] = {"string_value": str(self._reloads + 1)}
            self._request(f"/v2/repository/models/{model}/load", {"parameters": {"config": json.dumps(config)}})
        except (OSError, ValueError) as exc:
            self.report(f"stub healer: reloading {model} failed ({exc}); trying again")
            return
        self._reloads += 1
        self._retired.update(dict.fromkeys(old, time.monotonic() + RETIRE_GRACE_S))
        fresh = self._new_instances(model, old)
        for instance in [i for i in self.expected if model_of(i) == model]:
            del self.expected[instance]
        self.expected.update(fresh)
        heal.healed_s = time.monotonic() - heal.detected_at
        del self.broken[model]
        self.report(f"stub healer: {model} reloaded, {len(fresh)} new instance(s), {heal.healed_s:.1f} s after "
                    "the fault was seen")

    def _new_instances(self, model: str, old: set[int]) -> dict[str, int]:
        """The model's stubs that did not exist before the reload (the old ones may take a moment to exit)."""
        return {stub.instance: pid for pid, stub in find_stubs(self.shm_prefix).items()
                if stub.model == model and pid not in old and stub.state not in "ZXTt"}

    def _request(self, path: str, body: dict | None = None) -> dict:
        return keyed_request(self.http_url, path, self.key, body, self.reload_timeout_s)
