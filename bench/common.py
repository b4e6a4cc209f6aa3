"""What every benchmark needs: free loopback ports, a name for the machine, a median timing, the sample photo, and
a gateway in front of a Triton."""

from __future__ import annotations

import contextlib
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def machine() -> str:
    """CPU model, cores, kernel and the load average now: results from a shared machine need the latter."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), model)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{model}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, load average {load} at the end"


def median_ms(run: Callable[[], object], repeats: int) -> float:
    run()  # warm-up: first-run allocations and lazy initialisation are not what we measure
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def photo_jpeg(size: tuple[int, int] | None = None) -> bytes:
    """scikit-learn's bundled china.jpg (640x427), optionally resized, as a quality-90 JPEG: a real photo."""
    import io

    from PIL import Image
    from sklearn.datasets import load_sample_image

    image = Image.fromarray(load_sample_image("china.jpg"))
    buffer = io.BytesIO()
    (image.resize(size) if size else image).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def start_gateway(triton_url: str, timeout: float = 60, module: str = "server.gateway",
                  env: dict[str, str] | None = None, quiet: bool = False,
                  tree: Path | None = None) -> tuple[subprocess.Popen, str]:
    """`python -m server.gateway` (or another module taking its flags: bench.bare_proxy) on a free loopback port,
    once its /readyz answers 200: (process, base URL); ``env`` is added to this process's environment,
    ``quiet`` sends its stdout (the access log) to /dev/null, and ``tree`` runs another checkout's code."""
    import httpx

    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", module, "--triton-url", triton_url, "--port",
                                str(port), "--log-level", "warning"],
                               env={**os.environ, **(env or {}), **({"PYTHONPATH": str(tree)} if tree else {})},
                               cwd=tree, stdout=subprocess.DEVNULL if quiet else None)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.terminate()
    raise RuntimeError(f"{module} did not become ready")


def append_result(text: str, path: Path, title: str) -> None:
    """Print a run's section and add it to a results file that keeps every run (made with ``title`` if new)."""
    print(text)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# {title}\n")
    with path.open("a") as handle:
        handle.write(text)


def publish(text: str, path: Path) -> None:
    """Print a benchmark's report and keep it in bench/results/ (or wherever --out says)."""
    print(text)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
