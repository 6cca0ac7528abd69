"""Segmentation losses: cross-entropy, class-weighted CE, soft Dice, CE + Dice, focal.

Class weights for `weighted_ce` are median-frequency balancing (Eigen & Fergus 2015): w_c = median(f) / f_c
with f the training split's pixel frequencies, clipped to [WEIGHT_MIN, WEIGHT_MAX] so that a class almost
absent from the training split cannot dominate the loss (a class with f_c = 0 gets WEIGHT_MAX).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.config import ConfigError, TrainConfig

WEIGHT_MIN, WEIGHT_MAX = 0.1, 10.0  # clip of median-frequency weights
DICE_SMOOTH = 1.0  # added to numerator and denominator: a class absent from batch and prediction scores 1


def median_frequency_weights(frequencies) -> torch.Tensor:
    """Per-class CE weights from pixel frequencies (any scale: counts or shares), clipped; float32."""
    f = np.asarray(frequencies, dtype=np.float64)
    if f.ndim != 1 or f.size == 0 or (f < 0).any() or f.sum() <= 0:
        raise ConfigError("class_frequencies", f.tolist(), "a 1-D array of non-negative pixel frequencies, not all 0")
    f = f / f.sum()
    median = np.median(f[f > 0])
    with np.errstate(divide="ignore"):
        w = np.where(f > 0, median / f, WEIGHT_MAX)
    return torch.tensor(np.clip(w, WEIGHT_MIN, WEIGHT_MAX), dtype=torch.float32)


class DiceLoss(nn.Module):
    """1 - mean over classes of the soft Dice between softmax probabilities and one-hot targets."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probs = logits.float().softmax(dim=1)
        one_hot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
        dims = (0, 2, 3)  # sum over the batch and pixels: one Dice per class for the whole batch
        inter = (probs * one_hot).sum(dims)
        total = probs.sum(dims) + one_hot.sum(dims)
        return 1 - ((2 * inter + DICE_SMOOTH) / (total + DICE_SMOOTH)).mean()


class CEDiceLoss(nn.Module):
    """Cross-entropy + Dice, equally weighted (the recipe of the best public results on this data set)."""

    def __init__(self):
        super().__init__()
        self.ce, self.dice = nn.CrossEntropyLoss(), DiceLoss()

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.ce(logits, target) + self.dice(logits, target)


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017): CE scaled by (1 - p_true)**gamma, averaged over pixels."""

    def __init__(self, gamma: float = 2.0):
        super().__init__()
        self.gamma = gamma

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits.float(), dim=1).gather(1, target.unsqueeze(1)).squeeze(1)
        # clamped: at p_true == 1.0 (fp32 rounds a confident pixel there) (1 - p)**gamma has an infinite
        # derivative for 0 < gamma < 1, and inf * 0 made the gradient NaN
        return (-(1 - log_p.exp()).clamp_min(1e-6) ** self.gamma * log_p).mean()


def make_loss(train_cfg: TrainConfig, class_frequencies=None) -> nn.Module:
    """The loss `train_cfg.loss` names; `weighted_ce` weighs the classes by the training split's pixel
    `class_frequencies` (median_frequency_weights), which the other losses ignore."""
    name = train_cfg.loss
    if name == "ce":
        return nn.CrossEntropyLoss()
    if name == "weighted_ce":
        if class_frequencies is None:
            raise ConfigError("TrainConfig.loss", name, "class_frequencies of the training split for weighted_ce")
        return nn.CrossEntropyLoss(weight=median_frequency_weights(class_frequencies))
    if name == "dice":
        return DiceLoss()
    if name == "ce_dice":
        return CEDiceLoss()
    if name == "focal":
        return FocalLoss(train_cfg.focal_gamma)
    raise ConfigError("TrainConfig.loss", name, "one of ce, weighted_ce, dice, ce_dice, focal")
