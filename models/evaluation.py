"""Score a model on images at their own resolution: pure torch/numpy, no data-set files.

A group of samples (anything with `.name`, `.image` H x W x 3 uint8 and `.mask` H x W class indices of the
same H x W) is predicted with `models.inference.predict_masks` (resize to the model's size, logits resized
back), and every pixel of every mask counts once in ONE confusion matrix for the group: the metrics are
exact over the group, never a mean of per-image means. Per-image mIoU is kept only to rank the worst
predictions for a figure.
"""
from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from models.inference import predict_masks
from models.metrics import ConfusionMatrix, per_class_iou, segmentation_metrics

BATCH_SIZE = 4  # images predicted at once: full-size logits of a batch must fit in memory


@dataclass(frozen=True)
class ScoredImage:
    name: str  # frame id or photo name
    miou: float  # this image's own mIoU (classes present in its truth or prediction)
    image: np.ndarray  # H x W x 3 uint8, as scored
    mask: np.ndarray  # H x W uint8 truth
    prediction: np.ndarray  # H x W uint8 prediction


@dataclass(frozen=True)
class GroupScore:
    matrix: np.ndarray  # int64 num_classes x num_classes, [true, predicted], over every pixel of the group
    metrics: dict  # segmentation_metrics of the matrix: miou, rock_miou, pixel_acc, dice, iou_<name>
    images: int  # images scored
    per_image: list = field(default_factory=list)  # [(name, miou)] in scoring order
    worst: list = field(default_factory=list)  # up to keep_worst ScoredImage, worst first
    predictions: list = field(default_factory=list)  # H x W uint8 masks in scoring order, if kept


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def image_miou(matrix: torch.Tensor) -> float:
    """Mean IoU of one image over the classes that occur in its truth or prediction."""
    iou = per_class_iou(matrix.numpy())
    return float(np.nanmean(iou)) if not np.isnan(iou).all() else float("nan")


def score_group(model: nn.Module, samples: Iterable, *, image_size: tuple[int, int], mean: Sequence[float],
                std: Sequence[float], device: torch.device | str, class_names: Sequence[str],
                rock_ids: Sequence[int], keep_worst: int = 0, keep_predictions: bool = False) -> GroupScore:
    """Predict every sample at the model's size, score it at the mask's size; one GroupScore.

    keep_predictions keeps every predicted mask (for further analysis without predicting again).
    """
    total = ConfusionMatrix(len(class_names))
    per_image, heap, order, kept = [], [], itertools.count(), []
    for chunk in _chunks(samples, BATCH_SIZE):
        predictions = predict_masks(model, [s.image for s in chunk], image_size, mean, std, device, BATCH_SIZE)
        for sample, prediction in zip(chunk, predictions):
            one = ConfusionMatrix(len(class_names))
            one.update(torch.from_numpy(prediction), torch.from_numpy(np.asarray(sample.mask)))
            total.matrix += one.matrix
            miou = image_miou(one.matrix)
            per_image.append((sample.name, miou))
            if keep_predictions:
                kept.append(prediction)
            if keep_worst:
                # a max-heap on mIoU (negated) of size keep_worst keeps the lowest scores seen so far; on a tie
                # the earlier image stays (-order), as in the JSON's stable sort of per_image
                item = (-miou, -next(order), ScoredImage(sample.name, miou, sample.image, sample.mask, prediction))
                (heapq.heappush if len(heap) < keep_worst else heapq.heappushpop)(heap, item)
    worst = [entry[2] for entry in sorted(heap, key=lambda e: (-e[0], -e[1]))]
    return GroupScore(total.matrix.numpy(), segmentation_metrics(total.matrix, class_names, rock_ids),
                      len(per_image), per_image, worst, kept)
