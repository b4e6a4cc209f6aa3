"""Batch scoring on Ray Data against the plain client, side by side in one run, and where each one's time goes.

    python -m bench.ray_score [--pipeline fast] [--images 300] [--concurrency 8] [--rounds 2]

Serves pipelines.toml (the demo nets) with Triton and the gateway on loopback and scores one folder of JPEGs,
alternating in each round: the plain `python -m client score` and `python -m client score --ray` (a new local Ray
cluster, as a user runs it), both end to end as subprocesses; then, inside this process, `Client.score` and a
RayJob already connected to a cluster, for several actors x per-actor concurrency, with the actor pool's
start-up (time to the first row) split from its steady rate. For every run it records the CPU seconds per image
spent by Triton, the gateway, the scoring client and Ray's own processes (raylet, GCS, workers), read from /proc:
on a small machine every CPU second the client side spends is one Triton does not get.
Writes bench/results/ray.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from bench.common import free_port, machine, photo_jpeg, publish, start_gateway
from client.errors import ClientError
from client.output import result_row
from client.ray_score import ACTOR_CPUS, BATCHES_PER_THREAD, RayJob, Scorer, ScoringSettings, result_from_row
from client.results import ScoreResult

ROOT = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")


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


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU of these processes so far (not their children's: those are counted where they run)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS


@dataclass
class Groups:
    """The processes whose CPU is charged separately: Triton's tree, the gateway, this process and its subprocess
    clients (the scoring side), and every other descendant of this process (Ray's)."""

    triton: int
    gateway: int
    names: tuple[str, ...] = ("triton", "gateway", "client", "ray")

    def sample(self, client_pids: Iterable[int] = ()) -> dict[str, float]:
        tree = _children()
        triton = descendants(self.triton, tree)
        gateway = descendants(self.gateway, tree)
        clients = {os.getpid(), *client_pids}
        ray = descendants(os.getpid(), tree) - triton - gateway - clients
        return {"triton": cpu_seconds(triton), "gateway": cpu_seconds(gateway), "client": cpu_seconds(clients),
                "ray": cpu_seconds(ray)}


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


def measure_subprocess(groups: Groups, run: Run, command: list[str], images: int) -> None:
    """One CLI job end to end; its own CPU (and its Ray cluster's) is read from /proc while it is alive."""
    before = groups.sample()
    started = time.perf_counter()
    job = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    last: dict[str, float] = {}
    while job.poll() is None:  # the job's processes are gone once it exits: keep the last reading
        last = groups.sample({job.pid})
        time.sleep(0.2)
    elapsed = time.perf_counter() - started
    stderr = job.stderr.read() if job.stderr else ""
    if job.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {job.returncode}: {stderr.strip()[-500:]}")
    after = groups.sample()
    run.rates.append(images / elapsed)
    run.cpu.append({"triton": after["triton"] - before["triton"], "gateway": after["gateway"] - before["gateway"],
                    "client": last.get("client", 0.0) - before["client"], "ray": last.get("ray", 0.0)})


def measure_stream(groups: Groups, run: Run, results: Callable[[], Iterable[object]], images: int) -> None:
    """A scoring iterator inside this process: rate overall, time to the first result, rate after it."""
    before = groups.sample()
    started = time.perf_counter()
    first = None
    count = failed = 0
    for result in results():
        count += 1
        failed += 0 if result.ok else 1  # type: ignore[attr-defined]
        if first is None:
            first = time.perf_counter()
    end = time.perf_counter()
    after = groups.sample()
    if count != images:
        raise RuntimeError(f"{run.what}: {count} results for {images} images")
    run.failed += failed
    run.rates.append(images / (end - started))
    run.startups.append((first or end) - started)
    run.steady.append((images - 1) / max(end - (first or end), 1e-9))
    run.cpu.append({name: after[name] - before[name] for name in groups.names})


class BytesScorer(Scorer):
    """The design not taken, measured: Ray Data reads the files (read_binary_files) and the image bytes travel to
    the actors through the object store."""

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[str]]:
        results = self.pool.map(self.classify_bytes, list(batch["path"]), list(batch["bytes"]))
        return {"row": [json.dumps(result_row(result), sort_keys=True) for result in results]}

    def classify_bytes(self, path: str, data: bytes) -> ScoreResult:
        try:
            classification = self.client.classify(data, self.settings.top_k, self.settings.pipeline)
        except ClientError as exc:
            return ScoreResult(path, error=exc)
        return ScoreResult(path, classification=classification)


def score_bytes_through_ray(job: RayJob, folder: Path, settings: ScoringSettings, images: int) -> Iterator[ScoreResult]:
    import ray

    rows_per_block = settings.concurrency * BATCHES_PER_THREAD
    dataset = ray.data.read_binary_files(str(folder), include_paths=True,
                                         override_num_blocks=math.ceil(images / rows_per_block))
    scored = dataset.map_batches(BytesScorer, fn_constructor_args=(settings,), batch_size=rows_per_block,
                                 compute=job.pool(), num_cpus=ACTOR_CPUS)
    for batch in scored.iter_batches(batch_size=None, batch_format="pyarrow"):
        for row in batch.column("row").to_pylist():
            yield result_from_row(json.loads(row))


def report(args: argparse.Namespace, runs: list[Run], init_s: list[float]) -> str:
    reference = {"end to end": runs[0].median(runs[0].rates), "in process": runs[2].median(runs[2].rates)}
    lines = [f"# Ray Data batch scoring vs the plain client, {datetime.date.today().isoformat()}", "",
             f"Machine: {machine()}. Pipeline `{args.pipeline}` of pipelines.toml (demo nets) on Triton + gateway "
             f"over loopback, {args.images} copies of a 500x333 JPEG, {args.rounds} rounds alternating every "
             "variant (medians shown); Ray 2.60 single-node, actors of 0.25 CPU. CPU columns: CPU seconds per 1000 "
             "images, from /proc, of Triton (with its Python stubs), the gateway, the scoring client (the CLI, the "
             "Ray driver, or this process) and Ray's own processes (raylet, GCS, actor workers).", "",
             "| variant | images/s | vs plain | start-up s | steady images/s | Triton | gateway | client | Ray |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for index, run in enumerate(runs):
        base = reference["end to end" if index < 2 else "in process"]
        rate = run.median(run.rates)
        cpu = {name: statistics.median(c[name] for c in run.cpu) * 1000 / args.images
               for name in ("triton", "gateway", "client", "ray")}
        startup = f"{run.median(run.startups):.2f}" if run.startups else ""
        steady = f"{run.median(run.steady):.1f}" if run.steady else ""
        lines.append(f"| {run.what} | {rate:.1f} | {rate / base:.2f}x | {startup} | {steady} | {cpu['triton']:.1f} "
                     f"| {cpu['gateway']:.1f} | {cpu['client']:.1f} | {cpu['ray']:.1f} |")
    lines += ["", f"`ray.init` of a new single-node cluster in this process: {statistics.median(init_s):.2f} s "
              f"(median of {len(init_s)}). End-to-end rows include interpreter start, the service check, and for "
              "`--ray` the cluster's start and stop; in-process rows start at the first request (Ray: at "
              "`map_batches`, so the actor pool's start is in them and shown as start-up)."]
    failed = sum(run.failed for run in runs)
    if failed:
        lines.append(f"\nFailed images: {failed}.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", default="fast")
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight, plain and Ray alike")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ray.md")
    args = parser.parse_args(argv)

    import ray

    from client import Client
    from server.pipeline_spec import load_spec
    from server.repository import generate
    from server.triton_launcher import TritonServer

    image = photo_jpeg((500, 333))
    c = args.concurrency
    # (label, actors, requests in flight per actor, blocks at once per actor, bytes through the object store)
    variants = [(f"1 actor x {c}", 1, c, 2, False), (f"1 actor x {c}, one block at a time", 1, c, 1, False),
                (f"2 actors x {max(1, c // 2)}", 2, max(1, c // 2), 2, False), (f"{c} actors x 1", c, 1, 2, False),
                (f"1 actor x {c}, bytes read by Ray Data (read_binary_files)", 1, c, 2, True)]
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        generate(load_spec(ROOT / "pipelines.toml"), folder / "repository")
        images = folder / "images"
        images.mkdir()
        for index in range(args.images):
            (images / f"{index:05d}.jpg").write_bytes(image)
        with TritonServer(folder / "repository", free_port(), free_port(), free_port(),
                          log_path=folder / "triton.log") as triton:
            gateway, url = start_gateway(triton.http_url)
            try:
                assert triton.process is not None
                groups = Groups(triton.process.pid, gateway.pid)
                cli = [sys.executable, "-m", "client", "--url", url, "score", str(images), "--pipeline",
                       args.pipeline, "--concurrency", str(c), "--overwrite", "--no-progress", "-o"]
                runs = [Run(f"`client score`, CLI, concurrency {c}"),
                        Run(f"`client score --ray`, CLI, new local cluster, 1 actor x {c}"),
                        Run(f"`Client.score`, in process, concurrency {c}")]
                runs += [Run(f"RayJob, running cluster, {label}") for label, *_ in variants]
                init_s: list[float] = []
                with Client(url) as client:
                    list(client.score(images, concurrency=c, pipeline=args.pipeline))  # warm-up
                    for round_ in range(args.rounds):
                        measure_subprocess(groups, runs[0], [*cli, str(folder / "plain.csv")], args.images)
                        measure_subprocess(groups, runs[1], [*cli, str(folder / "ray.csv"), "--ray"], args.images)
                        measure_stream(groups, runs[2], lambda: client.score(images, concurrency=c,
                                                                               pipeline=args.pipeline), args.images)
                        started = time.perf_counter()
                        job = RayJob()
                        init_s.append(time.perf_counter() - started)
                        logging.getLogger("ray").setLevel(logging.WARNING)
                        sources = sorted(str(p) for p in images.iterdir())
                        try:
                            for run, (_, actors, per_actor, calls, as_bytes) in zip(runs[3:], variants, strict=True):
                                job.actors, job.calls_per_actor = actors, calls
                                settings = ScoringSettings(url, None, 60.0, None, 5, args.pipeline, per_actor)
                                scoring = (partial(score_bytes_through_ray, job, images, settings, args.images)
                                           if as_bytes else partial(job.score, sources, settings))
                                measure_stream(groups, run, scoring, args.images)
                        finally:
                            job.close()
                        print(f"round {round_ + 1}: " + ", ".join(f"{r.rates[-1]:.0f}" for r in runs), flush=True)
                assert not ray.is_initialized()
            finally:
                gateway.terminate()
                gateway.wait(30)
    publish(report(args, runs, init_s), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
