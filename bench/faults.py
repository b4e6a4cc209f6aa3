"""Faults on demand for the fault tests and the soak: a `server.serve` process, its stubs and Triton, and a load.

Everything here acts on one `python -m server.serve` process started by this module: its Triton is the child
called ``tritonserver``, and its stubs are the processes whose shared-memory region names carry the serve
process's pid (server/triton_launcher.py names them so).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.common import free_port
from server.stub_healer import Stub, find_stubs
from server.supervisor import terminate
from server.triton_launcher import SHARED_MEMORY, SHM_PREFIX

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class ServeProcess:
    """``python -m server.serve`` on free loopback ports; its output goes to ``log_path``."""

    def __init__(self, repository: Path, log_path: Path, *flags: str, env: dict[str, str] | None = None) -> None:
        self.ports = {name: free_port() for name in ("http", "grpc", "metrics", "gateway")}
        self.log_path = log_path
        self.command = [sys.executable, "-m", "server.serve", "--repository", str(repository),
                        "--http-port", str(self.ports["http"]), "--grpc-port", str(self.ports["grpc"]),
                        "--metrics-port", str(self.ports["metrics"]), "--gateway-port", str(self.ports["gateway"]),
                        "--log", str(log_path.with_suffix(".triton.log")),
                        "--response-cache-mb", "0",  # a fault must meet the steps, not a cached answer
                        *flags]
        self.env = {**os.environ, **(env or {})}
        self.url = f"http://127.0.0.1:{self.ports['gateway']}"
        self.triton_url = f"127.0.0.1:{self.ports['http']}"
        self.key_file = log_path.parent / f"triton-{self.ports['http']}.key"  # beside Triton's log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, headers: dict[str, str] | None = None, timeout_s: float = 180.0) -> ServeProcess:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        self.process = subprocess.Popen(self.command, cwd=PROJECT_ROOT, env=self.env, stdout=self._log,
                                        stderr=subprocess.STDOUT)
        if not wait_until(lambda: self.ready(headers), timeout_s, give_up=lambda: self.process.poll() is not None):
            raise RuntimeError(f"serve did not become ready:\n{self.output()}")
        return self

    def ready(self, headers: dict[str, str] | None = None) -> bool:
        try:
            return httpx.get(self.url + "/readyz", headers=headers, timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def shm_prefix(self) -> str:
        return f"{SHM_PREFIX}-{self.process.pid}-"

    def stubs(self, model: str | None = None) -> list[Stub]:
        found = find_stubs(self.shm_prefix).values()
        return sorted((s for s in found if model is None or s.model == model), key=lambda s: s.instance)

    def shared_memory(self) -> list[Path]:
        return sorted(SHARED_MEMORY.glob(f"{self.shm_prefix}*"))

    def triton_pid(self) -> int | None:
        return self._child(lambda entry: (entry / "comm").read_text().strip() == "tritonserver")

    def gateway_pid(self) -> int | None:
        return self._child(lambda entry: b"server.gateway" in (entry / "cmdline").read_bytes())

    def _child(self, matches) -> int | None:
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) \
                        == self.process.pid and matches(entry):
                    return int(entry.name)
            except (OSError, ValueError, IndexError):
                continue
        return None

    def stop(self) -> int | None:
        terminate(self.process, 60)
        self._log.close()
        return self.process.returncode if self.process else None


def wait_until(condition, timeout_s: float, interval_s: float = 0.1, give_up=lambda: False) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        if give_up():
            return False
        time.sleep(interval_s)
    return bool(condition())


@dataclass
class Outcome:
    at: float
    status: int  # 0: no HTTP answer
    code: str
    latency_s: float
    bad_input: bool = False  # a corrupt file, whose right answer is a 422
    detail: str = ""  # the error's message, for the answers that were not expected

    @property
    def expected(self) -> bool:
        return self.status == (422 if self.bad_input else 200)


@dataclass
class Load:
    """``clients`` threads classifying ``image`` with ``pipelines`` in turn until stopped (or ``max_s`` passed);
    with ``bad_every`` = n, every n-th request of a client sends a truncated file instead."""

    url: str
    image: bytes
    pipelines: Sequence[str]
    clients: int = 4
    headers: dict[str, str] = field(default_factory=dict)
    max_s: float = 900.0
    bad_every: int = 0
    outcomes: list[Outcome] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(self.clients)]

    def start(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> list[Outcome]:
        self._stop.set()
        for thread in self._threads:
            thread.join(120)
        return self.outcomes

    def _run(self, index: int) -> None:
        deadline = time.monotonic() + self.max_s
        with httpx.Client(base_url=self.url, headers=self.headers, timeout=60) as client:
            turn = index
            while not self._stop.is_set() and time.monotonic() < deadline:
                pipeline = self.pipelines[turn % len(self.pipelines)]
                turn += 1
                bad = bool(self.bad_every) and turn % self.bad_every == 0
                started = time.monotonic()
                try:
                    response = client.post("/v1/classify", params={"pipeline": pipeline, "top_k": 1},
                                           content=self.image[:200] if bad else self.image,
                                           headers={"content-type": "image/jpeg"})
                    error = {} if response.status_code == 200 else response.json()["error"]
                    code, detail = error.get("code", "ok"), error.get("message", "")
                    status = response.status_code
                    if status == 503:  # as a polite client does
                        time.sleep(min(1.0, float(response.headers.get("retry-after", 0))))
                except (httpx.HTTPError, ValueError, KeyError) as exc:
                    status, code, detail = 0, type(exc).__name__, str(exc)
                    time.sleep(0.05)  # the gateway itself is down: don't spin
                self.outcomes.append(Outcome(started, status, code, time.monotonic() - started, bad,
                                             "" if status == (422 if bad else 200) else detail))

    def between(self, start: float, end: float = float("inf")) -> list[Outcome]:
        return [o for o in list(self.outcomes) if start <= o.at < end]

    @staticmethod
    def statuses(outcomes: Sequence[Outcome]) -> Counter:
        return Counter(f"{o.status} {o.code}" for o in outcomes)
