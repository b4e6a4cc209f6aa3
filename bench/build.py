"""The benchmarks' models: full-size VGG checkpoints with random weights (speed does not depend on them), real
calibration photos, and the project's own exporter run as a user would run it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def random_checkpoints(folder: Path, layouts: dict[str, str]) -> dict[str, Path]:
    """{name: configuration letter} -> {name: checkpoint}, made in a subprocess so this process stays torch-free."""
    code = ("import sys, torch; from vgg.nets import VGG, VGGConfig\n"
            "for name, layout in zip(sys.argv[1::2], sys.argv[2::2]):\n"
            "    torch.manual_seed(0); m = VGG(VGGConfig(layout)); m.init_glorot()\n"
            f"    torch.save(m.state_dict(), '{folder}/' + name + '.pt'); del m\n")
    subprocess.run([sys.executable, "-c", code, *(x for pair in layouts.items() for x in pair)], check=True, cwd=ROOT)
    return {name: folder / f"{name}.pt" for name in layouts}


def calibration_photos(folder: Path) -> Path:
    """Real photos bundled with scikit-image and scikit-learn, and their mirrors: int8 calibration needs real
    activation statistics."""
    import skimage.data
    from PIL import Image
    from sklearn.datasets import load_sample_image

    target = folder / "calibration"
    target.mkdir(exist_ok=True)
    arrays = {n: getattr(skimage.data, n)() for n in ("astronaut", "coffee", "chelsea", "rocket", "cat")}
    arrays |= {n: load_sample_image(f"{n}.jpg") for n in ("china", "flower")}
    for name, array in arrays.items():
        image = Image.fromarray(array).convert("RGB")
        image.save(target / f"{name}.jpg")
        image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(target / f"{name}_m.jpg")
    return target


def export(checkpoint: Path, repository: Path, name: str, threads: int, *options: str) -> tuple[float, float]:
    """One `export/to_onnx.py` command: (seconds, peak MB of the command)."""
    command = [sys.executable, str(ROOT / "export" / "to_onnx.py"), str(checkpoint), "--repository", str(repository),
               "--name", name, "--threads", str(threads), *options]
    timer = ("import json, resource, subprocess, sys, time; start = time.perf_counter(); "
             "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
             "print(json.dumps([time.perf_counter() - start, "
             "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024]))")
    output = subprocess.run([sys.executable, "-c", timer, *command], check=True, capture_output=True, text=True,
                            cwd=ROOT).stdout
    seconds, peak = json.loads(output.strip().splitlines()[-1])
    return seconds, peak
