"""`make serve`: Triton on the model repository, then the gateway in front of it; Ctrl-C stops both cleanly.

    python -m server.serve [--repository model_repository] [--address 127.0.0.1] [--gateway-port 8080] ...

Both are supervised: either one exiting unexpectedly is restarted (with backoff) while the other keeps running, so
the gateway answers 503 and reports not ready while Triton comes back. ``--address`` is where the gateway listens;
Triton stays on loopback unless ``--triton-address`` says otherwise, which needs an access key.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from server.gateway.config import ConfigError, load_settings
from server.supervisor import GaveUp, Liveness, Supervised, answers, terminate
from server.telemetry import BEHIND_GATEWAY
from server.triton_access import KEY_ENV, KEY_FILE_ENV
from server.triton_launcher import (
    LaunchError,
    StopRequest,
    TritonServer,
    add_server_arguments,
    check_port_free,
    run_with_key,
    server_from_args,
    start_reporting,
    triton_probe,
)

GATEWAY_START_S = 30.0
REMEMBER_EVERY_S = 5.0  # how often what Triton serves is noted for a restart (TritonServer.remember_loaded)
STOP_BUDGET_S = 8.0  # under Docker's default 10 s between SIGTERM and SIGKILL (Kubernetes gives 30 s)


def supervised(server: TritonServer, stop: StopRequest, hang_after_s: float, stall_after_s: float) -> Supervised:
    """Triton under supervision: restarted on the same ports, loading the same models, with the same key; killed
    first when its HTTP endpoint stops answering (frozen, deadlocked) for ``hang_after_s``, or its core has
    completed none of its pending requests for ``stall_after_s`` (then ``hang_after_s``)."""
    liveness = Liveness(triton_probe(server, stall_after_s)) if hang_after_s > 0 else None
    return Supervised("tritonserver", server.start, lambda: server.process.poll(), server.kill,
                      report=server.report, stop_requested=lambda: stop.requested, liveness=liveness,
                      hang_after_s=hang_after_s)


class GatewayProcess:
    """``python -m server.gateway`` in front of one Triton, given Triton's key in its environment."""

    def __init__(self, triton_url: str, host: str, port: int, key: str) -> None:
        self.command = [sys.executable, "-m", "server.gateway", "--triton-url", triton_url, "--host", host,
                        "--port", str(port)]
        self.env = {name: value for name, value in os.environ.items() if name != KEY_FILE_ENV}
        self.env[KEY_ENV] = key
        self.health_url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}/healthz"
        self.process: subprocess.Popen[bytes] | None = None

    def check_config(self) -> None:
        """The gateway's own refusals (no API keys on a public address, unreadable key files, bad settings), in a
        millisecond here rather than after Triton has loaded every model."""
        try:
            load_settings(self.command[3:], self.env)
        except (ConfigError, OSError) as exc:
            raise LaunchError(f"gateway: {exc}") from None

    def start(self) -> None:
        """Started once it answers /healthz; LaunchError if it exits first (its own message is on stderr)."""
        self.process = subprocess.Popen(self.command, env=self.env)
        deadline = time.monotonic() + GATEWAY_START_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise LaunchError(f"the gateway exited with status {self.process.returncode}")
            try:
                with urllib.request.urlopen(self.health_url, timeout=1):
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.2)
        raise LaunchError(f"the gateway did not answer {self.health_url} within {GATEWAY_START_S:.0f} s")

    def exit_status(self) -> int | None:
        return self.process.poll() if self.process else None

    def stop(self, timeout_s: float = 15.0) -> None:
        terminate(self.process, timeout_s)

    def kill(self) -> None:
        """A hung gateway does not act on SIGTERM (a stopped one cannot)."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_server_arguments(parser, default_log=Path("build/tritonserver.log"))
    parser.add_argument("--address", default="127.0.0.1",
                        help="the gateway's bind address (default loopback; any other needs API keys)")
    parser.add_argument("--gateway-port", type=int, default=8080)
    args = parser.parse_args(argv)
    return run_with_key(args, "serve", run)


def run(args: argparse.Namespace, key: str, key_file: Path | None) -> int:
    """Triton, then the gateway, both supervised until Ctrl-C or SIGTERM."""
    triton_url = f"{'127.0.0.1' if args.triton_address in ('0.0.0.0', '::') else args.triton_address}:" \
                 f"{args.http_port}"
    gateway = GatewayProcess(triton_url, args.address, args.gateway_port, key)
    try:
        gateway.check_config()
    except LaunchError as exc:
        print(f"serve: error: {exc}", file=sys.stderr)
        return 2
    try:
        check_port_free(args.address, args.gateway_port, "the gateway")
    except LaunchError as exc:
        print(f"serve: error: {exc}", file=sys.stderr)
        return 1
    try:  # behind the gateway, Triton traces exactly the requests the gateway sampled (server/telemetry.py)
        triton = server_from_args(args, key, {**os.environ, **BEHIND_GATEWAY})
    except LaunchError as exc:
        print(f"serve: error: {exc}", file=sys.stderr)
        return 2
    stop = StopRequest()
    if not start_reporting(triton, "serve", key_file):
        return 1
    if stop.requested:  # Ctrl-C while Triton was loading
        triton.stop()
        return 130
    status = 0
    try:
        gateway.start()
        print(f"Gateway on http://{args.address}:{args.gateway_port} (docs at /docs); Ctrl-C stops both",
              flush=True)
        gateway_liveness = Liveness(answers(gateway.health_url)) if args.hang_after_s > 0 else None
        watched = [supervised(triton, stop, args.hang_after_s, args.stall_after_s),
                   Supervised("the gateway", gateway.start, gateway.exit_status, gateway.stop, report=triton.report,
                              stop_requested=lambda: stop.requested, liveness=gateway_liveness,
                              hang_after_s=args.hang_after_s, kill=gateway.kill)]
        remember_at = time.monotonic() + REMEMBER_EVERY_S
        while not stop.requested:
            for service in watched:
                service.check()
            if time.monotonic() >= remember_at:
                remember_at = time.monotonic() + REMEMBER_EVERY_S
                added = triton.remember_loaded()
                if added:
                    triton.report(f"tritonserver: a restart now loads {', '.join(added)} too (loaded since it "
                                  "started)")
            time.sleep(0.25)
    except (LaunchError, GaveUp) as exc:
        print(f"serve: error: {exc}", file=sys.stderr)
        status = 1
    # Within the orchestrator's grace period: the gateway finishes its in-flight requests first (so nothing reaches
    # Triton after it), then Triton unloads; what would overrun is killed, which loses no request any more.
    deadline = time.monotonic() + STOP_BUDGET_S
    gateway.stop(timeout_s=STOP_BUDGET_S * 0.6)
    triton.stop(timeout=max(1.0, deadline - time.monotonic()))
    return status


if __name__ == "__main__":
    sys.exit(main())
