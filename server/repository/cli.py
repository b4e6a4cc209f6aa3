"""python -m server.repository: the spec in, the repository's pipelines out, one line on error."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from client.contract import KEY_ENV, KEY_FILE_ENV
from server.pipeline_spec import SpecError
from server.repository.apply import apply
from server.repository.exports import PROJECT_ROOT
from server.repository.writer import generate
from server.spec_file import load_spec
from server.triton_access import AccessKeyError, read_key


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server.repository",
        description="Generate the Triton model repository's pipelines from the declarative spec.")
    parser.add_argument("--spec", type=Path, default=PROJECT_ROOT / "pipelines.toml")
    parser.add_argument("--repository", type=Path, default=PROJECT_ROOT / "model_repository")
    parser.add_argument("--target", choices=["cpu", "gpu"], default="cpu",
                        help="gpu: member models on GPU instances with TensorRT FP16, profiles and warm-up "
                             "(NVIDIA's tritonserver container)")
    parser.add_argument("--apply", metavar="HOST:PORT",
                        help="also load what changed into the Triton running there (its HTTP endpoint), no restart")
    parser.add_argument("--triton-key-file", help=f"Triton's access key for --apply (else ${KEY_ENV} or "
                                                  f"${KEY_FILE_ENV})")
    args = parser.parse_args(argv)
    try:
        spec = load_spec(args.spec)
        key = read_key(args.triton_key_file) if args.apply else None
        changed = generate(spec, args.repository, args.target)
    except (SpecError, AccessKeyError) as exc:
        print(f"repository: error: {exc}", file=sys.stderr)
        return 1
    print(f"{len(spec.pipelines)} pipelines in {args.repository}: "
          + (f"{len(changed)} files written" if changed else "already up to date"))
    if args.apply and changed:
        try:
            members = {member for pipeline in spec.pipelines.values() for member in pipeline.members}
            for line in apply(changed, args.repository, args.apply, key, members):
                print(f"  {line}")
        except OSError as exc:
            print(f"repository: error: Triton at {args.apply} refused: {exc}", file=sys.stderr)
            return 1
    return 0
