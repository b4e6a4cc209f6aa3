"""Everything one training run is made of, defaulting to the paper's Sec. 3.1, stored in every checkpoint.

The defaults are the paper's: batch 256, SGD with momentum 0.9, weight decay 5e-4, dropout 0.5 on fc6/fc7, learning
rate 1e-2 divided by 10 when the validation accuracy stops improving, 224-pixel crops, horizontal flips and PCA colour
shift. The demo models change only sizes (width, hidden units, crop, scales, batch, epochs) and turn flips off.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from vgg.nets import VGGConfig, parse_arch


class RecipeError(Exception):
    """Arguments that cannot make a training run; the message says why in one line."""


@dataclass(frozen=True)
class Recipe:
    data: str
    out: str
    arch: str = "A"
    width: float = 1.0
    hidden: int = 4096
    train_size: int = 224
    scale: tuple[int, int] = (256, 256)  # S_min, S_max; equal for a fixed training scale
    val: str | None = None
    val_fraction: float = 0.1
    val_scale: int | None = None  # Q for validation; default S, or (S_min + S_max) / 2 when jittering
    epochs: int = 74
    batch_size: int = 256
    lr: float = 1e-2
    momentum: float = 0.9
    weight_decay: float = 5e-4
    dropout: float = 0.5
    lr_factor: float = 0.1
    lr_patience: int = 2  # epochs without a validation-accuracy gain before the learning rate drops
    lr_threshold: float = 1e-3  # a gain smaller than this (absolute accuracy) does not count
    min_lr: float = 1e-5
    flip: bool = True
    pca_std: float = 0.1
    init_from: str | None = None
    seed: int = 0
    world_size: int = 1
    threads: int | None = None
    cache_images: bool = False
    log: str | None = None
    resume: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        try:
            parse_arch(self.arch)
        except ValueError as exc:
            raise RecipeError(str(exc)) from None
        if self.train_size % 32 or self.train_size < 32:
            raise RecipeError(f"--train-size {self.train_size} must be a positive multiple of 32 (five 2x2 pools)")
        low, high = self.scale
        if not self.train_size <= low <= high:
            raise RecipeError(f"--scale {low} {high}: need train size {self.train_size} <= S_min <= S_max")
        if self.val_scale is not None and self.val_scale < self.train_size:
            raise RecipeError(f"--val-scale {self.val_scale} is smaller than the training size {self.train_size}")
        if self.batch_size < self.world_size:
            raise RecipeError(f"--batch-size {self.batch_size} cannot be split over {self.world_size} processes")
        if self.epochs < 1 or self.world_size < 1 or self.width <= 0 or self.hidden < 1:
            raise RecipeError("--epochs, --world-size, --width and --hidden must be positive")
        if not 0 <= self.dropout < 1:
            raise RecipeError(f"--dropout {self.dropout} must be in [0, 1)")

    def model_config(self, num_classes: int) -> VGGConfig:
        layout, batch_norm = parse_arch(self.arch)
        return VGGConfig(layout, batch_norm, self.width, num_classes, self.hidden, self.train_size // 32)

    @property
    def validation_scale(self) -> int:
        return self.val_scale if self.val_scale is not None else (self.scale[0] + self.scale[1]) // 2

    @property
    def out_path(self) -> Path:
        return Path(self.out)

    def to_dict(self) -> dict:
        """JSON- and weights_only-safe: tuples become lists."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
