"""The pure training loop: no Ray, no MLflow. `train_one_epoch` and `evaluate` return plain dicts.

Batches are `(images float32 N x 3 x H x W, masks int64 N x H x W)`. On CUDA, mixed precision uses
bfloat16 where the GPU supports it (no loss scaling needed), else float16 with a GradScaler; models and
inputs use channels_last there. On CPU both are off: they only slow it down.

Each epoch ends by recomputing the BatchNorm running statistics with the epoch's final weights
(`recalibrate_batchnorm`): evaluation, checkpoints and exports all use those statistics.
"""
from __future__ import annotations

import itertools
import math
import random
import time
from contextlib import nullcontext
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from models.config import ConfigError, TrainConfig
from models.metrics import LOSS, ConfusionMatrix, segmentation_metrics

ONECYCLE_WARMUP = 0.3  # share of all steps spent warming up in the one-cycle schedule
ONECYCLE_START = 1 / 25  # one-cycle starts at this fraction of the peak lr (and ends at it / 1e4, as torch)


class DivergedError(RuntimeError):
    """The loss became NaN/inf: the run stops with status "diverged"."""

    def __init__(self, epoch: int, step: int, loss: float, lr: float):
        super().__init__(f"training diverged: loss is {loss} at epoch {epoch}, step {step} (lr {lr:.3g}); "
                         f"try a lower learning rate or another loss/optimizer")
        self.epoch, self.step, self.loss, self.lr = epoch, step, loss, lr


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices); make cuDNN pick deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def resolve_device(spec: str = "auto") -> torch.device:
    """auto (CUDA if present, else CPU) | cpu | cuda | cuda:N; ConfigError if CUDA is asked for but absent."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ConfigError("TrainConfig.device", spec, "auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("TrainConfig.device", spec, "auto or cpu: this machine has no CUDA device")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError("TrainConfig.device", spec, "auto, cpu, cuda or cuda:N")
    return device


def describe_device(device: torch.device, amp: bool = False) -> str:
    """What a run trained on, for people comparing runs: "cpu", or "cuda:0 NVIDIA H200 (bf16 autocast)"."""
    if device.type != "cuda":
        return str(device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return f"cuda:{index} {torch.cuda.get_device_name(index)}" + (f" ({precision} autocast)" if amp else "")


def uses_cuda_extras(device: torch.device, enabled: bool) -> bool:
    """AMP and channels_last are CUDA-only: this is the one place that rule lives."""
    return enabled and device.type == "cuda"


def prepare_model(model: nn.Module, device: torch.device, cfg: TrainConfig) -> nn.Module:
    model = model.to(device)
    if uses_cuda_extras(device, cfg.channels_last):
        model = model.to(memory_format=torch.channels_last)
    return model


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    raise ConfigError("TrainConfig.optimizer", cfg.optimizer, "one of adam, adamw, sgd")


def lr_factor(schedule: str, step: int, total_steps: int) -> float:
    """Multiplier of the peak lr at optimizer step `step` (0-based) of `total_steps`; a pure function.

    cosine: 1 -> 0 over all steps. onecycle: linear warm-up from ONECYCLE_START to 1 over the first
    ONECYCLE_WARMUP of the steps, then cosine down to ONECYCLE_START / 1e4 (as torch's OneCycleLR).
    """
    progress = min(step / max(total_steps, 1), 1.0)
    if schedule == "none":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "onecycle":
        if progress < ONECYCLE_WARMUP:
            return ONECYCLE_START + (1 - ONECYCLE_START) * progress / ONECYCLE_WARMUP
        floor = ONECYCLE_START / 1e4
        down = (progress - ONECYCLE_WARMUP) / (1 - ONECYCLE_WARMUP)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * down))
    raise ConfigError("TrainConfig.lr_schedule", schedule, "one of none, cosine, onecycle")


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig,
                   steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler | None:
    """A per-batch LambdaLR over lr_factor for cfg.epochs epochs, or None for `none`."""
    if cfg.lr_schedule == "none":
        return None
    lr_factor(cfg.lr_schedule, 0, 1)  # validates the name before building anything
    total = steps_per_epoch * cfg.epochs
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(cfg.lr_schedule, step, total))


def _autocast(device: torch.device, amp: bool):
    if not uses_cuda_extras(device, amp):
        return nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def _to_device(images, masks, device: torch.device, channels_last: bool):
    images = images.to(device, non_blocking=True)
    if uses_cuda_extras(device, channels_last):
        images = images.contiguous(memory_format=torch.channels_last)
    return images, masks.to(device, non_blocking=True)


def _progress(loader, enabled: bool, desc: str):
    if not enabled:
        return loader
    from tqdm import tqdm

    return tqdm(loader, desc=desc, leave=False, dynamic_ncols=True)


def make_grad_scaler(device: torch.device, amp: bool) -> torch.amp.GradScaler:
    """The loss scaler for float16 autocast; a disabled one (a no-op) for bfloat16 and fp32.

    Make one per training run and pass it to every epoch (and save it with the checkpoints): a fresh
    scaler starts at a scale of 2**16, which overflows float16 gradients, so its first steps are skipped
    while it backs off; one per epoch skipped them at every epoch.
    """
    fp16 = uses_cuda_extras(device, amp) and not torch.cuda.is_bf16_supported()
    return torch.amp.GradScaler("cuda", enabled=fp16)


def train_one_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer, loss_fn: Callable,
                    device: torch.device, scheduler=None, progress: bool = False, *, epoch: int = 0,
                    amp: bool = False, channels_last: bool = False,
                    bn_batches: int = TrainConfig.bn_recalibration_batches,
                    grad_scaler: torch.amp.GradScaler | None = None) -> dict[str, float]:
    """One pass over `loader`, then `recalibrate_batchnorm` over `bn_batches` of it (0: skipped).

    {loss (mean per batch), lr (at the end), seconds (both passes)}. DivergedError on NaN/inf.
    `grad_scaler`: the run's `make_grad_scaler` (None: a fresh one, for a single epoch).
    """
    model.train()
    scaler = grad_scaler if grad_scaler is not None else make_grad_scaler(device, amp)
    total, batches, start = 0.0, 0, time.perf_counter()
    for step, (images, masks) in enumerate(_progress(loader, progress, f"epoch {epoch}")):
        images, masks = _to_device(images, masks, device, channels_last)
        with _autocast(device, amp):
            loss = loss_fn(model(images), masks)
        value = loss.item()
        if not math.isfinite(value):
            raise DivergedError(epoch, step, value, optimizer.param_groups[0]["lr"])
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if scheduler is not None:
            scheduler.step()
        total, batches = total + value, batches + 1
    if batches == 0:
        raise ValueError("train_one_epoch: the training loader yielded no batches")
    recalibrate_batchnorm(model, loader, device, bn_batches, amp=amp, channels_last=channels_last)
    return {LOSS: total / batches, "lr": optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - start}


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, loader, device: torch.device, max_batches: int, *,
                          amp: bool = False, channels_last: bool = False) -> int:
    """Recompute every BatchNorm layer's running mean/var over the first `max_batches` batches of `loader`
    with the current weights (the rest of the model as in eval mode: dropout and drop-connect off; no
    gradients, weights untouched); the number of batches used.

    Why: running statistics are an exponential average (momentum 0.1) over batches seen while the weights
    moved. After a few hundred fast steps they lag the weights, and eval-mode predictions break although
    the training loss is fine (measured on bench/sim2real.py, seed 1: own-val mIoU 0.25 in eval mode, 0.60
    once recomputed). This is torch.optim.swa_utils.update_bn with dropout off (unet_scratch drops before
    its BatchNorms, which eval never does) and a cap on the batches. 0 batches or no BatchNorm: a no-op.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if max_batches <= 0 or not norms:
        return 0
    was_training, momenta = model.training, [m.momentum for m in norms]
    model.eval()  # everything as at inference (dropout, efficientnet's drop-connect: off) ...
    for m in norms:
        m.train()  # ... but BatchNorm, which then gathers the statistics inference will use
        m.reset_running_stats()
        m.momentum = None  # None: a plain average over all batches, not an exponential one
    used = 0
    try:
        for images, masks in itertools.islice(loader, max_batches):
            images, _ = _to_device(images, masks, device, channels_last)
            with _autocast(device, amp):
                model(images)
            used += 1
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.train(was_training)
    if used == 0:
        raise ValueError("recalibrate_batchnorm: the loader yielded no batches (BatchNorm statistics are reset)")
    return used


@torch.no_grad()
def confusion_and_loss(model: nn.Module, loader, device: torch.device, loss_fn: Callable, num_classes: int, *,
                       amp: bool = False, channels_last: bool = False) -> tuple[torch.Tensor, float]:
    """The split's confusion matrix (int64, true x predicted) and its mean loss over the split's pixels, as one
    batch of the whole split would give it whatever the batch size (a searched value). Exact for the per-pixel
    losses (ce, weighted_ce, focal); Dice is a ratio over its batch, so dice and ce_dice come out slightly
    different at another batch size (the objective, val mIoU, comes from the confusion matrix: exact)."""
    model.eval()
    confusion = ConfusionMatrix(num_classes)
    class_weight = getattr(loss_fn, "weight", None)  # weighted CE's mean divides by its pixels' summed weights
    loss_sum, pixels = 0.0, 0.0
    for images, masks in loader:
        images, masks = _to_device(images, masks, device, channels_last)
        with _autocast(device, amp):
            logits = model(images)
        size = float(class_weight.to(masks.device)[masks].sum()) if class_weight is not None else masks.numel()
        loss_sum += float(loss_fn(logits.float(), masks)) * size  # each batch weighted as its mean was taken
        pixels += size
        confusion.update(logits.argmax(dim=1), masks)
    if pixels == 0:
        raise ValueError("evaluate: the loader yielded no batches")
    return confusion.matrix, loss_sum / pixels


def evaluate(model: nn.Module, loader, device: torch.device, loss_fn: Callable, class_names: Sequence[str],
             rock_ids: Sequence[int], *, amp: bool = False, channels_last: bool = False) -> dict[str, float]:
    """{loss, miou, rock_miou, pixel_acc, dice, iou_<name>...} over the whole split (see models.metrics)."""
    matrix, loss = confusion_and_loss(model, loader, device, loss_fn, len(class_names), amp=amp,
                                      channels_last=channels_last)
    return {LOSS: loss, **segmentation_metrics(matrix, class_names, rock_ids)}
