"""Lower-precision variants of an exported fully-convolutional VGG, each gated on agreement with FP32.

int8: static QDQ quantization, per-channel int8 weights and uint8 activations (the U8S8 pairing that AVX-512 VNNI
runs fastest), calibrated with MinMax on the user's images rescaled to the training size. bf16: the same ONNX file
run by OpenVINO at bf16 inference precision. Held-out images, evaluated densely at two scales, measure top-1
agreement and the max abs difference of probs against FP32 onnxruntime.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quant_pre_process, quantize_static

from vgg.imaging import ImageLimits, ImageRejected, decode_rgb, rescale
from vgg.runtimes import Accelerator, Runner, open_runner

FIRST_CONV_CHANNELS = 8  # onnxruntime's int8 conv kernel is far slower with 3 input channels than with 8
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
HOLDOUT_FRACTION = 0.25


class QuantizationError(Exception):
    """Calibration data or the quantized model's accuracy is not good enough; one readable line."""


@dataclass
class Agreement:
    images: int
    evaluations: int
    top1_agreement: float
    probs_max_abs: float

    precision: str = "int8"

    def __str__(self) -> str:
        return (f"{self.precision} vs FP32 on {self.images} held-out images ({self.evaluations} dense evaluations): "
                f"top-1 agreement {self.top1_agreement:.2%}, max |probs diff| {self.probs_max_abs:.2e}")


def find_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise QuantizationError(f"{folder}: calibration folder does not exist")
    images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if len(images) < 4:
        raise QuantizationError(f"{folder}: found {len(images)} images; calibration needs at least 4")
    return images


def split(images: list[Path], seed: int = 0) -> tuple[list[Path], list[Path]]:
    """Calibration and held-out sets, disjoint, chosen at random but reproducibly."""
    shuffled = images[:]
    random.Random(seed).shuffle(shuffled)
    held = max(1, int(len(shuffled) * HOLDOUT_FRACTION))
    return shuffled[held:], shuffled[:held]


def load_views(paths: list[Path], scale: int) -> list[np.ndarray]:
    """Each image as [1, 3, H, W] 0-255 with its smaller side at `scale`; unreadable files are skipped."""
    views = []
    for path in paths:
        try:
            image = decode_rgb(path.read_bytes(), ImageLimits())
        except (ImageRejected, OSError):
            continue
        views.append(rescale(image, scale)[None])
    return views


class _Reader(CalibrationDataReader):
    def __init__(self, views: list[np.ndarray]) -> None:
        self._views: Iterator[np.ndarray] = iter(views)

    def get_next(self) -> dict[str, np.ndarray] | None:
        view = next(self._views, None)
        return None if view is None else {"image": view}


def quantize_int8(fp32_path: Path, int8_path: Path, calibration: Path, training_size: int,
                  max_calibration_images: int = 64) -> Agreement:
    """Write the int8 model and measure it against FP32 on images it was not calibrated on."""
    calibrate_on, held_out = split(find_images(calibration))
    views = load_views(calibrate_on[:max_calibration_images], training_size)
    if not views:
        raise QuantizationError(f"{calibration}: none of the calibration images could be decoded")
    prepared = int8_path.with_name("prepared.onnx")  # shape-inferred and optimised, as onnxruntime recommends
    quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
    model = onnx.load(str(prepared))
    pad_first_conv(model, FIRST_CONV_CHANNELS)
    onnx.save(model, str(prepared))
    del model
    quantize_static(str(prepared), str(int8_path), _Reader(views), quant_format=QuantFormat.QDQ,
                    per_channel=True, reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    op_types_to_quantize=["Conv", "MaxPool", "Relu"], nodes_to_exclude=["fc8"],
                    extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
    prepared.unlink()
    return agreement(lambda: open_runner(str(fp32_path), Accelerator()),
                     lambda: open_runner(str(int8_path), Accelerator()),
                     held_out, [training_size, training_size * 3 // 2], "int8")


def pad_first_conv(model: onnx.ModelProto, channels: int) -> None:
    """Widen the RGB conv to `channels` inputs with zero weights fed by zero channels: the same outputs, but an
    int8 kernel with K = 9 x 8 instead of the 27 that leaves the VNNI units mostly idle."""
    weights = {tensor.name: tensor for tensor in model.graph.initializer}
    index, conv = next((i, n) for i, n in enumerate(model.graph.node)
                       if n.op_type == "Conv" and n.input[1] in weights and weights[n.input[1]].dims[1] == 3)
    weight = numpy_helper.to_array(weights[conv.input[1]])
    padded = np.zeros((weight.shape[0], channels, *weight.shape[2:]), dtype=weight.dtype)
    padded[:, :3] = weight
    weights[conv.input[1]].CopyFrom(numpy_helper.from_array(padded, conv.input[1]))
    pads = f"{conv.name}_channel_pads"
    model.graph.initializer.append(numpy_helper.from_array(np.array([0, 0, 0, 0, 0, channels - 3, 0, 0]), pads))
    widened = f"{conv.input[0]}_{channels}ch"
    model.graph.node.insert(index, helper.make_node("Pad", [conv.input[0], pads], [widened], f"{conv.name}_pad"))
    conv.input[0] = widened


def check_bf16(onnx_path: Path, images: Path, training_size: int) -> Agreement:
    """OpenVINO at bf16 precision against onnxruntime FP32, on the same file."""
    _, held_out = split(find_images(images))
    return agreement(lambda: open_runner(str(onnx_path), Accelerator()),
                     lambda: open_runner(str(onnx_path), Accelerator("openvino", "bf16")),
                     held_out, [training_size, training_size * 3 // 2], "bf16")


def agreement(fp32: Callable[[], Runner], candidate: Callable[[], Runner], images: list[Path], scales: list[int],
              precision: str) -> Agreement:
    """Top-1 agreement and max |probs diff| over every held-out image at every scale. The two runtimes are opened
    one after the other, so the check's peak memory is one full-size model's, not two."""
    views = [view for scale in scales for view in load_views(images, scale)]
    if not views:
        raise QuantizationError("none of the held-out images could be decoded")
    outputs = []
    for open_one in (fp32, candidate):
        runner = open_one()
        outputs.append([runner.run(["probs"], {"image": view})[0] for view in views])
        del runner
    agree = sum(int(r.argmax() == q.argmax()) for r, q in zip(*outputs, strict=True))
    worst = max(float(np.abs(r - q).max()) for r, q in zip(*outputs, strict=True))
    total = len(views)
    return Agreement(len(images), total, agree / total, worst, precision)
