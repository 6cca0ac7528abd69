"""One registry, one factory: backbone name -> model; `build(cfg)` is the only way models are made.

Every model maps N x 3 x H x W images to N x num_classes x H x W logits.
"""
from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from models import weights
from models.config import ConfigError, ModelConfig, check_field_types
from models.smp_models import SMP_ARCHS, build_smp
from models.unet_scratch import UNetScratch

SCRATCH = "unet_scratch"
SMP_ENCODERS = ("vgg11", "vgg11_bn", "resnet18", "resnet34", "tu-mobilenetv3_large_100", "efficientnet-b0")
BACKBONES = (SCRATCH, *SMP_ENCODERS)
# DeepLabV3+ runs its encoder dilated; smp's VGG encoders cannot (they downsample by max pooling)
NOT_DILATABLE = ("vgg11", "vgg11_bn")
# Friendly names used by the search spaces and the CLI -> registry names.
ALIASES = {
    "mobilenetv3-large": "tu-mobilenetv3_large_100",
    "mobilenetv3_large_100": "tu-mobilenetv3_large_100",
    "efficientnet_b0": "efficientnet-b0",
    "scratch": SCRATCH,
}
SMP_STRIDE = 32  # smp encoders downsample 5 times: H and W must be multiples of this


def available_backbones() -> list[str]:
    return list(BACKBONES)


def available_archs() -> list[str]:
    return list(SMP_ARCHS)


def canonical_backbone(name: str) -> str:
    """Registry name for `name` or an alias; ConfigError listing the valid names otherwise."""
    name = ALIASES.get(name, name)
    if name not in BACKBONES:
        valid = ", ".join([*BACKBONES, *(f"{a} (= {n})" for a, n in ALIASES.items())])
        raise ConfigError("ModelConfig.backbone", name, f"one of {valid}")
    return name


def validate(cfg: ModelConfig) -> ModelConfig:
    """Raise ConfigError naming the first bad field; return cfg with its backbone alias resolved."""
    check_field_types(cfg)
    cfg = replace(cfg, backbone=canonical_backbone(cfg.backbone))
    if cfg.arch not in SMP_ARCHS:
        raise ConfigError("ModelConfig.arch", cfg.arch, f"one of {', '.join(SMP_ARCHS)}")
    if cfg.arch == "deeplabv3plus" and cfg.backbone in NOT_DILATABLE:
        raise ConfigError("ModelConfig.arch", cfg.arch, f"an architecture other than deeplabv3plus for {cfg.backbone} "
                          f"(DeepLabV3+ needs a dilated encoder; VGG encoders cannot dilate)")
    if not 0.0 <= cfg.dropout < 1.0:
        raise ConfigError("ModelConfig.dropout", cfg.dropout, "a probability in [0, 1)")
    for name in ("num_classes", "in_channels", "scratch_width"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"ModelConfig.{name}", getattr(cfg, name), "an integer >= 1")
    if cfg.scratch_depth < 2:
        raise ConfigError("ModelConfig.scratch_depth", cfg.scratch_depth, "an integer >= 2")
    problem = weights.check_weights_spec(cfg.encoder_weights)
    if problem:
        raise ConfigError("ModelConfig.encoder_weights", cfg.encoder_weights, problem)
    if cfg.backbone == SCRATCH and cfg.encoder_weights != weights.NONE:
        raise ConfigError("ModelConfig.encoder_weights", cfg.encoder_weights, "none for unet_scratch (no encoder)")
    return cfg


def size_multiple(cfg: ModelConfig) -> int:
    """What H and W must be multiples of: 2**(depth-1) for the scratch U-Net's pools, 32 for smp."""
    return 2 ** (cfg.scratch_depth - 1) if canonical_backbone(cfg.backbone) == SCRATCH else SMP_STRIDE


def validate_image_size(cfg: ModelConfig, image_size: tuple[int, int]) -> tuple[int, int]:
    """ConfigError naming image_size unless (H, W) are positive multiples of what the model needs."""
    multiple = size_multiple(cfg)
    if len(image_size) != 2 or any(s <= 0 or s % multiple for s in image_size):
        raise ConfigError("image_size", tuple(image_size),
                          f"(H, W) both positive multiples of {multiple} for backbone {cfg.backbone}")
    return tuple(image_size)


def build_skeleton(cfg: ModelConfig) -> nn.Module:
    """The model `cfg` describes without its weights, on the meta device: shapes only, no memory, no file
    or hub read. For sizing models and checking weights files before anything is trained."""
    with torch.device("meta"):
        return build(replace(validate(cfg), encoder_weights=weights.NONE))


def check_weights_file(cfg: ModelConfig) -> None:
    """WeightsError naming the file unless cfg's encoder weights file reads and fits its encoder (checked
    against a skeleton: nothing but the file is loaded)."""
    cfg = validate(cfg)
    if weights.is_weights_file(cfg.encoder_weights):
        weights.check_encoder_file(build_skeleton(cfg).encoder, cfg.encoder_weights, cfg.backbone)


def build(cfg: ModelConfig) -> nn.Module:
    """The model `cfg` describes, with its encoder weights loaded (WeightsError if they cannot be had)."""
    cfg = validate(cfg)
    if cfg.backbone == SCRATCH:
        return UNetScratch(cfg.in_channels, cfg.num_classes, cfg.scratch_width, cfg.scratch_depth, cfg.dropout)
    smp_args = dict(in_channels=cfg.in_channels, num_classes=cfg.num_classes, dropout=cfg.dropout)
    if cfg.encoder_weights == weights.IMAGENET and cfg.backbone.startswith("tu-"):
        # timm loads (and adapts) its own pretrained file; we only point it at the cached copy.
        overlay = weights.timm_file_overlay(weights.imagenet_file(cfg.backbone))
        return build_smp(cfg.arch, cfg.backbone, timm_kwargs=overlay, **smp_args)
    model = build_smp(cfg.arch, cfg.backbone, **smp_args)
    if cfg.encoder_weights == weights.IMAGENET:
        weights.load_encoder_file(model.encoder, weights.imagenet_file(cfg.backbone), cfg.backbone)
    elif cfg.encoder_weights != weights.NONE:
        weights.load_encoder_file(model.encoder, cfg.encoder_weights, cfg.backbone)
    return model
