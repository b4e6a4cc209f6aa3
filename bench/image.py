"""What the CPU image costs, side by side with `make serve` on the same machine and repository.

    python -m bench.image [--rounds 3] [--out bench/results/image.md]

Reports: build time without Docker's cache (the wheelhouse and base present, as in CI after the first build), the
image's size and its part above the base, time from `docker run` to the first /readyz 200 and to the HEALTHCHECK's
`healthy`, beside `python -m server.serve` to its first /readyz 200 on the host; the memory of the running container
(cgroup usage, and PSS summed over its processes) beside the host service's PSS; /dev/shm in use.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from bench.common import append_result, free_port, machine
from deploy import image as image_builder

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "bench-image-key"


def docker(*args: str) -> str:
    return subprocess.run(["docker", *args], check=True, capture_output=True, text=True).stdout.strip()


def wait_ready(url: str, timeout: float = 300) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        with contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError), \
                urllib.request.urlopen(url + "/readyz", timeout=2) as response:
            if response.status == 200:
                return time.monotonic() - started
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready within {timeout:.0f} s")


def pss_mb(pids_script: str, runner: list[str]) -> float:
    """PSS summed over the processes that ``pids_script`` lists, read from their smaps_rollup."""
    script = (f"import re\nfrom pathlib import Path\ntotal = 0\nfor pid in {pids_script}:\n"
              "    try:\n        text = Path(f'/proc/{pid}/smaps_rollup').read_text()\n"
              "    except OSError:\n        continue\n"
              "    total += sum(int(v) for v in re.findall(r'^Pss:\\s+(\\d+)', text, re.M))\nprint(total)")
    return int(subprocess.run([*runner, sys.executable if not runner else "python3", "-c", script],
                              check=True, capture_output=True, text=True).stdout) / 1024


def container_round(image: str) -> dict[str, float]:
    name = f"bench-image-{free_port()}"
    port = free_port()
    started = time.monotonic()
    docker("run", "--detach", "--name", name, "--read-only", "--tmpfs", "/tmp", "--publish", f"127.0.0.1:{port}:8080",
           "--env", f"VGG_GATEWAY_API_KEYS={API_KEY}", image)
    try:
        wait_ready(f"http://127.0.0.1:{port}")
        ready_s = time.monotonic() - started
        while docker("inspect", "--format", "{{.State.Health.Status}}", name) != "healthy":
            time.sleep(0.2)
        healthy_s = time.monotonic() - started
        time.sleep(2)  # settle: the gateway's first catalog read, the stubs' lazy allocations
        stats = json.loads(docker("stats", "--no-stream", "--format", "{{json .}}", name))
        pss = pss_mb("[p.name for p in Path('/proc').iterdir() if p.name.isdigit()]", ["docker", "exec", name])
        shm = docker("exec", name, "df", "--block-size=1M", "--output=used", "/dev/shm").splitlines()[-1]
        processes = int(docker("exec", name, "sh", "-c", "ls -d /proc/[0-9]* | wc -l"))
    finally:
        subprocess.run(["docker", "rm", "--force", name], capture_output=True)
    return {"ready_s": ready_s, "healthy_s": healthy_s, "pss_mb": pss, "cgroup": stats["MemUsage"],
            "shm_mb": float(shm), "processes": processes}


def host_round() -> dict[str, float]:
    port, http, grpc, metrics = free_port(), free_port(), free_port(), free_port()
    process = subprocess.Popen([sys.executable, "-m", "server.serve", "--repository", "model_repository",
                                "--gateway-port", str(port), "--http-port", str(http), "--grpc-port", str(grpc),
                                "--metrics-port", str(metrics), "--log", f"build/bench-image-{port}/triton.log"],
                               cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ready_s = wait_ready(f"http://127.0.0.1:{port}")
        time.sleep(2)
        pids = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True).stdout
        ours = descendants(process.pid, pids)  # serve, the gateway, Triton and its stubs
        pss = pss_mb(repr(sorted(ours)), [])
    finally:
        process.terminate()
        process.wait(30)
    return {"ready_s": ready_s, "pss_mb": pss, "processes": len(ours)}


def descendants(root: int, ps_output: str) -> set[int]:
    parents = {}
    for line in ps_output.splitlines():
        pid, ppid = (int(x) for x in line.split())
        parents[pid] = ppid
    found, changed = {root}, True
    while changed:
        changed = False
        for pid, ppid in parents.items():
            if ppid in found and pid not in found:
                found.add(pid)
                changed = True
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "image.md")
    args = parser.parse_args(argv)

    image_builder.ensure_engine()
    image_builder.build_wheelhouse()
    image_builder.build_repository()
    base, stand_in = image_builder.ensure_base(image_builder.OFFICIAL_BASE)
    tag = f"{image_builder.IMAGE}:latest"
    started = time.monotonic()
    subprocess.run(["docker", "build", "--no-cache", "--quiet", "--file", "Dockerfile.cpu", "--build-arg",
                    f"BASE={base}", "--tag", tag, "."], cwd=ROOT, check=True, capture_output=True,
                   env={"DOCKER_BUILDKIT": "0", "PATH": "/usr/local/bin:/usr/bin:/bin"})
    build_s = time.monotonic() - started
    size = int(docker("image", "inspect", "--format", "{{.Size}}", tag)) / 1e6
    base_size = int(docker("image", "inspect", "--format", "{{.Size}}", base)) / 1e6

    containers, hosts = [], []
    for _ in range(args.rounds):  # alternating, so drift on a shared machine hits both alike
        containers.append(container_round(tag))
        hosts.append(host_round())

    def median(rows: list[dict], key: str) -> float:
        return statistics.median(row[key] for row in rows)

    lines = [
        f"\n## {datetime.date.today()} — {machine()}\n",
        f"Base: {base}{' (stand-in from Debian packages: the official base cannot be pulled here)' if stand_in else ''}"
        f"; {args.rounds} alternating rounds, medians.\n",
        "| measure | container (`docker run`) | host (`python -m server.serve`) |",
        "|---|---|---|",
        f"| image size / above the base | {size:.0f} MB / {size - base_size:.0f} MB | |",
        f"| `docker build --no-cache` (wheelhouse and base present) | {build_s:.0f} s | |",
        f"| start to first /readyz 200 | {median(containers, 'ready_s'):.1f} s | {median(hosts, 'ready_s'):.1f} s |",
        f"| start to HEALTHCHECK `healthy` | {median(containers, 'healthy_s'):.1f} s | |",
        f"| memory, PSS summed over processes | {median(containers, 'pss_mb'):.0f} MB | "
        f"{median(hosts, 'pss_mb'):.0f} MB |",
        f"| memory, cgroup usage (docker stats) | {containers[-1]['cgroup']} | |",
        f"| processes | {median(containers, 'processes'):.0f} | {median(hosts, 'processes'):.0f} |",
        f"| /dev/shm in use (of Docker's default 64 MB) | {median(containers, 'shm_mb'):.0f} MB | |",
        "",
        "Rounds (container ready/healthy s, host ready s): " + "; ".join(
            f"{c['ready_s']:.1f}/{c['healthy_s']:.1f} vs {h['ready_s']:.1f}"
            for c, h in zip(containers, hosts, strict=True)),
    ]
    append_result("\n".join(lines) + "\n", args.out,
                  "The CPU image: size, build, start-up and memory (python -m bench.image)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
