"""Batch scoring on Ray Data against the plain client, side by side in one run, and where each one's time goes.

    python -m bench.ray_score [--nets demo|full] [--pipeline fast] [--images N] [--concurrency 8] [--rounds 2]

Serves pipelines.toml (`--nets demo`, the demo nets: serving costs milliseconds per image, so the client side's
cost shows most) or a `fast` pipeline of full-size VGG-11 (`--nets full`, random weights, as the nets a batch job
scores with) with Triton and the gateway on loopback and scores one folder of JPEGs,
alternating in each round: the plain `python -m client score` and `python -m client score --ray` (a new local Ray
cluster, as a user runs it), both end to end as subprocesses; then, inside this process, `Client.score` and a
RayJob already connected to a cluster, for several actors x per-actor concurrency, with the actor pool's
start-up (time to the first row) split from its steady rate. For every run it records the CPU seconds per image
spent by Triton, the gateway, the scoring client and Ray's own processes (raylet, GCS, workers), read from /proc:
on a small machine every CPU second the client side spends is one Triton does not get.
Writes bench/results/ray.md (demo) or bench/results/ray_full_size.md (full).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from bench.build import export, random_checkpoints
from bench.common import free_port, machine, photo_jpeg, publish, start_gateway
from client.errors import ClientError
from client.output import result_row
from client.ray_score import ACTOR_CPUS, BATCHES_PER_THREAD, RayJob, Scorer, ScoringSettings
from client.results import ScoreResult

ROOT = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")
IDLE_S = 10


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            tree.setdefault(parent, []).append(int(entry.name))
    return tree


def descendants(root: int, tree: dict[int, list[int]]) -> set[int]:
    found, todo = {root}, [root]
    while todo:
        for child in tree.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def cpu_of(pid: int) -> float | None:
    """User + system CPU seconds of one process so far (its children count where they run)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICKS


GROUPS = ("triton", "gateway", "client", "ray")
NETS = {"demo": "pipelines.toml (demo nets)",
        "full": "full-size VGG-11 (random weights, Q=224, 2 intra-op threads; exported by export/to_onnx.py)"}
DEFAULT_IMAGES = {"demo": 1000, "full": 240}


class CpuMeter:
    """CPU seconds per group over a run: Triton's tree (with its Python stubs), the gateway, the scoring client
    (this process and any CLI job it watches) and every other descendant of this process (Ray's raylet, GCS and
    workers). Sampled per process every 0.5 s, so processes that exit during the run count up to their last
    sample, and processes that live on count only what they spent during it."""

    def __init__(self, triton: int, gateway: int) -> None:
        self.roots = {"triton": triton, "gateway": gateway}
        self.watched: set[int] = set()
        self.first: dict[int, float] = {}
        self.last: dict[int, tuple[str, float]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, pid: int) -> None:
        self.watched.add(pid)

    def sample(self) -> None:
        tree = _children()
        triton = descendants(self.roots["triton"], tree)
        gateway = descendants(self.roots["gateway"], tree)
        clients = {os.getpid(), *self.watched}
        ours = descendants(os.getpid(), tree)
        for group, pids in (("triton", triton), ("gateway", gateway), ("client", clients),
                            ("ray", ours - triton - gateway - clients)):
            for pid in pids:
                cpu = cpu_of(pid)
                if cpu is not None:
                    self.first.setdefault(pid, cpu if self._thread is None else 0.0)
                    self.last[pid] = (group, cpu)

    def __enter__(self) -> CpuMeter:
        self.sample()  # the baseline of every process alive now
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.5):  # each sample reads /proc for every process: not free
            self.sample()

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        self.sample()

    def totals(self) -> dict[str, float]:
        totals = dict.fromkeys(GROUPS, 0.0)
        for pid, (group, cpu) in self.last.items():
            totals[group] += cpu - self.first.get(pid, 0.0)
        return totals


@dataclass
class Run:
    what: str
    rates: list[float] = field(default_factory=list)
    startups: list[float] = field(default_factory=list)
    steady: list[float] = field(default_factory=list)
    cpu: list[dict[str, float]] = field(default_factory=list)
    failed: int = 0

    def median(self, values: list[float]) -> float:
        return statistics.median(values) if values else float("nan")


def measure_subprocess(roots: tuple[int, int], run: Run, command: list[str], images: int) -> None:
    """One CLI job end to end (interpreter start, service check, for --ray the cluster's start or join)."""
    with CpuMeter(*roots) as meter:
        started = time.perf_counter()
        job = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True)
        meter.watch(job.pid)
        _, stderr = job.communicate()
        elapsed = time.perf_counter() - started
    if job.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {job.returncode}: {stderr.strip()[-500:]}")
    run.rates.append(images / elapsed)
    run.cpu.append(meter.totals())


def measure_stream(roots: tuple[int, int], run: Run, rows: Callable[[], Iterable[dict[str, Any]]],
                   images: int) -> None:
    """Rows scored inside this process: the overall rate (call to last row), the start-up (call to the first
    image finished) and the steady rate (images finished between the 10th and the 90th percentile)."""
    finished: list[float] = []
    failed = 0
    with CpuMeter(*roots) as meter:
        started = time.time()
        for row in rows():
            finished.append(row["finished"])
            failed += row["status"] != "ok"
        ended = time.time()
    if len(finished) != images:
        raise RuntimeError(f"{run.what}: {len(finished)} results for {images} images")
    finished.sort()
    low, high = images // 10, images * 9 // 10
    run.failed += failed
    run.rates.append(images / (ended - started))
    run.startups.append(finished[0] - started)
    run.steady.append((high - low) / max(finished[high] - finished[low], 1e-9))
    run.cpu.append(meter.totals())


class TimedScorer(Scorer):
    """The product's actor, with the time each image finished on it: Ray hands rows back a block at a time and in
    bursts, so arrival times at the driver say little about the rate at which the actors are served."""

    def row(self, source: str) -> dict[str, Any]:
        row = super().row(source)
        row["finished"] = time.time()
        return row


class BytesScorer(TimedScorer):
    """The design not taken, measured: Ray Data reads the files (read_binary_files) and the image bytes travel to
    the actors through the object store."""

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[str]]:
        rows = self.pool.map(self.bytes_row, list(batch["path"]), list(batch["bytes"]))
        return {"row": [json.dumps(row, sort_keys=True) for row in rows]}

    def bytes_row(self, path: str, data: bytes) -> dict[str, Any]:
        try:
            result = ScoreResult(path, classification=self.client.classify(data, self.settings.top_k,
                                                                           self.settings.pipeline))
        except ClientError as exc:
            result = ScoreResult(path, error=exc)
        return {**result_row(result), "finished": time.time()}


def bytes_through_ray(job: RayJob, folder: Path, settings: ScoringSettings, images: int) -> Iterator[dict[str, Any]]:
    import ray

    rows_per_block = settings.concurrency * BATCHES_PER_THREAD
    dataset = ray.data.read_binary_files(str(folder), include_paths=True,
                                         override_num_blocks=math.ceil(images / rows_per_block))
    scored = dataset.map_batches(BytesScorer, fn_constructor_args=(settings,), batch_size=rows_per_block,
                                 compute=job.pool(), num_cpus=ACTOR_CPUS)
    for batch in scored.iter_batches(batch_size=None, batch_format="pyarrow"):
        for row in batch.column("row").to_pylist():
            yield json.loads(row)


def plain_rows(client: Any, folder: Path, concurrency: int, pipeline: str) -> Iterator[dict[str, Any]]:
    for result in client.score(folder, concurrency=concurrency, pipeline=pipeline):
        yield {**result_row(result), "finished": time.time()}


def report(args: argparse.Namespace, end_to_end: list[Run], in_process: list[Run], init_s: list[float],
           first_job_s: list[float], idle: list[dict[str, float]]) -> str:
    lines = [f"# Ray Data batch scoring vs the plain client, {datetime.date.today().isoformat()}", "",
             f"Machine: {machine()}. Pipeline `{args.pipeline}` of {NETS[args.nets]} on Triton + gateway "
             f"over loopback, a folder of {args.images} copies of a 500x333 JPEG, {args.rounds} rounds, each running "
             "every variant in turn (medians shown). Ray 2.60, single node, actors of 0.25 CPU. CPU columns: CPU "
             "seconds per 1000 images, from /proc, of Triton (with its Python stubs), the gateway, the scoring client "
             "(the CLI process, or this one: the Ray driver) and Ray's own processes (raylet, GCS, dashboard agent, "
             "actor workers).", ""]
    header = ["| variant | images/s | vs plain |{extra} Triton | gateway | client | Ray |",
              "|---|---:|---:|{extra_rule}---:|---:|---:|---:|"]

    def rows(runs: list[Run], timed: bool) -> list[str]:
        base = runs[0].median(runs[0].rates)
        out = [header[0].format(extra=" start-up s | steady images/s | steady vs plain |" if timed else ""),
               header[1].format(extra_rule="---:|---:|---:|" if timed else "")]
        base_steady = runs[0].median(runs[0].steady) if timed else 0.0
        for run in runs:
            rate = run.median(run.rates)
            cpu = {name: statistics.median(c[name] for c in run.cpu) * 1000 / args.images for name in GROUPS}
            extra = ""
            if timed:
                steady = run.median(run.steady)
                extra = f" {run.median(run.startups):.2f} | {steady:.1f} | {steady / base_steady:.2f}x |"
            out.append(f"| {run.what} | {rate:.1f} | {rate / base:.2f}x |{extra} {cpu['triton']:.1f} "
                       f"| {cpu['gateway']:.1f} | {cpu['client']:.1f} | {cpu['ray']:.1f} |")
        return out

    lines += ["## End to end: the command a user runs", "",
              "From starting `python -m client score` to its exit: interpreter start, the service check, writing "
              "and sorting the CSV, and for `--ray` the start of a new local cluster (and its stop) or joining a "
              "running one.", "", *rows(end_to_end, False), "",
              "## Inside one process: where the time goes", "",
              "From the call to the last result. Start-up: from the call to the first image scored (Ray: planning, "
              "starting the actor workers, importing the client in them). Steady: images/s between the 10th and the "
              "90th percentile of images finished, timed where each was scored (on the actor, for Ray: the driver "
              "gets rows a block at a time and in bursts).", "", *rows(in_process, True), "",
              f"Before these rows, in the same process: `ray.init` of a new single-node cluster took "
              f"{statistics.median(init_s):.2f} s, and the cluster's first job ({4 * args.concurrency} images, not in "
              f"the table) {statistics.median(first_job_s):.2f} s (medians of {len(init_s)}). The cluster idle, "
              f"scoring nothing, for {IDLE_S} s: Ray's processes used "
              f"{100 * statistics.median(i['ray'] for i in idle) / IDLE_S:.1f}% of one core, this process (the "
              f"driver, and the CPU meter's own sampling) "
              f"{100 * statistics.median(i['client'] for i in idle) / IDLE_S:.1f}%."]
    failed = sum(run.failed for run in in_process)
    if failed:
        lines.append(f"\nFailed images: {failed}.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", choices=sorted(NETS), default="demo", help="what Triton serves")
    parser.add_argument("--pipeline", default="fast")
    parser.add_argument("--images", type=int, help="images scored per run (default: 1000 demo, 240 full)")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight, plain and Ray alike")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, help="default: bench/results/ray.md (demo), ray_full_size.md (full)")
    args = parser.parse_args(argv)
    args.images = args.images or DEFAULT_IMAGES[args.nets]
    results = ROOT / "bench" / "results"
    args.out = args.out or (results / "ray.md" if args.nets == "demo" else results / "ray_full_size.md")

    from client import Client
    from server.repository import generate
    from server.spec_file import load_spec
    from server.triton_launcher import TritonServer

    c = args.concurrency
    # (label, actors, requests in flight per actor, blocks at once per actor, bytes through the object store)
    variants = [(f"1 actor x {c}", 1, c, 2, False), (f"1 actor x {c}, one block at a time", 1, c, 1, False),
                (f"2 actors x {max(1, c // 2)}", 2, max(1, c // 2), 2, False), (f"{c} actors x 1", c, 1, 2, False),
                (f"1 actor x {c}, bytes read by Ray Data (read_binary_files)", 1, c, 2, True)]
    if args.nets == "full":  # the designs not taken were measured on the demo nets, where they show most
        variants = variants[:1] + variants[2:3]
    end_to_end = [Run(f"`client score`, concurrency {c}"),
                  Run(f"`client score --ray` (a new local cluster), 1 actor x {c}"),
                  Run(f"`client score --ray --ray-address` (a running cluster), 1 actor x {c}")]
    in_process = [Run(f"`Client.score`, concurrency {c}")]
    in_process += [Run(f"RayJob, {label}") for label, *_ in variants]
    init_s: list[float] = []
    first_job_s: list[float] = []
    idle: list[dict[str, float]] = []
    image = photo_jpeg((500, 333))
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        if args.nets == "full":
            checkpoint = random_checkpoints(folder, {"vgg11": "A"})["vgg11"]
            export(checkpoint, folder / "repository", "vgg11", 2)
            (folder / "spec.toml").write_text(f'[pipelines.{args.pipeline}]\nmembers = ["vgg11"]\nscales = [224]\n')
            generate(load_spec(folder / "spec.toml"), folder / "repository")
        else:
            generate(load_spec(ROOT / "pipelines.toml"), folder / "repository")
        images = folder / "images"
        images.mkdir()
        for index in range(args.images):
            (images / f"{index:05d}.jpg").write_bytes(image)
        sources = sorted(str(p) for p in images.iterdir())
        with TritonServer(folder / "repository", free_port(), free_port(), free_port(),
                          log_path=folder / "triton.log") as triton:
            gateway, url = start_gateway(triton.http_url)
            try:
                assert triton.process is not None
                roots = (triton.process.pid, gateway.pid)
                cli = [sys.executable, "-m", "client", "--url", url, "score", str(images), "--pipeline",
                       args.pipeline, "--concurrency", str(c), "--overwrite", "--no-progress", "-o"]
                with Client(url) as client:
                    list(client.score(images, concurrency=c, pipeline=args.pipeline))  # warm-up
                    for round_ in range(args.rounds):
                        measure_subprocess(roots, end_to_end[0], [*cli, str(folder / "plain.csv")], args.images)
                        measure_subprocess(roots, end_to_end[1], [*cli, str(folder / "ray.csv"), "--ray"],
                                           args.images)
                        measure_stream(roots, in_process[0], partial(plain_rows, client, images, c, args.pipeline),
                                       args.images)
                        started = time.perf_counter()
                        job = RayJob()
                        init_s.append(time.perf_counter() - started)
                        started = time.perf_counter()  # the cluster's first dataset starts Ray Data's own actors
                        warm = ScoringSettings(url, None, 60.0, None, 5, args.pipeline, c)
                        list(job.rows(sources[: 4 * c], warm))
                        first_job_s.append(time.perf_counter() - started)
                        try:
                            for run, (_, actors, per_actor, calls, as_bytes) in zip(in_process[1:], variants,
                                                                                    strict=True):
                                job.actors, job.calls_per_actor = actors, calls
                                settings = ScoringSettings(url, None, 60.0, None, 5, args.pipeline, per_actor)
                                scoring = (partial(bytes_through_ray, job, images, settings, args.images)
                                           if as_bytes else partial(job.rows, sources, settings, TimedScorer))
                                measure_stream(roots, run, scoring, args.images)
                            with CpuMeter(*roots) as meter:  # the cluster alone, scoring nothing
                                time.sleep(IDLE_S)
                            idle.append(meter.totals())
                            address = job.ray.get_runtime_context().gcs_address
                            measure_subprocess(roots, end_to_end[2], [*cli, str(folder / "ray.csv"), "--ray",
                                                                      "--ray-address", address], args.images)
                        finally:
                            job.close()
                        print(f"round {round_ + 1}: " + ", ".join(f"{r.what}: {r.rates[-1]:.0f}"
                                                                  for r in end_to_end + in_process), flush=True)
            finally:
                gateway.terminate()
                gateway.wait(30)
    publish(report(args, end_to_end, in_process, init_s, first_job_s, idle), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
