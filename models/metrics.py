"""Segmentation metrics from one confusion matrix accumulated over a whole split (exact, not a mean of
per-batch means).

Convention for a class absent from both prediction and ground truth (TP + FP + FN = 0): its IoU and Dice
are NaN and it is left out of every mean (nanmean) — counting it as 1 would reward predicting nothing,
counting it as 0 would punish a split that simply has no such class. If no class of a mean is present,
the mean itself is NaN (e.g. rock_miou on a split without rocks).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

MIOU, ROCK_MIOU, PIXEL_ACC, DICE, LOSS = "miou", "rock_miou", "pixel_acc", "dice", "loss"


def iou_key(class_name: str) -> str:
    return f"iou_{class_name}"


class ConfusionMatrix:
    """matrix[t, p] counts pixels of true class t predicted as p; accumulate with update()."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch of predicted and true class indices (same shape, any device)."""
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
        k = self.num_classes
        for name, labels in (("prediction", pred), ("target", target)):
            # an out-of-range index would land in another cell (or break the reshape) instead of failing
            if labels.numel() and ((labels < 0) | (labels >= k)).any():
                raise ValueError(f"{name} class indices must be in [0, {k}); got {int(labels.min())}..{int(labels.max())}")
        flat = (target.reshape(-1).long() * k + pred.reshape(-1).long())
        counts = torch.bincount(flat, minlength=k * k).reshape(k, k)  # on the batch's device: no big copy
        self.matrix += counts.cpu()


def per_class_iou(matrix: np.ndarray) -> np.ndarray:
    tp = np.diag(matrix).astype(np.float64)
    denominator = matrix.sum(0) + matrix.sum(1) - tp  # TP + FP + FN
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, tp / denominator, np.nan)


def per_class_dice(matrix: np.ndarray) -> np.ndarray:
    tp = np.diag(matrix).astype(np.float64)
    denominator = matrix.sum(0) + matrix.sum(1)  # 2TP + FP + FN
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, 2 * tp / denominator, np.nan)


def _nanmean(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else math.nan


def segmentation_metrics(matrix, class_names: Sequence[str], rock_ids: Sequence[int]) -> dict[str, float]:
    """miou, rock_miou, pixel_acc, dice (mean over present classes) and iou_<name> per class."""
    m = np.asarray(matrix.cpu() if isinstance(matrix, torch.Tensor) else matrix, dtype=np.int64)
    if m.shape != (len(class_names), len(class_names)):
        raise ValueError(f"confusion matrix shape {m.shape} does not match {len(class_names)} class names")
    iou = per_class_iou(m)
    total = m.sum()
    metrics = {
        MIOU: _nanmean(iou),
        ROCK_MIOU: _nanmean(iou[list(rock_ids)]),
        PIXEL_ACC: float(np.trace(m) / total) if total else math.nan,
        DICE: _nanmean(per_class_dice(m)),
    }
    metrics.update({iou_key(name): float(v) for name, v in zip(class_names, iou)})
    return metrics
