"""Data configuration: a frozen dataclass, every field with its unit or meaning."""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class DataConfig:
    root: str  # a folder in the Kaggle layout (images/render, images/clean, ...)
    image_size: tuple[int, int] = (64, 64)  # (height, width) images and masks are resized to
    batch_size: int = 8  # images per batch
    mask_source: str = "clean"  # clean | ground: which mask folder pairs with images/render
    allow_missing: bool = False  # skip renders without masks (and masks without renders) instead of failing
    exclude_mismatches: bool = False  # drop frames listed in mismatch_IDs.txt (which must then exist)
    split_seed: int = 0  # seeds the train/val/test split (written once to the manifest)
    val_fraction: float = 0.15  # share of frames in the validation split
    test_fraction: float = 0.15  # share of frames in the held-out test split
    augment: bool = True  # flips + brightness/contrast jitter, train split only
    seed: int = 0  # seeds the train order and augmentations
    num_workers: int = 0  # DataLoader worker processes (the cache makes 0 fast)
    cache_dir: str | None = None  # decode-once arrays; default <root>/.lunartune_cache, or
    #   ~/.cache/lunartune/<root id>/cache when the data folder is read-only
    manifest_path: str | None = None  # split manifest (JSON); default <root>/lunartune_split.json, or beside
    #   cache_dir / in ~/.cache/lunartune/<root id>/ when the data folder is read-only
    progress: bool = True  # progress bar while a cache is first built (only for >= 50 frames)

    def to_dict(self) -> dict:
        return asdict(self)
