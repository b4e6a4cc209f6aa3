"""Export a trained VGG checkpoint to a validated, fully-convolutional ONNX model in a Triton repository.

    python export/to_onnx.py vgg16.pt                       # -> model_repository/vgg16/1/model.onnx
    python export/to_onnx.py ckpt.pth --arch vgg19_bn --name vgg19bn --labels my_labels.txt
"""

from __future__ import annotations

import argparse
import gc
import re
import resource
import shutil
import sys
import time
from pathlib import Path

from export.checkpoint import CheckpointError, load_vgg
from export.onnx_graph import Normalization, write_onnx
from export.quantize import QuantizationError, check_bf16, find_images, quantize_int8
from export.triton_config import ServingOptions, StagedModel, default_labels, model_config
from export.validate import compare_with_pytorch
from vgg.nets import VGGConfig


class ExportError(Exception):
    """A user-facing failure: printed as one line, exit status 1."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="to_onnx.py", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="state dict (.pt/.pth), wrapped or DataParallel")
    parser.add_argument("--arch", help="A, A-LRN, B, C, D, E or vgg11/13/16/19, optionally _bn; inferred if omitted")
    parser.add_argument("--quantize", choices=["int8"],
                        help="also write <name>_int8: static QDQ int8, calibrated on --calibration images")
    parser.add_argument("--bf16", action="store_true",
                        help="also write <name>_bf16: the same graph run by OpenVINO at bf16 precision")
    parser.add_argument("--calibration", type=Path,
                        help="folder of images: int8 calibration, and the held-out check of int8 and bf16")
    parser.add_argument("--min-top1-agreement", type=float, default=0.99,
                        help="refuse an int8/bf16 model whose top-1 agrees with FP32 less often (default 0.99)")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="allow a pickled nn.Module (unpickling runs code from the file)")
    parser.add_argument("--repository", type=Path, default=Path("model_repository"),
                        help="the Triton model repository to write NAME/VERSION/ into (default: model_repository)")
    parser.add_argument("--name", help="Triton model name (default: the checkpoint's file name)")
    parser.add_argument("--version", type=int, help="model version (default: the next free one)")
    parser.add_argument("--labels", type=Path, help="class names, one a line (default: ImageNet-1k for 1000 classes)")
    parser.add_argument("--normalize", choices=["torchvision", "mean-rgb"], default="torchvision",
                        help="torchvision mean/std, or the paper's mean-RGB subtraction (Caffe-converted weights)")
    parser.add_argument("--bgr", action="store_true", help="the weights expect BGR channel order (Caffe)")
    parser.add_argument("--fp16", action="store_true", help="store weights in float16 (GPU deployments)")
    parser.add_argument("--max-batch-size", type=int, default=ServingOptions.max_batch_size)
    parser.add_argument("--instances", type=int, default=ServingOptions.instances)
    parser.add_argument("--threads", type=int, default=ServingOptions.intra_op_threads,
                        help="onnxruntime intra-op threads per instance (0: all cores)")
    parser.add_argument("--no-mem-arena", dest="mem_arena", action="store_false",
                        help="return activation memory after each request instead of keeping the largest "
                             "input's (less memory held, slower on large inputs)")
    args = parser.parse_args(argv)
    if (args.quantize or args.bf16) and args.calibration is None:
        parser.error("--quantize int8 and --bf16 need --calibration DIR")
    return args


def default_name(checkpoint: Path) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", checkpoint.name.split(".")[0]) or "vgg"


def read_labels(path: Path | None, num_classes: int) -> list[str]:
    if path is None:
        return default_labels(num_classes)
    try:
        labels = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise ExportError(f"{path}: cannot read labels ({exc.__class__.__name__})") from None
    if len(labels) != num_classes:
        raise ExportError(f"{path}: {len(labels)} labels for a model with {num_classes} classes")
    return labels


def export(args: argparse.Namespace) -> Path:
    started = time.perf_counter()
    if args.calibration:
        try:
            find_images(args.calibration)  # a bad calibration folder fails before any work is done
        except QuantizationError as exc:
            raise ExportError(str(exc)) from None
    vgg = load_vgg(args.checkpoint, args.arch, args.trust_pickle)
    config = vgg.config
    print(f"loaded {config.name}: width {config.width:g}, {config.num_classes} classes, hidden {config.hidden}, "
          f"training size {config.training_size}, {sum(p.numel() for p in vgg.parameters()) / 1e6:.1f} M parameters")
    labels = read_labels(args.labels, config.num_classes)
    normalization = Normalization.preset(args.normalize, bgr=args.bgr)
    name = default_name(args.checkpoint) if args.name is None else args.name
    serving = ServingOptions(max_batch_size=args.max_batch_size, instances=args.instances,
                             intra_op_threads=args.threads, mem_arena=args.mem_arena)
    try:
        with StagedModel(args.repository, name, args.version) as staged:
            write_onnx(staged.onnx_path, vgg, normalization, metadata={"source": args.checkpoint.name},
                       fp16=args.fp16)
            comparisons = compare_with_pytorch(staged.onnx_path, vgg, normalization, fp16=args.fp16)
            for comparison in comparisons:
                print(f"  {comparison}")
            if not all(c.ok for c in comparisons):
                raise ExportError("exported graph does not match the PyTorch model; nothing was written")
            size_mb = staged.onnx_path.stat().st_size / 1e6
            version_dir = staged.commit(model_config(name, config, normalization, serving, has_labels=True), labels)
    except (OSError, ValueError) as exc:
        raise ExportError(str(exc)) from None
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"wrote {version_dir / 'model.onnx'} ({size_mb:.1f} MB) in "
          f"{time.perf_counter() - started:.1f} s, peak memory {peak_mb:.0f} MB")
    del vgg  # the variants need only the ONNX file; a full-size net's weights would add 0.55 GB to their peak
    gc.collect()
    if args.quantize:
        write_variant("int8", args, name, config, normalization, serving, labels, version_dir / "model.onnx")
    if args.bf16:
        write_variant("bf16", args, name, config, normalization, serving, labels, version_dir / "model.onnx")
    return version_dir


def write_variant(precision: str, args: argparse.Namespace, name: str, config: VGGConfig,
                  normalization: Normalization, serving: ServingOptions, labels: list[str], fp32_path: Path) -> Path:
    """`<name>_int8` or `<name>_bf16` next to the FP32 model, only if it agrees with FP32 often enough."""
    variant = f"{name}_{precision}"
    try:
        with StagedModel(args.repository, variant, args.version) as staged:
            if precision == "int8":
                result = quantize_int8(fp32_path, staged.onnx_path, args.calibration, config.training_size)
            else:
                shutil.copyfile(fp32_path, staged.onnx_path)
                result = check_bf16(staged.onnx_path, args.calibration, config.training_size)
            print(f"  {result}")
            if result.top1_agreement < args.min_top1_agreement:
                raise ExportError(f"{precision} top-1 agreement {result.top1_agreement:.2%} is below "
                                  f"--min-top1-agreement {args.min_top1_agreement:.2%}; {variant} was not written")
            triton_config = model_config(variant, config, normalization, serving, has_labels=True)
            triton_config.parameters["vgg.precision"].string_value = precision
            if precision == "bf16":
                accelerator = triton_config.optimization.execution_accelerators.cpu_execution_accelerator.add()
                accelerator.name = "openvino"
                accelerator.parameters["precision"] = "bf16"
            version_dir = staged.commit(triton_config, labels)
    except (OSError, ValueError, QuantizationError) as exc:
        raise ExportError(str(exc)) from None
    print(f"wrote {version_dir / 'model.onnx'} ({(version_dir / 'model.onnx').stat().st_size / 1e6:.1f} MB)")
    return version_dir


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        export(args)
    except (CheckpointError, ExportError) as exc:
        print(f"to_onnx.py: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
