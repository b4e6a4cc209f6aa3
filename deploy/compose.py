"""Run compose.yaml: the secrets it reads, a Compose that runs it, and a wait until every container is healthy.

    python -m deploy.compose up [--replicas 2] [--port 8080]     # the image must exist: `make image`
    python -m deploy.compose down

Secrets are made once in build/compose/ (a folder only this user reads): Triton's key and one gateway API key,
printed on `up`. The files themselves are readable by the containers' non-root user, as Compose mounts them as
they are on the host.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

from deploy.image import ROOT, ImageError, apt_install, ensure_engine, run

COMPOSE_FILE = ROOT / "compose.yaml"
SECRETS = ROOT / "build" / "compose"
HEALTHY_WITHIN_S = 240.0


def compose_command() -> list[str]:
    """`docker compose` (v2) where the plugin exists, else Debian's docker-compose (installed if missing)."""
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose") is None:
        apt_install("docker-compose")
    return ["docker-compose"]


def ensure_secrets() -> dict[str, Path]:
    SECRETS.mkdir(parents=True, exist_ok=True)
    SECRETS.chmod(0o700)
    files = {"triton-key": SECRETS / "triton-key", "api-keys": SECRETS / "api-keys"}
    for path in files.values():
        if not path.exists():
            path.write_text(secrets.token_urlsafe(24) + "\n")
        path.chmod(0o644)  # inside the folder above; the containers' user 10001 reads the bind-mounted file
    return files


def project_args(project: str) -> list[str]:
    return ["--project-name", project, "--file", str(COMPOSE_FILE)]


def environment(replicas: int, port: int) -> dict[str, str]:
    return {**os.environ, "VGG_TRITON_REPLICAS": str(replicas), "VGG_COMPOSE_PORT": str(port)}


def containers(project: str) -> list[dict]:
    ids = run(["docker", "ps", "--all", "--quiet", "--filter", f"label=com.docker.compose.project={project}"],
              "docker ps").stdout.split()
    return json.loads(run(["docker", "inspect", *ids], "docker inspect").stdout) if ids else []


def wait_healthy(project: str, expected: int, timeout: float = HEALTHY_WITHIN_S) -> float:
    """Seconds until ``expected`` containers of the project are running and healthy."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        states = [c["State"] for c in containers(project)]
        if len(states) >= expected and all(s.get("Health", {}).get("Status") == "healthy" for s in states):
            return time.monotonic() - started
        time.sleep(1)
    raise ImageError(f"the compose project {project} was not healthy within {timeout:.0f} s "
                     f"(docker compose --project-name {project} logs)")


def up(project: str = "vgg-serve", replicas: int = 2, port: int = 8080) -> float:
    ensure_engine()
    ensure_secrets()
    run([*compose_command(), *project_args(project), "up", "--detach"], "compose up", cwd=ROOT,
        env=environment(replicas, port))
    return wait_healthy(project, replicas + 1)


def down(project: str = "vgg-serve") -> None:
    run([*compose_command(), *project_args(project), "down", "--volumes", "--remove-orphans", "--timeout", "30"],
        "compose down", cwd=ROOT, env=environment(0, 0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("--project", default="vgg-serve")
    parser.add_argument("--replicas", type=int, default=2, help="Triton replicas (default 2)")
    parser.add_argument("--port", type=int, default=8080, help="the gateway's port on 127.0.0.1 (default 8080)")
    args = parser.parse_args(argv)
    try:
        if args.action == "down":
            down(args.project)
            print(f"{args.project}: down")
            return 0
        seconds = up(args.project, args.replicas, args.port)
    except ImageError as exc:
        print(f"compose: error: {exc}", file=sys.stderr)
        return 1
    print(f"{args.project}: {args.replicas} Triton replicas and the gateway healthy in {seconds:.0f} s; gateway on "
          f"http://127.0.0.1:{args.port} (API key in {SECRETS / 'api-keys'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
