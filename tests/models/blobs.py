"""Tiny learnable data made with numpy (no data_pipeline): a red sky band on top, dark ground, bright
small and large blobs for the two rock classes. Batches are (images float32 N x 3 x H x W, masks int64)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

CLASS_NAMES = ("ground", "sky", "small_rocks", "large_rocks")
ROCK_IDS = (2, 3)
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def blob_scene(rng: np.random.Generator, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """One H x W x 3 uint8 image and its H x W int64 class mask."""
    yy, xx = np.mgrid[:size, :size]
    mask = np.zeros((size, size), dtype=np.int64)
    mask[: rng.integers(size // 6, size // 3)] = 1  # sky band on top
    for cls, radius in ((2, 3), (2, 3), (3, 7)):  # two small rocks, one large rock
        cy, cx = rng.integers(size // 2, size - radius), rng.integers(radius, size - radius)
        mask[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2] = cls
    colours = np.array([[40, 40, 40], [200, 30, 30], [180, 230, 180], [230, 230, 255]], dtype=np.float64)
    image = colours[mask] + rng.normal(0, 12, (size, size, 3))
    return np.clip(image, 0, 255).astype(np.uint8), mask


def to_batch(images: list[np.ndarray], masks: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    return x, torch.from_numpy(np.stack(masks))


def blob_batches(count: int, batch_size: int, seed: int, size: int = 64) -> list[tuple[torch.Tensor, torch.Tensor]]:
    rng = np.random.default_rng(seed)
    scenes = [blob_scene(rng, size) for _ in range(count)]
    return [to_batch([s[0] for s in scenes[i:i + batch_size]], [s[1] for s in scenes[i:i + batch_size]])
            for i in range(0, count, batch_size)]


@pytest.fixture(scope="session")
def blob_data():
    """(train batches, val batches): 32 + 8 scenes at 64 x 64, fixed seeds."""
    return blob_batches(32, 8, seed=1), blob_batches(8, 8, seed=2)
