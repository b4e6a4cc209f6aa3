"""How many requests a cascade's Python model should hold in flight: its images/s and its stubs' memory at each
instance count, served side by side in alternating rounds.

    python -m bench.cascade_instances [--instances 2,4] [--clients 4,8] [--rounds 2]

Triton's Python backend runs one request per instance at a time, and each instance is a stub process of its own
(~25 MB PSS), so more instances buy concurrency with memory. Images: the demo calibration digits (or --images).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import statistics
import sys
import tempfile
from pathlib import Path

from bench.cascade import ROOT, resolved_cascade, serve_stages
from bench.cascade_bench import images_per_s
from bench.common import free_port, machine, publish
from bench.startup import processes_of, pss_mb, stub_kind
from client.contract import CASCADE_OUTPUTS
from server.cascade_spec import Cascade
from server.pipeline_spec import Spec
from server.spec_file import load_spec
from server.triton_launcher import TritonServer


def measure(cascade: Cascade, spec: Spec, repository: Path, bodies: list[bytes], clients: list[int],
            folder: Path) -> tuple[dict[int, float], float]:
    """(images/s per client count, PSS in MB of the cascade's stubs after the load)."""
    scratch = serve_stages(cascade, spec, repository, folder)
    with TritonServer(scratch, free_port(), free_port(), free_port(), log_path=folder / "triton.log") as server:
        speed = {n: images_per_s(server.http_url, cascade.name, bodies, n, CASCADE_OUTPUTS) for n in clients}
        stubs = [pid for pid, argv in processes_of(server.process.pid).items()
                 if stub_kind(argv) == "step" and f"/{cascade.name}/" in argv]
        return speed, sum(pss_mb(pid) for pid in stubs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cascade_instances", description=__doc__.splitlines()[0])
    parser.add_argument("--instances", default="2,4", help="instance counts to compare (default 2,4)")
    parser.add_argument("--clients", default="4,8", help="concurrent clients (default 4,8)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--images", type=Path, default=ROOT / "models" / "demo" / "calibration")
    parser.add_argument("--spec", type=Path, default=ROOT / "pipelines.toml")
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "cascade_instances.md")
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.instances.split(",")]
    clients = [int(n) for n in args.clients.split(",")]
    spec = load_spec(args.spec)
    cascade = resolved_cascade(spec, None, args.repository)
    bodies = [path.read_bytes() for path in sorted(args.images.iterdir()) if path.is_file()]
    speed: dict[tuple[int, int], list[float]] = {}
    memory: dict[int, list[float]] = {}
    for round_index in range(args.rounds):
        for count in counts if round_index % 2 == 0 else counts[::-1]:
            with tempfile.TemporaryDirectory() as folder:
                served, pss = measure(dataclasses.replace(cascade, instances=count), spec, args.repository,
                                      bodies, clients, Path(folder))
            memory.setdefault(count, []).append(pss)
            for n, value in served.items():
                speed.setdefault((count, n), []).append(value)
            print(f"round {round_index + 1}: {count} instances: "
                  + ", ".join(f"{n} clients {v:.0f} images/s" for n, v in served.items()), file=sys.stderr)
    lines = [f"# A cascade's instances (python -m bench.cascade_instances), {datetime.date.today()}", "",
             f"Machine: {machine()}.", "",
             f"`python -m bench.cascade_instances --instances {args.instances} --clients {args.clients} --rounds "
             f"{args.rounds}`: {len(bodies)} images per client, medians of alternating rounds.", "",
             "| instances | " + " | ".join(f"images/s, {n} clients" for n in clients) + " | PSS of its stubs |",
             "|---:|" + "---:|" * (len(clients) + 1)]
    for count in counts:
        lines.append(f"| {count} | " + " | ".join(f"{statistics.median(speed[(count, n)]):.0f}" for n in clients)
                     + f" | {statistics.median(memory[count]):.0f} MB |")
    publish("\n".join(lines) + "\n", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
