"""VGG configurations A–E (Simonyan & Zisserman, Table 1) with torchvision-compatible parameter names.

`features.N.*` and `classifier.{0,3,6}.*` match torchvision's VGG exactly, so its `vgg11/13/16/19[_bn]` state dicts
load without renaming. A-LRN and C, which torchvision lacks, follow the same indexing scheme.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

# A layer token: an int is a 3x3 conv with that many (full-width) channels, "1x1:N" a 1x1 conv (config C),
# "M" a 2x2 max-pool, "LRN" local response normalisation (A-LRN).
LAYOUTS: dict[str, list[int | str]] = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "A-LRN": [64, "LRN", "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "C": [64, 64, "M", 128, 128, "M", 256, 256, "1x1:256", "M", 512, 512, "1x1:512", "M",
          512, 512, "1x1:512", "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
          512, 512, 512, 512, "M"],
}

# torchvision's model names for the configurations it ships.
TORCHVISION_NAMES = {"vgg11": "A", "vgg13": "B", "vgg16": "D", "vgg19": "E"}

# AlexNet's LRN settings, which the paper's A-LRN uses.
LRN_SIZE, LRN_ALPHA, LRN_BETA, LRN_K = 5, 1e-4, 0.75, 2.0


@dataclass(frozen=True)
class VGGConfig:
    """Everything needed to rebuild a VGG net; inferred from a checkpoint's tensors when not given."""

    layout: str = "D"
    batch_norm: bool = False
    width: float = 1.0
    num_classes: int = 1000
    hidden: int = 4096
    fc6_kernel: int = 7  # fc6's input is fc6_kernel x fc6_kernel x channels: 7 for 224-pixel training crops

    @property
    def training_size(self) -> int:
        """Side of the training crop: five 2x2 pools shrink it to fc6_kernel."""
        return self.fc6_kernel * 32

    @property
    def name(self) -> str:
        return f"vgg-{self.layout}{'-bn' if self.batch_norm else ''}"

    def conv_channels(self, full_width: int) -> int:
        return max(1, round(full_width * self.width))

    def tokens(self) -> list[tuple[str, int]]:
        """The feature layers as (kind, out_channels) with kind in conv3, conv1, pool, lrn."""
        out: list[tuple[str, int]] = []
        for token in LAYOUTS[self.layout]:
            if token == "M":
                out.append(("pool", 0))
            elif token == "LRN":
                out.append(("lrn", 0))
            elif isinstance(token, str):
                out.append(("conv1", self.conv_channels(int(token.split(":")[1]))))
            else:
                out.append(("conv3", self.conv_channels(token)))
        return out

    @property
    def last_channels(self) -> int:
        return [c for kind, c in self.tokens() if kind.startswith("conv")][-1]

    def to_dict(self) -> dict:
        return asdict(self)


def parse_arch(arch: str) -> tuple[str, bool]:
    """'vgg16_bn', 'D', 'd-bn', 'A-LRN' -> (layout, batch_norm)."""
    name = arch.strip()
    batch_norm = False
    for suffix in ("_bn", "-bn"):
        if name.lower().endswith(suffix):
            name, batch_norm = name[: -len(suffix)], True
    layout = TORCHVISION_NAMES.get(name.lower(), name.upper())
    if layout not in LAYOUTS:
        choices = ", ".join(list(LAYOUTS) + list(TORCHVISION_NAMES))
        raise ValueError(f"unknown architecture {arch!r}; expected one of {choices}, optionally with _bn")
    return layout, batch_norm


def make_features(config: VGGConfig) -> nn.Sequential:
    layers: list[nn.Module] = []
    in_channels = 3
    for kind, channels in config.tokens():
        if kind == "pool":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        elif kind == "lrn":
            layers.append(nn.LocalResponseNorm(LRN_SIZE, alpha=LRN_ALPHA, beta=LRN_BETA, k=LRN_K))
        else:
            kernel = 3 if kind == "conv3" else 1
            layers.append(nn.Conv2d(in_channels, channels, kernel_size=kernel, padding=kernel // 2))
            if config.batch_norm:
                layers.append(nn.BatchNorm2d(channels))
            layers.append(nn.ReLU(inplace=True))
            in_channels = channels
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """The paper's VGG with its fully-connected head, as trained (and as torchvision defines it)."""

    def __init__(self, config: VGGConfig, dropout: float = 0.5) -> None:
        super().__init__()
        self.config = config
        k = config.fc6_kernel
        self.features = make_features(config)
        self.avgpool = nn.AdaptiveAvgPool2d((k, k))  # identity at the training size, as in torchvision
        self.classifier = nn.Sequential(
            nn.Linear(config.last_channels * k * k, config.hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(config.hidden, config.hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(config.hidden, config.num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))

    def init_glorot(self) -> None:
        """The paper's random initialisation (Glorot & Bengio), zero biases."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)


class FullyConvolutionalVGG(nn.Module):
    """The paper's dense-evaluation net in PyTorch: fc6 as a kxk conv, fc7/fc8 as 1x1 convs.

    Returns the class score map; the exporter's ONNX graph is checked against this and against `VGG`.
    """

    def __init__(self, vgg: VGG) -> None:
        super().__init__()
        config = vgg.config
        k, c = config.fc6_kernel, config.last_channels
        self.features = vgg.features
        fc6, fc7, fc8 = (vgg.classifier[i] for i in (0, 3, 6))
        self.fc6 = nn.Conv2d(c, config.hidden, kernel_size=k)
        self.fc7 = nn.Conv2d(config.hidden, config.hidden, kernel_size=1)
        self.fc8 = nn.Conv2d(config.hidden, config.num_classes, kernel_size=1)
        with torch.no_grad():
            for conv, linear in ((self.fc6, fc6), (self.fc7, fc7), (self.fc8, fc8)):
                conv.weight.copy_(linear.weight.reshape(conv.weight.shape))
                conv.bias.copy_(linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc6(self.features(x)))
        x = torch.relu(self.fc7(x))
        return self.fc8(x)
