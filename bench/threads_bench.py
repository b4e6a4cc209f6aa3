"""Instances x intra-op threads under concurrent load: which split of the cores serves the most images/s.

    python -m bench.threads_bench [--concurrency 1 4] [--requests 16]

Full-size VGG-16 in FP32 and int8 behind a `fast` pipeline (Q=224, one 640x427 JPEG). For each member setting
(instance_group count x intra_op_thread_count) Triton restarts with the member's config rewritten so, and clients
at each concurrency report images/s and median latency. Then an int8 `fusion` of VGG-11, 16 and 19 (Q=256, 384,
512), whose three members run at once: each member with all the cores' threads, or with its share of them.
The project's defaults (export/to_onnx.py --instances, --threads) come from these tables; bench/results/threads.md
records them.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import sys
import tempfile
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from bench.build import calibration_photos, export, random_checkpoints
from bench.common import free_port, machine, photo_jpeg, publish
from bench.served import under_load
from server.repository import generate
from server.spec_file import load_spec
from server.triton_launcher import TritonServer

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = ((1, 1), (1, 2), (2, 1), (2, 2), (1, 4))  # (instances, threads per instance)
FUSION_THREADS = (1, 2)  # per member, one instance each
SPEC = """
[pipelines.fast_fp32]
members = ["vgg16"]
scales = [224]
[pipelines.fast_int8]
members = ["vgg16_int8"]
scales = [224]
[pipelines.fusion_int8]
members = ["vgg11_int8", "vgg16_int8", "vgg19_int8"]
scales = [256, 384, 512]
"""
FUSION = ("vgg11_int8", "vgg16_int8", "vgg19_int8")


def configure(repository: Path, model: str, instances: int, threads: int) -> None:
    path = repository / model / "config.pbtxt"
    config = text_format.Parse(path.read_text(), mc.ModelConfig())
    config.instance_group[0].count = instances
    config.parameters["intra_op_thread_count"].string_value = str(threads)
    path.write_text(text_format.MessageToString(config))


def table(rows: list[tuple], setting: str) -> list[str]:
    best = {(r[0], r[3]): max(o[4] for o in rows if o[0] == r[0] and o[3] == r[3]) for r in rows}
    lines = [f"| precision | {setting} | clients | images/s | of best | median latency ms |",
             "|---|---|---:|---:|---:|---:|"]
    for precision, instances, threads, concurrency, rate, latency in sorted(rows, key=lambda r: (r[0], r[3], -r[4])):
        lines.append(f"| {precision} | {instances} x {threads} | {concurrency} | {rate:.2f} | "
                     f"{rate / best[precision, concurrency]:.0%} | {latency:.0f} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--requests", type=int, default=16, help="requests per measurement")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "threads.md")
    args = parser.parse_args(argv)
    jpeg = photo_jpeg()
    folder = Path(tempfile.mkdtemp(prefix="threads-bench-"))
    rows: list[tuple] = []
    fusion_rows: list[tuple] = []
    try:
        repository = folder / "repository"
        calibration = calibration_photos(folder)
        for name, checkpoint in random_checkpoints(folder, {"vgg11": "A", "vgg16": "D", "vgg19": "E"}).items():
            export(checkpoint, repository, name, 1, "--quantize", "int8", "--calibration", str(calibration),
                   "--min-top1-agreement", "0")
        (folder / "spec.toml").write_text(SPEC)
        generate(load_spec(folder / "spec.toml"), repository)
        for threads in FUSION_THREADS:
            for model in FUSION:
                configure(repository, model, 1, threads)
            with TritonServer(repository, free_port(), free_port(), free_port(), log_path=folder / "log") as triton:
                for concurrency in args.concurrency:
                    rate, latency = under_load(triton.http_url, "fusion_int8", jpeg, 4, concurrency)
                    fusion_rows.append(("int8", 1, threads, concurrency, rate, latency))
                    print(f"fusion int8 {threads} threads per member, {concurrency} clients: {rate:.2f} images/s, "
                          f"{latency:.0f} ms", flush=True)
        for instances, threads in SETTINGS:
            for model in ("vgg16", "vgg16_int8"):
                configure(repository, model, instances, threads)
            with TritonServer(repository, free_port(), free_port(), free_port(), log_path=folder / "log") as triton:
                for precision in ("fp32", "int8"):
                    for concurrency in args.concurrency:
                        rate, latency = under_load(triton.http_url, f"fast_{precision}", jpeg, args.requests,
                                                   concurrency)
                        rows.append((precision, instances, threads, concurrency, rate, latency))
                        print(f"{precision} {instances}x{threads} threads, {concurrency} clients: {rate:.2f} images/s, "
                              f"{latency:.0f} ms", flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    lines = [f"# Instances x threads benchmark, {datetime.date.today().isoformat()}", "",
             f"Machine: {machine()} ({os.cpu_count()} cores). Full-size VGG-16 behind `fast` (Q=224, one 640x427 "
             f"JPEG); {args.requests} requests per row; images/s relative to the best setting at the same precision "
             "and concurrency.", "", *table(rows, "instances x threads"), "",
             "int8 `fusion` of VGG-11, 16 and 19 at Q=256, 384, 512 (the three members run at once), one instance "
             "per member, 4 requests per row:", "", *table(fusion_rows, "instances x threads per member")]
    text = "\n".join(lines) + "\n"
    publish(text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
