"""Fixtures for data_pipeline tests: tiny Kaggle-layout folders written with numpy + PIL, and the real
samples in ../shared/data (skipped with a reason when absent)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_pipeline.classes import PALETTE

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def write_scene(root: Path, frame: str, rng: np.random.Generator, size=(64, 64), mask_source="clean") -> None:
    """One render (noise) and its 4-colour mask: sky above a horizon, a small and a large rock below."""
    h, w = size
    mask = np.zeros((h, w), dtype=np.uint8)
    horizon = int(rng.integers(h // 5, h // 3))
    mask[:horizon] = 1
    for cls, side in ((2, max(2, h // 16)), (3, max(3, h // 6))):
        top, left = int(rng.integers(horizon, h - side)), int(rng.integers(0, w - side))
        mask[top:top + side, left:left + side] = cls
    render = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    write_png(root / "images" / "render" / f"render{frame}.png", render)
    write_png(root / "images" / mask_source / f"{mask_source}{frame}.png", PALETTE[mask])


def write_png(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)
    return path


def write_dataset(root: Path, count: int = 24, size=(64, 64), seed: int = 0, mask_source: str = "clean") -> Path:
    rng = np.random.default_rng(seed)
    for i in range(1, count + 1):
        write_scene(root, f"{i:04d}", rng, size, mask_source)
    return root


def write_real_photo(root: Path, name: str, photo_size=(40, 56), mask_size=(40, 56), seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    mask = np.zeros(mask_size, dtype=np.uint8)
    mask[: mask_size[0] // 4] = 1
    mask[-6:, :6] = 3
    write_png(root / "real_moon_images" / f"g_{name}.png", PALETTE[mask])
    write_png(root / "real_moon_images" / f"{name}.png",
              rng.integers(0, 256, size=(*photo_size, 3), dtype=np.uint8))


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    """24 frames of 64 x 64 with clean masks in tmp_path/data."""
    return write_dataset(tmp_path / "data")


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data samples not available ({SHARED_DATA} is absent; it lives beside the repo)")
    return SHARED_DATA


class DataWriter:
    """The writers above as a fixture, so test modules need not import conftest."""

    dataset = staticmethod(write_dataset)
    png = staticmethod(write_png)
    real_photo = staticmethod(write_real_photo)


@pytest.fixture
def write() -> DataWriter:
    return DataWriter()
