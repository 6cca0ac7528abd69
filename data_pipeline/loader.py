"""torch Dataset/DataLoader factory over the decode-once cache, with seeded train-only augmentation.

Batches are `(images, masks)`: images float32 N x 3 x H x W normalised with IMAGENET_MEAN/IMAGENET_STD,
masks int64 N x H x W class indices. Inference (models.inference) resizes in float with torch's
antialiased bilinear, the cache in uint8 with PIL's: the inputs differ by rounding only (at most one grey
level; tests/models/test_inference_export.py holds them to that).

Augmentation (train split, `DataConfig.augment`): a horizontal flip with probability 1/2 (no vertical
flip: the sky is always at the top of these scenes) and a brightness/contrast jitter. All random draws
happen in the sampler, in the main process, from a generator seeded by (seed, epoch): the same seed
gives the same batches in the same order whatever `num_workers` is.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from data_pipeline.cache import CachedSplit, prepare
from data_pipeline.config import DataConfig
from data_pipeline.errors import DataError

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)  # RGB, on pixel values scaled to [0, 1]
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
BRIGHTNESS_JITTER = 0.1  # added brightness drawn from [-0.1, 0.1], in units of full scale
CONTRAST_JITTER = 0.2  # contrast factor drawn from [0.8, 1.2], applied about each image's mean

_MEAN = np.asarray(IMAGENET_MEAN, dtype=np.float32)
_STD = np.asarray(IMAGENET_STD, dtype=np.float32)


def normalize_image(image: np.ndarray) -> np.ndarray:
    """H x W x 3 uint8 RGB -> 3 x H x W float32, scaled to [0, 1] then ImageNet-normalised."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise DataError(f"normalize_image: expected an H x W x 3 uint8 array, got {image.dtype} {image.shape}")
    return _normalize_batch(image[None].astype(np.float32) / 255.0)[0]


def _normalize_batch(images01: np.ndarray) -> np.ndarray:
    """N x H x W x 3 float32 in [0, 1] -> N x 3 x H x W float32 normalised (contiguous)."""
    return np.ascontiguousarray(((images01 - _MEAN) / _STD).transpose(0, 3, 1, 2))


class SampleKey(NamedTuple):
    """One row of a batch and the augmentation drawn for it (identity when not augmenting)."""

    index: int
    flip: bool = False
    contrast: float = 1.0
    brightness: float = 0.0


class CachedSegmentationDataset(Dataset):
    """Batches straight from the memory-mapped cache: `dataset[list of SampleKey]` -> (images, masks).

    Opens the memmaps lazily in each process (pickling a memmap would copy the whole array to workers).
    """

    def __init__(self, cached: CachedSplit):
        self.cached = cached
        self._arrays: tuple[np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.cached)

    def __getstate__(self) -> dict:
        return {"cached": self.cached, "_arrays": None}

    def __getitem__(self, keys: list[SampleKey]) -> tuple[torch.Tensor, torch.Tensor]:
        if self._arrays is None:
            self._arrays = self.cached.open()
        images, masks = self._arrays
        rows = np.fromiter((k.index for k in keys), dtype=np.int64, count=len(keys))
        batch = images[rows].astype(np.float32) / 255.0  # fancy indexing copies out of the memmap
        labels = masks[rows]
        batch, labels = _augment(batch, labels, keys)
        return torch.from_numpy(_normalize_batch(batch)), torch.from_numpy(labels.astype(np.int64))


def _augment(batch: np.ndarray, labels: np.ndarray, keys: list[SampleKey]) -> tuple[np.ndarray, np.ndarray]:
    flip = np.fromiter((k.flip for k in keys), dtype=bool, count=len(keys))
    if flip.any():
        batch[flip] = batch[flip, :, ::-1]
        labels = labels.copy()
        labels[flip] = labels[flip, :, ::-1]
    contrast = np.asarray([k.contrast for k in keys], dtype=np.float32)[:, None, None, None]
    brightness = np.asarray([k.brightness for k in keys], dtype=np.float32)[:, None, None, None]
    if np.any(contrast != 1) or np.any(brightness != 0):
        mean = batch.mean(axis=(1, 2, 3), keepdims=True)
        batch = np.clip((batch - mean) * contrast + mean + brightness, 0.0, 1.0)
    return batch, labels


class EpochBatchSampler(Sampler):
    """Yields lists of SampleKey per batch. Order and augmentation come from a generator seeded by
    (seed, epoch); the epoch advances on each pass (or is set with `set_epoch`, e.g. on resume)."""

    def __init__(self, n: int, batch_size: int, shuffle: bool, augment: bool, seed: int,
                 drop_single_last: bool):
        self.n, self.batch_size, self.shuffle, self.augment = n, batch_size, shuffle, augment
        self.seed, self.drop_single_last, self.epoch = seed, drop_single_last, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        # a final short batch of one image breaks BatchNorm in training (e.g. DeepLabV3's pooled branch):
        # dropped when asked; with a batch size of 1 every batch is such a batch and none is dropped
        full, rest = divmod(self.n, self.batch_size)
        single_last = rest == 1 and self.batch_size > 1
        return full + (1 if rest and not (single_last and self.drop_single_last) else 0)

    def __iter__(self) -> Iterator[list[SampleKey]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        order = rng.permutation(self.n) if self.shuffle else np.arange(self.n)
        keys = [self._key(int(i), rng) for i in order]
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            yield keys[start:start + self.batch_size]

    def _key(self, index: int, rng: np.random.Generator) -> SampleKey:
        if not self.augment:
            return SampleKey(index)
        return SampleKey(index, bool(rng.random() < 0.5),
                         float(rng.uniform(1 - CONTRAST_JITTER, 1 + CONTRAST_JITTER)),
                         float(rng.uniform(-BRIGHTNESS_JITTER, BRIGHTNESS_JITTER)))


@dataclass(frozen=True)
class Loaders:
    train: DataLoader  # shuffled, augmented (if cfg.augment), seeded by cfg.seed
    val: DataLoader  # fixed order, no augmentation
    test: DataLoader  # fixed order, no augmentation; yields nothing when test_fraction is 0
    class_frequencies: np.ndarray  # float64[4]: pixel share per class in the TRAIN split (sums to 1)
    manifest_hash: str  # identifies the exact data + split (log it with the run)
    split_sizes: dict[str, int]  # frames per train / val / test
    manifest_path: Path  # the split manifest file
    image_size: tuple[int, int]  # (height, width) of every batch


def make_loaders(cfg: DataConfig) -> Loaders:
    """Train/val/test DataLoaders over the cached arrays, building the manifest and caches if needed."""
    prepared = prepare(cfg)
    counts = prepared.caches["train"].class_counts.astype(np.float64)
    return Loaders(
        train=_loader(prepared.caches.get("train"), cfg, train=True),
        val=_loader(prepared.caches.get("val"), cfg, train=False),
        test=_loader(prepared.caches.get("test"), cfg, train=False),
        class_frequencies=counts / max(counts.sum(), 1.0),
        manifest_hash=prepared.manifest.hash,
        split_sizes=prepared.manifest.sizes,
        manifest_path=prepared.manifest.path,
        image_size=tuple(cfg.image_size),
    )


def _loader(cached: CachedSplit | None, cfg: DataConfig, train: bool) -> DataLoader:
    if cached is None:  # an intentionally empty split (test_fraction 0)
        return DataLoader([], batch_size=None)
    sampler = EpochBatchSampler(len(cached), cfg.batch_size, shuffle=train, augment=train and cfg.augment,
                                seed=cfg.seed, drop_single_last=train)
    # batch_size=None: the sampler hands whole batches to the dataset, which slices the memmap at once
    return DataLoader(CachedSegmentationDataset(cached), sampler=sampler, batch_size=None,
                      num_workers=cfg.num_workers, persistent_workers=cfg.num_workers > 0)
