"""Members the repository lacks, exported from the checkpoints the spec names by export/to_onnx.py's CLI.

A subprocess, so the generator (and the server) never import torch; the exporter's own checks and messages stay the
exporter's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from server.pipeline_spec import Spec, SpecError
from vgg.staging import staging_dir

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def export_missing(spec: Spec, repository: Path) -> None:
    """Export each member that the repository lacks from its checkpoint, int8/bf16 variants included (a subprocess:
    the server never imports torch). The exporter writes into a staging repository beside the real one and only the
    missing models are moved in, so a model already served is never rewritten or given a new version."""
    needed = {m for p in spec.pipelines.values() for m in p.members}
    todo = []
    for source in sorted(spec.models.values(), key=lambda s: s.name):
        missing = {name: variant for name, variant in source.exported_names().items()
                   if name in needed and not (repository / name / "config.pbtxt").exists()}
        if source.checkpoint is not None and missing:
            todo.append((source, missing))
    for source, _ in todo:  # all inputs exist before the first export: no half-built repository from a typo
        for what, relative in (("checkpoint", source.checkpoint), ("labels", source.labels),
                               ("calibration", source.calibration)):
            if relative and not (PROJECT_ROOT / relative).exists():
                raise SpecError(f"models.{source.name}: {what} {PROJECT_ROOT / relative} does not exist "
                                "(relative paths start at the project root)")
    for source, missing in todo:
        command = [sys.executable, str(PROJECT_ROOT / "export" / "to_onnx.py"), str(PROJECT_ROOT / source.checkpoint),
                   "--name", source.name, "--instances", str(source.instances), "--threads", str(source.threads)]
        if not source.mem_arena:
            command += ["--no-mem-arena"]
        if source.labels:
            command += ["--labels", str(PROJECT_ROOT / source.labels)]
        variants = [variant for variant in missing.values() if variant]
        if "int8" in variants:
            command += ["--quantize", "int8"]
        if "bf16" in variants:
            command += ["--bf16"]
        if variants:
            command += ["--calibration", str(PROJECT_ROOT / (source.calibration or ""))]
        print(f"exporting {', '.join(missing)} from {source.checkpoint}", flush=True)
        staging = staging_dir(repository, f".export-{source.name}-")
        try:
            if subprocess.run([*command, "--repository", str(staging)]).returncode != 0:
                raise SpecError(f"exporting {source.name} from {source.checkpoint} failed (see above)")
            for name in missing:
                os.rename(staging / name, repository / name)
                print(f"installed {repository / name} (exported into the temporary {staging.name}/ above)", flush=True)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
