"""`make serve`: Triton on the model repository, then the gateway in front of it; Ctrl-C stops both cleanly.

    python -m server.serve [--repository model_repository] [--gateway-port 8080] [--http-port 8000 ...]
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from pathlib import Path

from server.triton_launcher import LaunchError, TritonServer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--address", default="127.0.0.1", help="bind address of Triton and the gateway")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--gateway-port", type=int, default=8080)
    parser.add_argument("--log", type=Path, default=Path("build/tritonserver.log"))
    args = parser.parse_args(argv)

    stopping = False

    def request_stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    args.log.parent.mkdir(parents=True, exist_ok=True)
    triton = TritonServer(args.repository, args.http_port, args.grpc_port, args.metrics_port, args.address, args.log)
    try:
        triton.start()
    except LaunchError as exc:
        print(f"serve: error: {exc}", file=sys.stderr)
        return 1
    print(f"Triton ready: HTTP {triton.http_url}, gRPC {triton.grpc_url}, metrics {triton.metrics_url} "
          f"(log: {args.log})", flush=True)
    gateway = subprocess.Popen([sys.executable, "-m", "server.gateway", "--triton-url", triton.grpc_url,
                                "--host", args.address, "--port", str(args.gateway_port)])
    print(f"Gateway starting on http://{args.address}:{args.gateway_port} (docs at /docs); Ctrl-C stops both",
          flush=True)
    status = 0
    while not stopping:
        if triton.process.poll() is not None:
            print(f"serve: tritonserver exited ({triton.process.returncode}):\n{triton.log_tail()}", file=sys.stderr)
            status = 1
            break
        if gateway.poll() is not None:
            print(f"serve: the gateway exited ({gateway.returncode})", file=sys.stderr)
            status = 1
            break
        time.sleep(0.5)
    if gateway.poll() is None:
        gateway.send_signal(signal.SIGTERM)
        try:
            gateway.wait(15)
        except subprocess.TimeoutExpired:
            gateway.kill()
    triton.stop()
    return status


if __name__ == "__main__":
    sys.exit(main())
