"""python -m server.repository: the spec in, the repository's pipelines out, one line on error."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from server.pipeline_spec import SpecError
from server.repository.exports import PROJECT_ROOT
from server.repository.writer import generate
from server.spec_file import load_spec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server.repository",
        description="Generate the Triton model repository's pipelines from the declarative spec.")
    parser.add_argument("--spec", type=Path, default=PROJECT_ROOT / "pipelines.toml")
    parser.add_argument("--repository", type=Path, default=PROJECT_ROOT / "model_repository")
    parser.add_argument("--target", choices=["cpu", "gpu"], default="cpu",
                        help="gpu: member models on GPU instances with TensorRT FP16, profiles and warm-up "
                             "(NVIDIA's tritonserver container)")
    args = parser.parse_args(argv)
    try:
        spec = load_spec(args.spec)
        changed = generate(spec, args.repository, args.target)
    except SpecError as exc:
        print(f"repository: error: {exc}", file=sys.stderr)
        return 1
    print(f"{len(spec.pipelines)} pipelines in {args.repository}: "
          + (f"{len(changed)} files written" if changed else "already up to date"))
    return 0
