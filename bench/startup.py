"""What one replica costs to start and to hold: `python -m server.serve` on the default repository, measured for this
tree and, side by side in alternating rounds, for an earlier commit of the project (a git worktree).

    python -m bench.startup [--before 4bc47c6] [--rounds 3] [--out bench/results/startup.md]
    python -m bench.startup --added 4     # what each pipeline added on the served members costs, this tree only

Per tree: seconds from the command to the gateway's first /readyz 200 (the repository already generated, caches warm
after the first round), the Triton restart the supervisor does after a SIGKILL (to ready again), processes, PSS by
process kind (Triton, pipeline steps, members, gateway, serve), /dev/shm in use, and per pipeline the median latency
of the first 10 requests after ready against the steady median; for this tree also a response-cache hit against a
miss. The earlier tree generates its own repository with its own generator (same pipelines.toml).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

from bench.common import append_result, free_port, machine, photo_jpeg

ROOT = Path(__file__).resolve().parent.parent
PIPELINE_PROBE_COUNT = 10
TITLE = "One replica's start-up and memory (python -m bench.startup)"


def stub_kind(argv: str) -> str:
    if "triton_python_backend_stub" not in argv:
        return "triton" if "tritonserver" in argv else "gateway" if "server.gateway" in argv else "serve"
    model = argv.split()[1]
    return "member" if model.endswith(".onnx") else "step"


def processes_of(root: int) -> dict[int, str]:
    """pid -> argv of ``root`` and everything below it."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                table[int(entry.name)] = (parent, (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode())
    found, frontier = {root}, [root]
    while frontier:
        current = frontier.pop()
        children = [pid for pid, (parent, _) in table.items() if parent == current and pid not in found]
        found.update(children)
        frontier += children
    return {pid: table[pid][1] for pid in found if pid in table}


def pss_mb(pid: int) -> float:
    with contextlib.suppress(OSError):
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        return sum(int(v) for v in re.findall(r"^Pss:\s+(\d+)", text, re.M)) / 1024
    return 0.0


def unique_photos(count: int) -> list[bytes]:
    """The same photo with distinct bytes (a JPEG comment), so no response cache answers them."""
    from PIL import Image

    photo = Image.open(io.BytesIO(photo_jpeg((320, 214))))
    out = []
    for index in range(count):
        buffer = io.BytesIO()
        photo.save(buffer, "JPEG", quality=90, comment=f"request {index}".encode())
        out.append(buffer.getvalue())
    return out


def wait_ready(url: str, started: float, timeout: float = 300) -> float:
    while time.monotonic() - started < timeout:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return time.monotonic() - started
        time.sleep(0.05)
    raise RuntimeError(f"{url} not ready within {timeout:.0f} s")


def one_round(tree: Path, repository: Path, measure_cache: bool) -> dict:
    port, http, grpc, metrics = free_port(), free_port(), free_port(), free_port()
    log = ROOT / "build" / "bench-startup" / f"{port}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "server.serve", "--repository", str(repository), "--gateway-port", str(port),
               "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics),
               "--log", str(log)]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    with open(log.with_suffix(".serve"), "wb") as output:
        serve = subprocess.Popen(command, cwd=tree, env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        ready_s = wait_ready(url, started)
        pipelines = [p["name"] for p in httpx.get(url + "/v1/pipelines", timeout=30).json()["pipelines"]]
        photos = iter(unique_photos(len(pipelines) * (PIPELINE_PROBE_COUNT + 20) + 10))
        first, steady = {}, {}
        for pipeline in pipelines:  # the first requests each pipeline ever gets, then steady ones
            times = []
            for _ in range(PIPELINE_PROBE_COUNT + 20):
                sent = time.perf_counter()
                response = httpx.post(f"{url}/v1/classify", params={"pipeline": pipeline}, content=next(photos),
                                      headers={"content-type": "image/jpeg"}, timeout=60)
                times.append((time.perf_counter() - sent) * 1000)
                assert response.status_code == 200, response.text
            first[pipeline] = statistics.median(times[:PIPELINE_PROBE_COUNT])
            steady[pipeline] = statistics.median(times[PIPELINE_PROBE_COUNT:])
        time.sleep(1)
        tree_processes = processes_of(serve.pid)
        by_kind: dict[str, float] = {}
        for pid, argv in tree_processes.items():
            kind = stub_kind(argv)
            by_kind[kind] = by_kind.get(kind, 0.0) + pss_mb(pid)
        shm = sum(f.stat().st_blocks * 512 for f in Path("/dev/shm").glob(f"vgg-serve-triton-{serve.pid}-*")) / 2**20
        cache = None
        if measure_cache:
            photo = next(photos)
            timings = []
            for _ in range(11):
                sent = time.perf_counter()
                httpx.post(f"{url}/v1/classify", params={"pipeline": "fusion"}, content=photo,
                           headers={"content-type": "image/jpeg"}, timeout=60)
                timings.append((time.perf_counter() - sent) * 1000)
            cache = (timings[0], statistics.median(timings[1:]))
        triton = next(pid for pid, argv in tree_processes.items() if stub_kind(argv) == "triton")
        killed = time.monotonic()
        os.kill(triton, signal.SIGKILL)
        while httpx.get(url + "/readyz", timeout=5).status_code == 200 and time.monotonic() - killed < 30:
            time.sleep(0.05)
        restart_s = wait_ready(url, killed)
    finally:
        serve.send_signal(signal.SIGINT)
        serve.wait(60)
    return {"ready_s": ready_s, "restart_s": restart_s, "processes": len(tree_processes), "pss": by_kind,
            "shm_mb": shm, "first": first, "steady": steady, "cache": cache}


def full_size_repository() -> Path:
    """Full-size VGG-16 (random weights, exported by export/to_onnx.py) served as `fast` (Q=224) and `multiscale`
    (Q=256, 384, 512 with flips): the repository of the issue's 15 s goal. Made once, then reused."""
    from bench.build import export, random_checkpoints
    from server.repository import generate
    from server.spec_file import load_spec

    folder = ROOT / "build" / "bench-startup" / "full-size"
    repository = folder / "repository"
    if not (repository / "vgg16" / "1" / "model.onnx").exists():
        folder.mkdir(parents=True, exist_ok=True)
        checkpoint = random_checkpoints(folder, {"vgg16": "D"})["vgg16"]
        export(checkpoint, repository, "vgg16", 2)
        checkpoint.unlink()
    (folder / "spec.toml").write_text('[pipelines.fast]\nmembers = ["vgg16"]\nscales = [224]\n'
                                      '[pipelines.multiscale]\nmembers = ["vgg16"]\nscales = [256, 384, 512]\n'
                                      'flips = true\n')
    generate(load_spec(folder / "spec.toml"), repository)
    return repository


def full_size_round(repository: Path) -> dict:
    """`serve` to ready on the full-size repository, the service's PSS by kind, and one `fast` answer."""
    port, http, grpc, metrics = free_port(), free_port(), free_port(), free_port()
    log = ROOT / "build" / "bench-startup" / f"full-{port}.log"
    started = time.monotonic()
    with open(log.with_suffix(".serve"), "wb") as output:
        serve = subprocess.Popen([sys.executable, "-m", "server.serve", "--repository", str(repository),
                                  "--gateway-port", str(port), "--http-port", str(http), "--grpc-port", str(grpc),
                                  "--metrics-port", str(metrics), "--log", str(log)], cwd=ROOT, stdout=output,
                                 stderr=subprocess.STDOUT)
    try:
        ready_s = wait_ready(f"http://127.0.0.1:{port}", started)
        answer = httpx.post(f"http://127.0.0.1:{port}/v1/classify", params={"pipeline": "fast"},
                            content=photo_jpeg(), headers={"content-type": "image/jpeg"}, timeout=120)
        assert answer.status_code == 200, answer.text
        by_kind: dict[str, float] = {}
        for pid, argv in processes_of(serve.pid).items():
            by_kind[stub_kind(argv)] = by_kind.get(stub_kind(argv), 0.0) + pss_mb(pid)
    finally:
        serve.send_signal(signal.SIGINT)
        serve.wait(60)
    return {"ready_s": ready_s, "pss": by_kind}


def prepare_before(commit: str) -> tuple[Path, Path]:
    """A worktree of ``commit`` and the repository its own generator makes from its pipelines.toml: the members
    too, exported by that tree, since their serving options (threads, arena) are part of what is compared."""
    tree = ROOT / "build" / f"before-{commit}"
    if not tree.exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), commit], cwd=ROOT, check=True,
                       capture_output=True)
    repository = tree / "model_repository"
    subprocess.run([sys.executable, "-m", "server.repository", "--spec", "pipelines.toml", "--repository",
                    str(repository)], cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)}, check=True,
                   capture_output=True)
    return tree, repository


def summary(rows: list[dict]) -> dict:
    median = statistics.median
    kinds = sorted({kind for row in rows for kind in row["pss"]})
    return {
        "ready": median(r["ready_s"] for r in rows), "restart": median(r["restart_s"] for r in rows),
        "processes": median(r["processes"] for r in rows), "shm": median(r["shm_mb"] for r in rows),
        "pss": {kind: median(r["pss"].get(kind, 0.0) for r in rows) for kind in kinds},
        "first_ratio": {p: median(r["first"][p] / r["steady"][p] for r in rows) for p in rows[0]["first"]},
    }


def added_repository(count: int) -> Path:
    """The default repository plus `count` pipelines on its members (each at a scale of its own, half of them a
    fusion of two members), generated by the project's own tool."""
    folder = ROOT / "build" / "bench-startup" / f"added-{count}"
    shutil.rmtree(folder, ignore_errors=True)
    repository = folder / "repository"
    shutil.copytree(ROOT / "model_repository", repository, ignore=shutil.ignore_patterns(".optimized"))
    extra = "".join(f"\n[pipelines.added_{i}]\nmembers = {json.dumps(['vgg_d'] if i % 2 else ['vgg_a', 'vgg_b'])}\n"
                    f"scales = [{72 + 8 * i}]\n" for i in range(count))
    spec = folder / "pipelines.toml"
    spec.write_text((ROOT / "pipelines.toml").read_text() + extra)
    subprocess.run([sys.executable, "-m", "server.repository", "--spec", str(spec), "--repository",
                    str(repository)], cwd=ROOT, check=True, capture_output=True)
    return repository


def added(args: argparse.Namespace) -> int:
    bigger = added_repository(args.added)
    base_rows, added_rows = [], []
    for index in range(args.rounds + 1):  # round 0 warms the optimized-model caches; not counted
        base = one_round(ROOT, ROOT / "model_repository", measure_cache=False)
        more = one_round(ROOT, bigger, measure_cache=False)
        if index:
            base_rows.append(base)
            added_rows.append(more)
        print(f"round {index}: ready {base['ready_s']:.1f} s default, {more['ready_s']:.1f} s with "
              f"{args.added} added", flush=True)
    was, now = summary(base_rows), summary(added_rows)
    lines = [f"\n## {datetime.date.today()}: {args.added} pipelines added on the served members — {machine()}\n",
             f"`python -m bench.startup --added {args.added} --rounds {args.rounds}`: medians of {args.rounds} "
             "alternating rounds after one warm-up round; the added pipelines reuse the default members, each at "
             "a scale of its own.\n",
             f"| measure | default | + {args.added} pipelines | per added pipeline |", "|---|---:|---:|---:|"]
    for name, old, new, unit in (("`serve` to /readyz 200", was["ready"], now["ready"], "s"),
                                 ("processes", was["processes"], now["processes"], ""),
                                 ("PSS, whole service", sum(was["pss"].values()), sum(now["pss"].values()), "MB")):
        lines.append(f"| {name} | {old:.1f} {unit} | {new:.1f} {unit} | {(new - old) / args.added:+.2f} {unit} |")
    append_result("\n".join(lines) + "\n", args.out, TITLE)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="4bc47c6", help="the commit to compare with (default 4bc47c6)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "startup.md")
    parser.add_argument("--full-size", action="store_true",
                        help="instead: full-size VGG-16 `fast` + `multiscale`, this tree only (warm caches)")
    parser.add_argument("--added", type=int, default=0, metavar="N",
                        help="instead: the default repository against it with N more pipelines, this tree only")
    args = parser.parse_args(argv)
    if args.full_size:
        return full_size(args)
    if args.added:
        return added(args)
    subprocess.run([sys.executable, "-m", "server.repository", "--spec", "pipelines.toml", "--repository",
                    "model_repository"], cwd=ROOT, check=True, capture_output=True)
    before_tree, before_repository = prepare_before(args.before)
    now_rows, before_rows = [], []
    for index in range(args.rounds + 1):  # round 0 warms the optimized-model caches of both trees; not counted
        before = one_round(before_tree, before_repository, measure_cache=False)
        now = one_round(ROOT, ROOT / "model_repository", measure_cache=True)
        if index:
            before_rows.append(before)
            now_rows.append(now)
        print(f"round {index}: ready {before['ready_s']:.1f} s before, {now['ready_s']:.1f} s now", flush=True)
    was, now = summary(before_rows), summary(now_rows)
    lines = [f"\n## {datetime.date.today()}: this tree vs {args.before} — {machine()}\n",
             f"`python -m bench.startup --before {args.before} --rounds {args.rounds}`: medians of {args.rounds} "
             "alternating rounds after one warm-up round (caches warm), default repository.\n",
             f"| measure | {args.before} | now | ratio |", "|---|---:|---:|---:|"]

    def row(name: str, old: float, new: float, unit: str) -> None:
        lines.append(f"| {name} | {old:.1f} {unit} | {new:.1f} {unit} | {new / old if old else float('nan'):.2f}x |")

    row("`serve` to /readyz 200", was["ready"], now["ready"], "s")
    row("Triton SIGKILLed to ready again (supervisor)", was["restart"], now["restart"], "s")
    row("processes", was["processes"], now["processes"], "")
    row("/dev/shm in use", was["shm"], now["shm"], "MB")
    row("PSS, whole service", sum(was["pss"].values()), sum(now["pss"].values()), "MB")
    for kind in sorted(set(was["pss"]) | set(now["pss"])):
        row(f"PSS, {kind}", was["pss"].get(kind, 0.0), now["pss"].get(kind, 0.0), "MB")
    for pipeline in sorted(now["first_ratio"]):
        old = was["first_ratio"].get(pipeline, float("nan"))
        lines.append(f"| first {PIPELINE_PROBE_COUNT} requests / steady, p50, `{pipeline}` | {old:.2f}x | "
                     f"{now['first_ratio'][pipeline]:.2f}x | |")
    miss, hit = statistics.median(r["cache"][0] for r in now_rows), statistics.median(r["cache"][1] for r in now_rows)
    lines.append(f"| `fusion`: response-cache miss / hit, through the gateway | | {miss:.1f} / {hit:.1f} ms | |")
    append_result("\n".join(lines) + "\n", args.out, TITLE)
    return 0


def full_size(args: argparse.Namespace) -> int:
    repository = full_size_repository()
    rows = [full_size_round(repository) for _ in range(args.rounds + 1)][1:]  # the first fills the model caches
    ready = [row["ready_s"] for row in rows]
    kinds = sorted({kind for row in rows for kind in row["pss"]})
    pss = {kind: statistics.median(row["pss"].get(kind, 0.0) for row in rows) for kind in kinds}
    text = (f"\n## {datetime.date.today()}: full-size VGG-16 `fast` + `multiscale`, this tree — {machine()}\n\n"
            f"`python -m bench.startup --full-size --rounds {args.rounds}`: after one round that fills the "
            f"optimized-model cache. `serve` to /readyz 200: {', '.join(f'{s:.1f}' for s in ready)} s (goal "
            f"<= 15 s). PSS after one `fast` answer: {sum(pss.values()):.0f} MB in all; "
            + ", ".join(f"{kind} {value:.0f} MB" for kind, value in pss.items()) + ".\n")
    append_result(text, args.out, TITLE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
