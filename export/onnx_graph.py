"""Build the paper's fully-convolutional VGG as an ONNX graph straight from the weights.

The graph is written op by op rather than traced, so it holds exactly what dense evaluation needs (normalisation,
convs with batch norm folded in, fc6 as a kxk conv, fc7/fc8 as 1x1 convs, spatial mean, softmax) and nothing of
training (dropout, torchvision's adaptive pool). Being independent of PyTorch's own graph, its equality with the
PyTorch model at export time is a real check.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper
from torch import nn

from client.contract import INPUT, PROBS, SCORES
from vgg.nets import LRN_ALPHA, LRN_BETA, LRN_K, LRN_SIZE, VGG

OPSET = 17  # served by onnxruntime >= 1.13, i.e. every Triton release since 22.12
INPUT_NAME, PROBS_NAME, SCORES_NAME = INPUT, PROBS, SCORES  # what the pipelines and their callers expect


@dataclass(frozen=True)
class Normalization:
    """How 0-255 RGB input becomes the net's input: (x - mean) / std, channels then reordered if BGR.

    mean and std are given per RGB channel on the 0-255 scale.
    """

    name: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    bgr: bool = False

    @classmethod
    def preset(cls, name: str, bgr: bool = False) -> Normalization:
        if name == "torchvision":
            return cls(name, (0.485 * 255, 0.456 * 255, 0.406 * 255), (0.229 * 255, 0.224 * 255, 0.225 * 255), bgr)
        if name == "mean-rgb":  # the paper: subtract the training set's mean RGB value, nothing else
            return cls(name, (123.68, 116.779, 103.939), (1.0, 1.0, 1.0), bgr)
        raise ValueError(f"unknown normalisation {name!r}; expected torchvision or mean-rgb")

    def apply(self, image: torch.Tensor) -> torch.Tensor:
        """The PyTorch twin of the graph's first ops, for validation and training."""
        mean = torch.tensor(self.mean, dtype=image.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=image.dtype).view(1, 3, 1, 1)
        x = (image - mean) / std
        return x.flip(1) if self.bgr else x


@dataclass
class ConvSpec:
    weight: np.ndarray
    bias: np.ndarray
    pad: int


def fold_features(vgg: VGG) -> list[ConvSpec | str]:
    """Feature layers as folded convs, 'pool' and 'lrn'; ReLU follows every conv."""
    layers: list[ConvSpec | str] = []
    modules = list(vgg.features)
    for i, module in enumerate(modules):
        if isinstance(module, nn.Conv2d):
            weight, bias = module.weight.detach(), module.bias.detach()
            following = modules[i + 1] if i + 1 < len(modules) else None
            if isinstance(following, nn.BatchNorm2d):  # fold in float64, then back to the weights' precision
                scale = following.weight.double() / torch.sqrt(following.running_var.double() + following.eps)
                bias = ((bias.double() - following.running_mean.double()) * scale + following.bias.double()).float()
                weight = (weight.double() * scale.view(-1, 1, 1, 1)).float()
            layers.append(ConvSpec(weight.detach().numpy(), bias.detach().numpy(), module.padding[0]))
        elif isinstance(module, nn.MaxPool2d):
            layers.append("pool")
        elif isinstance(module, nn.LocalResponseNorm):
            layers.append("lrn")
    return layers


def fully_connected_as_convs(vgg: VGG) -> list[ConvSpec]:
    """fc6 -> kxk conv over the last feature map, fc7/fc8 -> 1x1 convs."""
    config = vgg.config
    k, c = config.fc6_kernel, config.last_channels
    specs = []
    for index, shape in ((0, (config.hidden, c, k, k)), (3, (config.hidden, config.hidden, 1, 1)),
                         (6, (config.num_classes, config.hidden, 1, 1))):
        linear = vgg.classifier[index]
        specs.append(ConvSpec(linear.weight.detach().reshape(shape).numpy(), linear.bias.detach().numpy(), 0))
    return specs


def write_onnx(path: Path, vgg: VGG, normalization: Normalization, metadata: dict[str, str] | None = None,
               fp16: bool = False) -> None:
    """Write the dense-evaluation model: image [N,3,H,W] 0-255 RGB -> probs [N,C], scores [N,C,h,w].

    The weights are streamed into the file one tensor at a time, each as its own protobuf chunk that merges into
    graph.initializer when parsed. Serialising a whole full-size VGG at once would hold three copies of its 0.5 GB.
    """
    model, constants = _graph_and_weights(vgg, normalization, metadata, fp16)
    with open(path, "wb") as out:
        out.write(model.SerializeToString())
        for name, array in constants:
            tensor = TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(array.dtype), dims=array.shape)
            tensor.raw_data = np.ascontiguousarray(array).tobytes()
            chunk = onnx.GraphProto()
            chunk.initializer.append(tensor)
            del tensor
            out.write(_GRAPH_FIELD_TAG + _varint(chunk.ByteSize()))
            out.write(chunk.SerializeToString())


_GRAPH_FIELD_TAG = bytes([(7 << 3) | 2])  # ModelProto.graph is field 7, length-delimited


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _graph_and_weights(vgg: VGG, normalization: Normalization, metadata: dict[str, str] | None,
                       fp16: bool) -> tuple[onnx.ModelProto, list[tuple[str, np.ndarray]]]:
    """The graph without its initializers, and the initializers as (name, array)."""
    nodes: list[onnx.NodeProto] = []
    constants: list[tuple[str, np.ndarray]] = []
    weight_type = np.float16 if fp16 else np.float32

    def constant(name: str, array: np.ndarray) -> str:
        constants.append((name, array))
        return name

    mean = np.array(normalization.mean, np.float32).reshape(1, 3, 1, 1)
    std = np.array(normalization.std, np.float32).reshape(1, 3, 1, 1)
    nodes.append(helper.make_node("Sub", [INPUT_NAME, constant("rgb_mean", mean)], ["centred"], name="subtract_mean"))
    nodes.append(helper.make_node("Div", ["centred", constant("rgb_std", std)], ["normalized"], name="divide_std"))
    current = "normalized"
    if fp16:
        nodes.append(helper.make_node("Cast", [current], ["normalized_fp16"], to=TensorProto.FLOAT16))
        current = "normalized_fp16"

    feature_layers = fold_features(vgg)
    first_conv = True
    block, conv_in_block = 1, 0
    for layer in feature_layers:
        if layer == "pool":
            out = f"pool{block}"
            nodes.append(helper.make_node("MaxPool", [current], [out], kernel_shape=[2, 2], strides=[2, 2], name=out))
            block, conv_in_block, current = block + 1, 0, out
        elif layer == "lrn":
            out = f"lrn{block}"
            nodes.append(helper.make_node("LRN", [current], [out], size=LRN_SIZE, alpha=LRN_ALPHA, beta=LRN_BETA,
                                          bias=LRN_K, name=out))
            current = out
        else:
            conv_in_block += 1
            name = f"conv{block}_{conv_in_block}"
            weight = layer.weight
            if first_conv and normalization.bgr:
                weight = weight[:, ::-1]  # the net wants BGR: reorder its input channels instead of the image's
            first_conv = False
            current = _conv_relu(nodes, constant, name, current, weight.astype(weight_type),
                                 layer.bias.astype(weight_type), layer.pad, relu=True)

    fc6, fc7, fc8 = fully_connected_as_convs(vgg)
    current = _conv_relu(nodes, constant, "fc6", current, fc6.weight.astype(weight_type), fc6.bias.astype(weight_type),
                         0, relu=True)
    current = _conv_relu(nodes, constant, "fc7", current, fc7.weight.astype(weight_type), fc7.bias.astype(weight_type),
                         0, relu=True)
    scores_out = "scores_fp16" if fp16 else SCORES_NAME
    _conv_relu(nodes, constant, "fc8", current, fc8.weight.astype(weight_type), fc8.bias.astype(weight_type), 0,
               relu=False, output=scores_out)
    if fp16:
        nodes.append(helper.make_node("Cast", [scores_out], [SCORES_NAME], to=TensorProto.FLOAT))
    nodes.append(helper.make_node("ReduceMean", [SCORES_NAME], ["mean_scores"], axes=[2, 3], keepdims=0,
                                  name="spatial_average"))
    nodes.append(helper.make_node("Softmax", ["mean_scores"], [PROBS_NAME], axis=1, name="softmax"))

    classes = vgg.config.num_classes
    graph = helper.make_graph(
        nodes, "vgg_fully_convolutional",
        inputs=[helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", 3, "H", "W"])],
        outputs=[helper.make_tensor_value_info(PROBS_NAME, TensorProto.FLOAT, ["N", classes]),
                 helper.make_tensor_value_info(SCORES_NAME, TensorProto.FLOAT, ["N", classes, "h", "w"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="vgg-serve")
    model.ir_version = 8  # readable by the onnxruntime in every Triton release since 22.12
    props = {
        "architecture": json.dumps(vgg.config.to_dict()),
        "normalization": json.dumps(asdict(normalization)),
        "min_input_size": str(vgg.config.training_size),
        "num_classes": str(classes),
        "weights": "fp16" if fp16 else "fp32",
        **(metadata or {}),
    }
    helper.set_model_props(model, props)
    return model, constants


def _conv_relu(nodes: list, constant, name: str, current: str, weight: np.ndarray, bias: np.ndarray, pad: int,
               relu: bool, output: str | None = None) -> str:
    conv_out = output or (name if not relu else f"{name}_pre")
    kernel = list(weight.shape[2:])
    nodes.append(helper.make_node("Conv", [current, constant(f"{name}.weight", weight), constant(f"{name}.bias", bias)],
                                  [conv_out], kernel_shape=kernel, pads=[pad] * 4, name=name))
    if not relu:
        return conv_out
    nodes.append(helper.make_node("Relu", [conv_out], [name], name=f"{name}_relu"))
    return name

