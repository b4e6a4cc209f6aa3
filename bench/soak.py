"""A soak with faults: `make serve`'s command under a steady load of photos and corrupt files for minutes, with a
step's stub killed, a stub frozen, Triton killed, Triton frozen and a step stuck in a computation on a schedule, to
show what each fault costs and that nothing grows or is left behind.

    .venv/bin/python -m bench.soak --minutes 10 --clients 8 --faults stub,triton,hang,triton-hang,step-hang

`triton-hang` is a SIGSTOP of tritonserver (alive, answering nothing; the supervisor's probe finds it). `step-hang`
serves bench/spinner beside the pipelines (a copy of the repository) and sends it one request that spins for ever:
its instance is killed past the spinner's 3 s limit and the model reloaded, while the load goes on.

Faults start after a warm-up and come every ``--every`` seconds in turn; the stubs hit rotate over the models
(preprocess and fuse steps, ONNX members). For each fault the report gives the time until the service said it
had recovered (the healer's "reloaded" line, or the supervisor's "is back") and the failed answers (anything but
200 for a photo and 422 for a corrupt file) in its first 10 s, until it recovered, and after. Memory is every
process's resident set after the warm-up and at the end. The report goes to ``--out`` (markdown) and stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import shutil
import signal
import statistics
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.common import machine, photo_jpeg
from bench.faults import Load, Outcome, ServeProcess, wait_until
from server.stub_healer import find_stubs
from server.supervisor import terminate

FAULTS = ("stub", "triton", "hang", "triton-hang", "step-hang")
SPINNER = Path(__file__).resolve().parent / "spinner"
EARLY_S = 10.0  # a fault's first seconds, where a few failed requests are allowed
SETTLE_S = 2.0  # after the service said it recovered: the gateway's probe (every second) has seen it too
RECOVERY_LIMIT_S = 120.0


@dataclass
class Fault:
    """One injected fault and the requests that ended between it and the next one (an answer belongs to the fault
    that was in force when it came back)."""

    kind: str
    target: str
    at: float
    recovered_s: float | None = None
    outcomes: list[Outcome] = field(default_factory=list)

    def failed(self, start_s: float, end_s: float = float("inf")) -> list[Outcome]:
        return [o for o in self.outcomes if not o.expected and start_s <= ended(o) - self.at < end_s]

    def answered(self, start_s: float, end_s: float = float("inf")) -> list[Outcome]:
        return [o for o in self.outcomes if start_s <= ended(o) - self.at < end_s]


def ended(outcome: Outcome) -> float:
    return outcome.at + outcome.latency_s


def resident_mib(serve: ServeProcess) -> dict[str, float]:
    """Every process under serve by a stable name (stubs by instance, so a replaced stub keeps its row)."""
    children: dict[int, list[int]] = {}
    names: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append(int(entry.name))
        names[int(entry.name)] = " ".join(a.decode(errors="replace") for a in argv[:3])
    stubs = {pid: stub.instance for pid, stub in find_stubs(serve.shm_prefix).items()}
    found: dict[str, float] = {}
    todo = [serve.process.pid]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        name = stubs.get(pid) or ("serve" if pid == serve.process.pid else
                                  "gateway" if "server.gateway" in names.get(pid, "") else
                                  "tritonserver" if "tritonserver" in names.get(pid, "") else None)
        if name is None:
            continue
        try:
            rss_kb = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                          if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            continue
        found[name] = found.get(name, 0.0) + rss_kb / 1024
    return found


class Injector:
    """The faults, on the serve process: each returns its target and waits for the service's own word that it
    recovered."""

    def __init__(self, serve: ServeProcess) -> None:
        self.serve = serve
        self._turn = 0

    def inject(self, kind: str) -> Fault:
        if kind in ("triton", "triton-hang"):
            before = self.serve.output().count("tritonserver is back")
            fault = Fault(kind, "tritonserver", time.monotonic())
            os.kill(self.serve.triton_pid(), signal.SIGKILL if kind == "triton" else signal.SIGSTOP)
            done = lambda: self.serve.output().count("tritonserver is back") > before  # noqa: E731
        elif kind == "step-hang":
            line = "stub healer: spinner reloaded"
            before = self.serve.output().count(line)
            fault = Fault(kind, "spinner", time.monotonic())
            threading.Thread(target=self.spin, daemon=True).start()
            done = lambda: self.serve.output().count(line) > before  # noqa: E731
        else:
            models = sorted({stub.model for stub in self.serve.stubs()} - {"spinner"})
            model = models[self._turn % len(models)]
            self._turn += 1
            victim = self.serve.stubs(model)[0]
            line = f"stub healer: {model} reloaded"
            before = self.serve.output().count(line)
            fault = Fault(kind, victim.instance, time.monotonic())
            os.kill(victim.pid, signal.SIGKILL if kind == "stub" else signal.SIGSTOP)
            done = lambda: self.serve.output().count(line) > before  # noqa: E731
        if wait_until(done, RECOVERY_LIMIT_S, interval_s=0.05):
            fault.recovered_s = time.monotonic() - fault.at
        return fault


    def spin(self) -> None:
        """One request the spinner never finishes; its answer is the failure of the killed instance."""
        key = self.serve.key_file.read_text().strip()
        body = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["spin"]}]}
        with contextlib.suppress(httpx.HTTPError):
            httpx.post(f"http://{self.serve.triton_url}/v2/models/spinner/infer", json=body,
                       headers={"vgg-triton-key": key}, timeout=RECOVERY_LIMIT_S)


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def counted(outcomes: list[Outcome]) -> str:
    kinds = ", ".join(f"{kind}: {count}" for kind, count in Load.statuses(outcomes).most_common())
    return f"{len(outcomes)} ({kinds})" if outcomes else "0"


def report(args: argparse.Namespace, outcomes: list[Outcome], faults: list[Fault], memory: tuple[dict, dict],
           pipelines: list[str], leftovers: tuple[int, int], duration_s: float, cold_start_s: float) -> str:
    photos = [o.latency_s * 1000 for o in outcomes if o.status == 200]
    statuses = Counter(f"{o.status} {o.code}" + (" (corrupt file)" if o.bad_input else "") for o in outcomes)
    lines = [
        f"# Soak with faults, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"`python -m bench.soak --minutes {args.minutes:g} --clients {args.clients} --faults {','.join(args.faults)} "
        f"--every {args.every:g}` on `{args.repository}`; pipelines {', '.join(pipelines)}; every "
        f"{args.bad_every}th request a corrupt file. Machine: {machine()}.",
        "",
        f"{len(outcomes)} requests in {duration_s:.0f} s ({len(outcomes) / duration_s:.1f}/s); "
        f"{sum(not o.expected for o in outcomes)} failed. Latency of the 200s: p50 "
        f"{percentile(photos, 50):.0f} ms, p99 {percentile(photos, 99):.0f} ms. Cold start (serve launched to "
        f"ready): {cold_start_s:.1f} s. Clients pause for the Retry-After of a 503 (at most 1 s).",
        "",
        "| answer | requests |",
        "|---|---:|",
        *[f"| {status} | {count} |" for status, count in statuses.most_common()],
        "",
        f"| fault | target | recovered after | answers | failed in the first {EARLY_S:g} s | failed until "
        f"recovered + {SETTLE_S:g} s | failed after that |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for fault in faults:
        recovered_s = fault.recovered_s if fault.recovered_s is not None else float("inf")
        recovered = f"{recovered_s:.1f} s" if fault.recovered_s is not None else \
            f"NOT within {RECOVERY_LIMIT_S:g} s"
        early = f"{len(fault.failed(0, EARLY_S))} of {len(fault.answered(0, EARLY_S))}"
        lines.append(f"| {fault.kind} | {fault.target} | {recovered} | {len(fault.outcomes)} | {early} | "
                     f"{counted(fault.failed(0, recovered_s + SETTLE_S))} | "
                     f"{counted(fault.failed(recovered_s + SETTLE_S))} |")
    unexpected = [(fault, o) for fault in faults for o in fault.outcomes if not o.expected]
    if unexpected:
        late = [(fault, o) for fault, o in unexpected
                if fault.recovered_s is None or ended(o) - fault.at >= fault.recovered_s + SETTLE_S]
        shown = (late + [pair for pair in unexpected if pair not in late])[:20]
        lines += ["", "The failed answers (those after recovery first; at most 20), by when they came back after "
                  "the fault:", ""]
        lines += [f"- {fault.kind} + {ended(o) - fault.at:.1f} s: {o.status} {o.code}: {o.detail[:200]}"
                  for fault, o in shown]
    start, end = memory
    lines += ["", "Resident memory (MiB) after the warm-up and at the end (stubs by instance: a replaced stub keeps "
              "its row; Triton and its stubs restart after a Triton kill):", "",
              "| process | start | end | change |", "|---|---:|---:|---:|"]
    for name in sorted(set(start) | set(end), key=lambda n: (n not in ("serve", "gateway", "tritonserver"), n)):
        before, after = start.get(name, 0.0), end.get(name, 0.0)
        lines.append(f"| {name} | {before:.0f} | {after:.0f} | {after - before:+.0f} |")
    stubs_left, shm_left = leftovers
    lines += ["", f"After the stop: {stubs_left} stub processes and {shm_left} shared-memory regions left behind."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--faults", type=lambda text: [f for f in text.split(",") if f], default=list(FAULTS))
    parser.add_argument("--every", type=float, default=60.0, help="seconds between faults")
    parser.add_argument("--warm-up", type=float, default=30.0, help="seconds of load before the first fault")
    parser.add_argument("--pipelines", type=lambda text: text.split(","), default=None,
                        help="default: every pipeline the gateway lists")
    parser.add_argument("--bad-every", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("bench/results/soak.md"))
    args = parser.parse_args(argv)
    unknown = set(args.faults) - set(FAULTS)
    if unknown or not args.faults:
        parser.error(f"--faults takes a comma-separated list of {', '.join(FAULTS)}; got {','.join(args.faults)}")
    if not (args.repository / "fast").is_dir():
        parser.error(f"{args.repository} holds no pipelines: run `make repository` first")

    log = Path("build/soak/serve.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    log.unlink(missing_ok=True)
    repository = args.repository
    if "step-hang" in args.faults:  # the pipelines as they are, plus the spinner to get stuck in
        repository = log.parent / "repository"
        shutil.rmtree(repository, ignore_errors=True)
        shutil.copytree(args.repository, repository, ignore=shutil.ignore_patterns(".optimized"))
        shutil.copytree(SPINNER, repository / "spinner")
    launched = time.monotonic()
    serve = ServeProcess(repository, log).start()
    cold_start_s = time.monotonic() - launched
    load = None
    try:
        pipelines = args.pipelines or [p["name"] for p in httpx.get(serve.url + "/v1/pipelines").json()["pipelines"]
                                       if p["name"] != "spinner"]
        load = Load(serve.url, photo_jpeg(), pipelines, clients=args.clients, max_s=args.minutes * 60 + 300,
                    bad_every=args.bad_every).start()
        started = time.monotonic()
        end = started + args.minutes * 60
        time.sleep(min(args.warm_up, args.minutes * 60))
        memory_start = resident_mib(serve)
        injector, faults, turn = Injector(serve), [], 0
        while time.monotonic() + args.every / 2 < end:
            fault = injector.inject(args.faults[turn % len(args.faults)])
            turn += 1
            faults.append(fault)
            print(f"soak: {fault.kind} {fault.target}: recovered after "
                  f"{fault.recovered_s if fault.recovered_s is not None else float('nan'):.1f} s", flush=True)
            time.sleep(max(0.0, min(fault.at + args.every, end) - time.monotonic()))
        time.sleep(max(0.0, end - time.monotonic()))
        memory_end = resident_mib(serve)
        outcomes = load.stop()
        duration_s = time.monotonic() - started
    finally:
        if load:
            load.stop()
        terminate(serve.process, 60)
    for i, fault in enumerate(faults):
        until = faults[i + 1].at if i + 1 < len(faults) else float("inf")
        fault.outcomes = [o for o in outcomes if fault.at <= ended(o) < until]
    wait_until(lambda: not serve.stubs() and not serve.shared_memory(), 10)
    text = report(args, outcomes, faults, (memory_start, memory_end), pipelines,
                  (len(serve.stubs()), len(serve.shared_memory())), duration_s, cold_start_s)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
