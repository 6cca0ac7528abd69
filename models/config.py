"""Model and training configuration: frozen dataclasses, every field with its unit or meaning.

Ray's flat trial dict becomes these in exactly one function (tuner/trainable.py); the CLI builds them
from flags in one function too. Nothing below reads the environment.
"""
from __future__ import annotations

import numbers
from dataclasses import asdict, dataclass, fields


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "vgg11"  # registry name: "unet_scratch" or an smp encoder (vgg11, resnet18, tu-mobilenetv3_large_100, ...)
    arch: str = "unet"  # smp architecture: unet | unetplusplus | fpn | deeplabv3plus | linknet (ignored by unet_scratch)
    encoder_weights: str = "none"  # none | imagenet | path to a local weights file (.pth/.safetensors)
    dropout: float = 0.0  # Dropout2d probability before the segmentation head, in [0, 1)
    num_classes: int = 4  # output channels (ground, sky, small rocks, large rocks)
    in_channels: int = 3  # RGB
    scratch_width: int = 16  # unet_scratch: channels of the first encoder block (doubles per level)
    scratch_depth: int = 4  # unet_scratch: number of encoder blocks (pooling steps = depth - 1)

    def to_dict(self) -> dict:
        return asdict(self)

    def unused_fields(self) -> set[str]:
        """Fields the chosen backbone ignores (a record shows them as not applicable, not as a tried value)."""
        return {"arch"} if self.backbone == "unet_scratch" else {"scratch_width", "scratch_depth"}


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 2  # passes over the training split
    batch_size: int = 8  # images per step
    lr: float = 1e-3  # peak learning rate
    optimizer: str = "adamw"  # adam | adamw | sgd
    momentum: float = 0.9  # sgd only
    nesterov: bool = False  # sgd only
    weight_decay: float = 0.0  # decoupled for adamw, L2 for adam/sgd
    loss: str = "ce"  # ce | weighted_ce | dice | ce_dice | focal
    focal_gamma: float = 2.0  # focal loss focusing parameter
    lr_schedule: str = "none"  # none | cosine | onecycle (stepped per batch)
    seed: int = 0  # seeds torch, numpy and the data order
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # mixed precision, used on CUDA only
    channels_last: bool = True  # memory format, used on CUDA only
    bn_recalibration_batches: int = 50  # after each epoch, BatchNorm statistics recomputed over this many train batches (0 = off)

    def to_dict(self) -> dict:
        return asdict(self)

    def unused_fields(self) -> set[str]:
        """Fields the chosen optimizer and loss ignore (amp and channels_last depend on the device instead)."""
        return ({"momentum", "nesterov"} if self.optimizer != "sgd" else set()) | \
            ({"focal_gamma"} if self.loss != "focal" else set())


class ConfigError(ValueError):
    """A bad config value; the message names the field, the value and what was expected."""

    def __init__(self, field_name: str, value, expected: str):
        super().__init__(f"{field_name}={value!r}: expected {expected}")
        self.field = field_name


def check_field_types(cfg) -> None:
    """ConfigError naming the first field whose value has the wrong type for its annotation (a YAML "1e-3"
    is text; a float range gives 4.0 for an integer field), before any check compares it with a number."""
    expected = {"int": (numbers.Integral, "an integer"), "float": (numbers.Real, "a number"),
                "bool": (bool, "true or false"), "str": (str, "text")}
    for f in fields(cfg):
        kind, what = expected[f.type]
        value = getattr(cfg, f.name)
        if not isinstance(value, kind) or (isinstance(value, bool) and f.type != "bool"):
            raise ConfigError(f"{type(cfg).__name__}.{f.name}", value, what)


OPTIMIZERS = ("adam", "adamw", "sgd")
LOSSES = ("ce", "weighted_ce", "dice", "ce_dice", "focal")
LR_SCHEDULES = ("none", "cosine", "onecycle")


def validate_train(cfg: TrainConfig) -> TrainConfig:
    """Raise ConfigError naming the first bad field of `cfg`; return it unchanged when valid."""
    check_field_types(cfg)
    checks = [
        ("epochs", cfg.epochs >= 1, "an integer >= 1"),
        ("seed", 0 <= cfg.seed < 2**32, "an integer in [0, 2**32)"),  # numpy's seed range
        # BatchNorm in training needs two images per step (DeepLabV3+'s pooled branch fails on one)
        ("batch_size", cfg.batch_size >= 2, "an integer >= 2"),
        ("lr", cfg.lr > 0 and cfg.lr == cfg.lr, "a learning rate > 0"),
        ("optimizer", cfg.optimizer in OPTIMIZERS, f"one of {', '.join(OPTIMIZERS)}"),
        ("momentum", 0 <= cfg.momentum < 1, "a value in [0, 1)"),
        ("nesterov", not (cfg.nesterov and cfg.momentum == 0), "momentum > 0 when nesterov is on"),
        ("weight_decay", cfg.weight_decay >= 0, "a value >= 0"),
        ("loss", cfg.loss in LOSSES, f"one of {', '.join(LOSSES)}"),
        ("focal_gamma", cfg.focal_gamma >= 0, "a value >= 0"),
        ("lr_schedule", cfg.lr_schedule in LR_SCHEDULES, f"one of {', '.join(LR_SCHEDULES)}"),
        ("bn_recalibration_batches", isinstance(cfg.bn_recalibration_batches, numbers.Integral)  # numpy ints too
         and cfg.bn_recalibration_batches >= 0, "an integer >= 0 (0 = off)"),
    ]
    for name, ok, expected in checks:
        if not ok:
            raise ConfigError(f"TrainConfig.{name}", getattr(cfg, name), expected)
    return cfg
