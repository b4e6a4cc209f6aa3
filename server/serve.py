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

from server.triton_launcher import (
    LaunchError,
    StopRequest,
    add_server_arguments,
    check_port_free,
    server_from_args,
    start_reporting,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_server_arguments(parser, default_log=Path("build/tritonserver.log"))
    parser.add_argument("--gateway-port", type=int, default=8080)
    args = parser.parse_args(argv)
    stop = StopRequest()
    args.log.parent.mkdir(parents=True, exist_ok=True)
    triton = server_from_args(args)
    try:
        check_port_free(args.address, args.gateway_port, "the gateway")
    except LaunchError as exc:
        print(f"serve: error: {exc}", file=sys.stderr)
        return 1
    if not start_reporting(triton, "serve"):
        return 1
    if stop.requested:  # Ctrl-C while Triton was loading
        triton.stop()
        return 130
    gateway = subprocess.Popen([sys.executable, "-m", "server.gateway", "--triton-url", triton.http_url,
                                "--host", args.address, "--port", str(args.gateway_port)])
    print(f"Gateway starting on http://{args.address}:{args.gateway_port} (docs at /docs); Ctrl-C stops both",
          flush=True)
    status = 0
    while not stop.requested:
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
