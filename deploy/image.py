"""Build the CPU image (Dockerfile.cpu) the way `make image` does, on a machine with a Docker engine or without one.

    python -m deploy.image engine                      # a Docker engine that answers (Debian's docker.io if none)
    python -m deploy.image build [--base IMAGE]        # wheelhouse, repository, base, docker build; tags latest+version

The base image is the Dockerfile's build argument, the official ``python:3.11.14-slim-bookworm`` by default. Where
it can't be pulled (no registry reachable), a stand-in is made from Debian's packages with mmdebstrap (bookworm,
its python3 3.11 and libpython3.11, which the Python backend's stub links) and ``docker import``, and the build says
so. Packages reach the build as a wheelhouse of the pinned lock downloaded by this machine's pip, so the build
fetches nothing and trusts no certificate of this machine's.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "vgg-serve-cpu"
OFFICIAL_BASE = "python:3.11.14-slim-bookworm"
STAND_IN_BASE = "vgg-serve-base:python3.11-bookworm-debian"
STAND_IN_PACKAGES = "python3,python3-venv,libpython3.11,ca-certificates"
WHEELHOUSE = ROOT / "build" / "wheelhouse"
DOCKERD_LOG = Path("/var/log/vgg-serve-dockerd.log")
ENGINE_START_S = 60.0


class ImageError(RuntimeError):
    """A step of the build failed; the message says which and why, in one line."""


@dataclass(frozen=True)
class Built:
    tags: tuple[str, ...]
    base: str
    stand_in: bool
    seconds: float
    size_bytes: int


def version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def run(command: list[str], what: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise ImageError(f"{what} failed: {detail[-1] if detail else f'exit status {result.returncode}'}")
    return result


def engine_answers() -> bool:
    return shutil.which("docker") is not None and subprocess.run(
        ["docker", "info"], capture_output=True, timeout=30).returncode == 0


def apt_install(*packages: str) -> None:
    """Debian's packages, as root (the development machines and CI are)."""
    print(f"installing Debian's {', '.join(packages)} (apt-get)", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run(["apt-get", "update", "-qq"], "apt-get update", env=env)
    run(["apt-get", "install", "-y", "-qq", *packages], f"apt-get install {' '.join(packages)}", env=env)


def ensure_engine() -> None:
    """A Docker engine that answers: installs Debian's docker.io and starts dockerd when none runs."""
    if engine_answers():
        return
    if shutil.which("dockerd") is None:
        apt_install("docker.io")
    print(f"starting dockerd (log: {DOCKERD_LOG})", flush=True)
    with open(DOCKERD_LOG, "ab") as log:
        subprocess.Popen(["dockerd"], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                         start_new_session=True)
    deadline = time.monotonic() + ENGINE_START_S
    while time.monotonic() < deadline:
        if engine_answers():
            return
        time.sleep(0.5)
    raise ImageError(f"dockerd did not answer within {ENGINE_START_S:.0f} s; see {DOCKERD_LOG}")


def image_exists(name: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", name], capture_output=True).returncode == 0


def ensure_base(base: str) -> tuple[str, bool]:
    """(base image to build on, whether it is the stand-in): ``base`` if present or pullable, else the stand-in
    (only for the official base: another base that can't be had is an error)."""
    if image_exists(base) or subprocess.run(["docker", "pull", "--quiet", base], capture_output=True).returncode == 0:
        return base, False
    if base != OFFICIAL_BASE:
        raise ImageError(f"the base image {base} is neither present nor pullable")
    if not image_exists(STAND_IN_BASE):
        print(f"{base} can't be pulled here: building the stand-in {STAND_IN_BASE} from Debian's packages "
              "(mmdebstrap)", flush=True)
        if shutil.which("mmdebstrap") is None:
            apt_install("mmdebstrap")
        tarball = ROOT / "build" / "base-bookworm.tar"
        tarball.parent.mkdir(parents=True, exist_ok=True)
        run(["mmdebstrap", "--quiet", "--variant=minbase", f"--include={STAND_IN_PACKAGES}", "bookworm",
             str(tarball)], "mmdebstrap")
        run(["docker", "import", "--change", "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
             "--change", 'CMD ["python3"]', str(tarball), STAND_IN_BASE], "docker import")
        tarball.unlink()
    else:
        print(f"{base} can't be pulled here: using the stand-in {STAND_IN_BASE} (Debian's python3 3.11)", flush=True)
    return STAND_IN_BASE, True


def build_wheelhouse() -> Path:
    """Every wheel of the pinned lock, for this platform and Python 3.11, downloaded by this machine's pip."""
    run([sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "--no-deps",
         "-r", str(ROOT / "requirements-serve.txt"), "-d", str(WHEELHOUSE)], "pip download (the wheelhouse)")
    return WHEELHOUSE


def build_repository() -> None:
    """The default repository that the image bakes in, exported and generated as `make repository` does."""
    run([sys.executable, "-m", "server.repository", "--spec", "pipelines.toml", "--repository", "model_repository"],
        "generating model_repository", cwd=ROOT)


def build(base: str = OFFICIAL_BASE, image: str = IMAGE) -> Built:
    ensure_engine()
    build_wheelhouse()
    build_repository()
    base_image, stand_in = ensure_base(base)
    tags = (f"{image}:latest", f"{image}:{version()}")
    started = time.monotonic()
    command = ["docker", "build", "--file", "Dockerfile.cpu", "--build-arg", f"BASE={base_image}",
               *(word for tag in tags for word in ("--tag", tag)), "."]
    result = subprocess.run(command, cwd=ROOT, env={**os.environ, "DOCKER_BUILDKIT": "0"}, capture_output=True,
                            text=True)
    if result.returncode != 0:
        sys.stderr.write(result.stdout[-4000:] + result.stderr[-4000:])
        raise ImageError(f"docker build failed (exit status {result.returncode}); its output is above")
    seconds = time.monotonic() - started
    size = int(run(["docker", "image", "inspect", "--format", "{{.Size}}", tags[0]], "docker image inspect")
               .stdout.strip())
    return Built(tags, base_image, stand_in, seconds, size)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("engine", help="make sure a Docker engine answers (installs and starts one if not)")
    build_parser = commands.add_parser("build", help="build and tag the CPU image")
    build_parser.add_argument("--base", default=OFFICIAL_BASE, help=f"base image (default {OFFICIAL_BASE})")
    build_parser.add_argument("--image", default=IMAGE, help=f"image name (default {IMAGE})")
    args = parser.parse_args(argv)
    try:
        if args.command == "engine":
            ensure_engine()
            print("docker engine answers")
            return 0
        built = build(args.base, args.image)
    except ImageError as exc:
        print(f"image: error: {exc}", file=sys.stderr)
        return 1
    note = f" on the stand-in base {built.base} (the official {OFFICIAL_BASE} can't be pulled here)" \
        if built.stand_in else f" on {built.base}"
    print(f"built {', '.join(built.tags)}{note}: {built.size_bytes / 1e6:.0f} MB, docker build {built.seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
