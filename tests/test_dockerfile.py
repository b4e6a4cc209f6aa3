"""The GPU Dockerfile, checked without building it (NVIDIA's base can't be pulled here): hadolint, every COPY source
present and not ignored, pins that match requirements.txt, a pinned base image, a non-root user, a HEALTHCHECK, and
run instructions that follow the tested CPU image."""

from __future__ import annotations

import fnmatch
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    joined, out = "", []
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#") and not joined:
            continue
        if line.rstrip().endswith("\\"):
            joined += line.rstrip()[:-1] + " "
            continue
        joined += line
        if joined.strip():
            keyword, _, rest = joined.strip().partition(" ")
            out.append((keyword.upper(), rest.strip()))
        joined = ""
    return out


def ignored(path: str) -> bool:
    """Docker's .dockerignore semantics, as far as this project's allowlist uses them: last match wins."""
    verdict = False
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, pattern) or fnmatch.fnmatch(p, pattern.replace("**/", "")) for p in prefixes):
            verdict = not negate
    return verdict


def test_hadolint_passes():
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run([str(hadolint), "--no-color", str(DOCKERFILE)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_copied_path_exists_and_reaches_the_build_context():
    copies = [args for keyword, args in instructions() if keyword in ("COPY", "ADD")]
    assert copies
    for args in copies:
        words = [w for w in shlex.split(args) if not w.startswith("--")]
        for source in words[:-1]:
            assert (ROOT / source).exists(), f"COPY source {source} does not exist"
            assert not ignored(source.rstrip("/")), f"COPY source {source} is excluded by .dockerignore"
    assert ignored(".venv") and ignored("tests") and ignored("server/__pycache__")


def test_pins_match_requirements():
    pins = dict(line.split("#")[0].strip().lower().split("==") for line in
                (ROOT / "requirements-serve.txt").read_text().splitlines() if "==" in line.split("#")[0])
    run = " ".join(args for keyword, args in instructions() if keyword == "RUN")
    found = re.findall(r"([A-Za-z0-9_.-]+)(?:\[[a-z,]+\])?==([0-9][^\s\"']*)", run)
    assert {"fastapi", "numpy", "tritonclient"} <= {name.lower() for name, _ in found}
    for name, version in found:
        if name.lower() in pins:
            assert pins[name.lower()] == version, f"{name}: Dockerfile {version}, requirements.txt {pins[name.lower()]}"
    assert pins["numpy"].startswith("1.")


def test_base_image_user_healthcheck_and_run_documented():
    steps = instructions()
    bases = [args for keyword, args in steps if keyword == "FROM"]
    assert len(bases) == 1 and re.fullmatch(r"nvcr\.io/nvidia/tritonserver:\d\d\.\d\d-py3", bases[0])
    users = [args for keyword, args in steps if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    last_user = max(i for i, (keyword, _) in enumerate(steps) if keyword == "USER")
    assert last_user < next(i for i, (keyword, _) in enumerate(steps) if keyword == "CMD")
    assert any(keyword == "HEALTHCHECK" and "/readyz" in args for keyword, args in steps)
    assert "--read-only" in DOCKERFILE.read_text()  # run as the CPU image is run and tested
    assert "--shm-size" in DOCKERFILE.read_text() and "--shm-size" in (ROOT / "docs" / "gateway.md").read_text()
