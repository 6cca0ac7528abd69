"""Predict class masks for images of any size: resize in, predict, resize the logits back.

Both resizes are bilinear (align_corners=False; antialiased when shrinking the image). The logits, not the
class indices, are resized back to the image's size and the argmax taken there, so class borders stay
smooth instead of blocky. Pure torch/numpy: mean and std are passed in (0-1 scale, per RGB channel).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def _check_image(image: np.ndarray, index: int) -> None:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image {index}: expected an H x W x 3 uint8 RGB array, "
                         f"got shape {image.shape} dtype {image.dtype}")


def _to_input(image: np.ndarray, image_size, mean, std) -> torch.Tensor:
    """H x W x 3 uint8 -> 3 x h x w float32 at the model's size, normalised."""
    # np.array copies: arrays from PIL are read-only and torch warns on those.
    x = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div_(255).unsqueeze(0)
    shrink = image_size[0] < image.shape[0] or image_size[1] < image.shape[1]
    x = F.interpolate(x, size=tuple(image_size), mode="bilinear", align_corners=False, antialias=shrink)
    mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return ((x - mean) / std)[0]


@torch.no_grad()
def predict_masks(model: nn.Module, images: Sequence[np.ndarray], image_size: tuple[int, int],
                  mean: Sequence[float], std: Sequence[float], device: torch.device | str = "cpu",
                  batch_size: int = 8) -> list[np.ndarray]:
    """One H_i x W_i uint8 class-index mask per image (each at its own size), in batches of `batch_size`."""
    for i, image in enumerate(images):
        _check_image(image, i)
    model.eval()
    device = torch.device(device)
    masks = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        batch = torch.stack([_to_input(img, image_size, mean, std) for img in chunk]).to(device)
        logits = model(batch).float()
        for img, lg in zip(chunk, logits):
            full = F.interpolate(lg.unsqueeze(0), size=img.shape[:2], mode="bilinear", align_corners=False)
            masks.append(full[0].argmax(dim=0).to(torch.uint8).cpu().numpy())
    return masks


def predict_mask(model: nn.Module, image_uint8: np.ndarray, image_size: tuple[int, int], mean: Sequence[float],
                 std: Sequence[float], device: torch.device | str = "cpu") -> np.ndarray:
    """H x W uint8 class indices for one H x W x 3 uint8 RGB image (see predict_masks)."""
    return predict_masks(model, [image_uint8], image_size, mean, std, device)[0]
