"""What tracing costs: the same pipeline through the gateway with tracing off, at 100% sampling and at 10%, side by
side in one run (median latency, throughput), with every span exported to a collector stand-in.

    .venv/bin/python -m bench.tracing_bench --vgg11            # full-size VGG-11 `fast` (the goal's case)
    .venv/bin/python -m bench.tracing_bench --repository model_repository --requests 200
    .venv/bin/python -m bench.tracing_bench --repository model_repository --before c48b1f5   # + the gateway then

Two Tritons serve the same repository: one as the service runs without OTEL_* variables, one in OpenTelemetry mode
as the launcher starts it behind a gateway (it traces exactly the requests that carry a sampled context). Three
gateways: off (in front of the first), 100% and 10% (in front of the second). The stand-in collector is an OTLP/HTTP
endpoint here that reads each export and answers 200 without decoding it, as a remote collector costs this machine
nothing but the sending. Rounds alternate the sides so drift on a shared machine hits all alike; only the side being
measured has load. With --before COMMIT a fourth side runs that commit's gateway (a git worktree, as bench.startup
makes it) in front of the first Triton: what tracing off costs against a gateway without tracing code.
Results go to bench/results/tracing.md.
Goal (issue 31): at 100% sampling >= 0.97x the throughput of tracing off, on full-size VGG-11 `fast`.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from bench.common import append_result, free_port, machine, photo_jpeg, start_gateway
from bench.gateway_bench import build_vgg11_repository, gateway_caller, latency_ms, throughput
from server.telemetry import BEHIND_GATEWAY, TRITON_SERVICE, trace_export

RESULTS = Path(__file__).resolve().parent / "results" / "tracing.md"
SIDES = {"off": {}, "100%": {"OTEL_TRACES_SAMPLER": "parentbased_always_on"},
         "10%": {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"}}


class CollectorStandIn:
    """Accepts OTLP/HTTP exports and counts them and their bytes; decodes nothing."""

    def __init__(self) -> None:
        self.exports = self.bytes = 0
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                size = int(self.headers.get("Content-Length", 0))
                self.rfile.read(size)
                stand_in.exports += 1
                stand_in.bytes += size
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def measure(urls: dict[str, str], pipeline: str, requests: int, concurrency: int, rounds: int) -> dict:
    data = photo_jpeg((500, 333))
    makers: dict[str, Callable[[], Callable[[], None]]] = {
        name: functools.partial(gateway_caller, url, pipeline, data, 5) for name, url in urls.items()}
    latencies: dict[str, list[float]] = {name: [] for name in makers}
    rates: dict[str, list[float]] = {name: [] for name in makers}
    for _ in range(rounds):
        for name, make in makers.items():
            latencies[name] += latency_ms(make, requests)
            rates[name].append(throughput(make, requests, concurrency))
    result = {name: {"median_ms": round(statistics.median(latencies[name]), 2),
                     "throughput_img_s": round(statistics.median(rates[name]), 2),
                     "throughput_per_round": [round(rate, 2) for rate in rates[name]]} for name in makers}
    for name in makers:
        if name != "off":
            result[name]["latency_ratio"] = round(result[name]["median_ms"] / result["off"]["median_ms"], 4)
            result[name]["throughput_ratio"] = round(result[name]["throughput_img_s"]
                                                     / result["off"]["throughput_img_s"], 4)
    return result


def report(result: dict, args: argparse.Namespace, collector: CollectorStandIn) -> str:
    lines = ["", f"### {time.strftime('%Y-%m-%d')}: {'full-size VGG-11' if args.vgg11 else args.repository} "
             f"`{args.pipeline}`", "",
             f"{machine()}; {args.requests} requests per measurement (latency one at a time, throughput "
             f"{args.concurrency} concurrent), {args.rounds} rounds alternating the sides; "
             f"`python -m bench.tracing_bench {' '.join(sys.argv[1:])}`.", "",
             "| tracing | median latency (ms) | throughput (img/s) | latency vs off | throughput vs off |",
             "|---|---|---|---|---|"]
    for name, side in result.items():
        lines.append(f"| {name} | {side['median_ms']} | {side['throughput_img_s']} "
                     f"({', '.join(map(str, side['throughput_per_round']))}) | {side.get('latency_ratio', 1.0)}x "
                     f"| {side.get('throughput_ratio', 1.0)}x |")
    lines += ["", f"The collector stand-in received {collector.exports} exports, {collector.bytes / 1e6:.2f} MB "
                  "(gateway protobuf and Triton JSON).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--vgg11", action="store_true", help="build and serve a full-size VGG-11 `fast` instead")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--pipeline", default="fast")
    parser.add_argument("--requests", type=int, default=40, help="per measurement")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--before", help="also run this commit's gateway (a worktree) in front of the plain Triton")
    parser.add_argument("--no-record", action="store_true", help="print only; bench/results/tracing.md untouched")
    args = parser.parse_args(argv)

    from server.triton_launcher import TritonServer

    collector = CollectorStandIn()
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.url}
    scratch = tempfile.TemporaryDirectory(prefix="tracing-bench-")
    tritons, gateways = [], []
    try:
        repository = build_vgg11_repository(Path(scratch.name), args.threads) if args.vgg11 else args.repository
        plain = TritonServer(repository, free_port(), free_port(), free_port()).start()
        tritons.append(plain)
        traced = TritonServer(repository, free_port(), free_port(), free_port(),
                              tracing=trace_export({**env, **BEHIND_GATEWAY}, TRITON_SERVICE)).start()
        tritons.append(traced)
        urls = {}
        for name, sampler in SIDES.items():
            process, urls[name] = start_gateway(plain.http_url if name == "off" else traced.http_url,
                                                env={} if name == "off" else {**env, **sampler}, quiet=True)
            gateways.append(process)
        if args.before:
            from bench.startup import prepare_before

            tree, _ = prepare_before(args.before)
            process, urls[f"before ({args.before})"] = start_gateway(plain.http_url, quiet=True, tree=tree)
            gateways.append(process)
        result = measure(urls, args.pipeline, args.requests, args.concurrency, args.rounds)
        time.sleep(6)  # Triton's exporter sends every 5 s: the counts below include the last batch
    finally:
        for process in gateways:
            process.terminate()
            process.wait(30)
        for server in tritons:
            server.stop()
        scratch.cleanup()
    text = report(result, args, collector)
    collector.close()
    if args.no_record:
        print(text)
    else:
        append_result(text, RESULTS, "What tracing costs (`python -m bench.tracing_bench`)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
