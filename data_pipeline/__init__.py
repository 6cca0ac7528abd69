"""Files on disk -> arrays and tensors for lunar-surface segmentation (Kaggle Artificial Lunar Landscape).

Knows nothing of models, Ray or MLflow. `import data_pipeline` stays light (numpy + PIL): the torch-based
loader names (`make_loaders`, `IMAGENET_MEAN`, ...) are imported on first access.
"""
from __future__ import annotations

import importlib

from data_pipeline.cache import prepare_dataset
from data_pipeline.classes import (
    CLASS_NAMES,
    GROUND_THRESHOLD,
    MASK_SOURCES,
    NUM_CLASSES,
    PALETTE,
    ROCK_CLASS_IDS,
    class_table,
    decode_mask,
    encode_mask,
)
from data_pipeline.config import DataConfig
from data_pipeline.errors import DataError
from data_pipeline.imageio import load_rgb, read_size, resize_image, resize_mask, save_rgb
from data_pipeline.kaggle import (
    EvalSample,
    EvalSet,
    Sample,
    find_pairs,
    find_real_photos,
    load_eval_set,
    load_sample,
    scan_pairs,
    scan_real_photos,
)
from data_pipeline.split import SplitManifest, load_or_create_split

# name -> module for names whose module imports torch (or builds on it): loaded on first use
_LAZY = {
    "IMAGENET_MEAN": "data_pipeline.loader",
    "IMAGENET_STD": "data_pipeline.loader",
    "normalize_image": "data_pipeline.loader",
    "Loaders": "data_pipeline.loader",
    "make_loaders": "data_pipeline.loader",
    "check_dataset": "data_pipeline.check",
    "CheckReport": "data_pipeline.check",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'data_pipeline' has no attribute {name!r}")


__all__ = [
    "CLASS_NAMES", "GROUND_THRESHOLD", "MASK_SOURCES", "NUM_CLASSES", "PALETTE", "ROCK_CLASS_IDS",
    "class_table", "decode_mask", "encode_mask", "DataConfig", "DataError", "load_rgb", "read_size",
    "resize_image", "resize_mask", "save_rgb", "EvalSample", "EvalSet", "Sample", "find_pairs",
    "find_real_photos", "load_eval_set", "load_sample", "scan_pairs", "scan_real_photos", "SplitManifest",
    "load_or_create_split", "prepare_dataset", *_LAZY,
]
