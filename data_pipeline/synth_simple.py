"""The "simple" style: the plainest scene that has the right classes, a baseline for benches.

Flat noisy ground, a flat dark sky above a straight horizon, rocks as uniformly lit ellipses. Sizes
are drawn so the class balance is roughly the Kaggle one (sky ~19 %, each rock class ~2-3 %).
"""
from __future__ import annotations

import numpy as np

from data_pipeline.synth_rocks import GROUND, LARGE_ROCK, SKY, SMALL_ROCK

SMALL_ROCKS_PER_SCENE = 40
LARGE_ROCKS_PER_SCENE = 3
SMALL_RADIUS = (0.008, 0.025)  # ellipse half-width range, as a fraction of the image width
LARGE_RADIUS = (0.03, 0.07)


def render(rng: np.random.Generator, height: int, width: int):
    """(image uint8 HxWx3, mask uint8 HxW, large-rock instance map int32 HxW)."""
    horizon = int(round(height * rng.uniform(0.1, 0.28)))
    gray = np.clip(rng.normal(0.45, 0.06, (height, width)), 0, 1).astype(np.float32)
    mask = np.full((height, width), GROUND, dtype=np.uint8)
    gray[:horizon], mask[:horizon] = 0.03, SKY
    instances = np.zeros((height, width), dtype=np.int32)
    ellipses = [(SMALL_ROCK, SMALL_RADIUS)] * SMALL_ROCKS_PER_SCENE + [(LARGE_ROCK, LARGE_RADIUS)] * \
        LARGE_ROCKS_PER_SCENE
    for label, k in enumerate(rng.permutation(len(ellipses)), 1):
        cls, radius_range = ellipses[k]
        rx = rng.uniform(*radius_range) * width
        ry = rx * rng.uniform(0.4, 0.8)
        cx, cy = rng.uniform(0, width), rng.uniform(horizon + ry, height)
        window, inside = ellipse(cx, cy, rx, ry, height, width)
        gray[window][inside], mask[window][inside] = rng.uniform(0.6, 0.8), cls
        instances[window][inside] = label if cls == LARGE_ROCK else 0
    image = (np.repeat(gray[..., None], 3, axis=2) * 255 + 0.5).astype(np.uint8)
    return image, mask, instances


def ellipse(cx: float, cy: float, rx: float, ry: float, height: int, width: int):
    """(window, inside mask within it) of an axis-aligned ellipse, clipped to the image."""
    r0, r1 = max(int(cy - ry), 0), min(int(cy + ry) + 2, height)
    c0, c1 = max(int(cx - rx), 0), min(int(cx + rx) + 2, width)
    rows = np.arange(r0, r1)[:, None] + 0.5
    cols = np.arange(c0, c1)[None, :] + 0.5
    return (slice(r0, r1), slice(c0, c1)), ((cols - cx) / rx) ** 2 + ((rows - cy) / ry) ** 2 < 1
