"""Decode-once uint8 arrays per (data set, split, size): the expensive PNG decode happens once.

For each split and training size the first user writes

    <cache_dir>/<split>-<H>x<W>-<source>-<key>.images.npy   N x H x W x 3 uint8 (bilinear-resized)
    <cache_dir>/<split>-<H>x<W>-<source>-<key>.masks.npy    N x H x W uint8 class indices (nearest)
    <cache_dir>/<split>-<H>x<W>-<source>-<key>.json         frames, per-class pixel counts (written last)

and every later epoch, trial and process memory-maps them. `key` hashes the frame list and the
fingerprint (size + mtime) of every source file, so changing, adding or removing a source file gives a
new key: the cache is rebuilt, and a cache of that split and size whose own source files have changed or
gone since it was built is deleted. One whose files are all unchanged is kept: it belongs to another
frame list over the same data (another split seed or fraction, `--exclude-mismatches`), maybe in use.

Several Ray trials may start building the same cache at once: builders take an exclusive file lock
(one builds, the others wait and then read), and every file is written under a temporary name and
renamed into place, so no reader ever sees half an array. Where flock does not work (some NFS mounts)
two builders of one cache may still break each other's build (an error, never a wrong array): rerun.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from data_pipeline.classes import NUM_CLASSES
from data_pipeline.config import DataConfig
from data_pipeline.errors import DataError
from data_pipeline.imageio import resize_image, resize_mask
from data_pipeline.kaggle import MASK_DIRS, Sample, find_pairs, find_real_photos, load_sample
from data_pipeline.split import (
    SplitManifest,
    fingerprint,
    is_writable,
    prepare_split,
    user_state_dir,
    write_json_atomic,
)

# bump when the array layout, the resize rule or how a file decodes changes (2: EXIF orientation applied,
# 16-bit grey refused: version 1 caches held those files as decoded before)
CACHE_VERSION = 2
CACHE_DIR_NAME = ".lunartune_cache"
PROGRESS_MIN_FILES = 50  # show a progress bar when the first build decodes at least this many frames
MAX_WORKERS = 64  # DataLoader processes: 99999 of them exhausted the memory of the machine


@dataclass(frozen=True)
class CachedSplit:
    """A built cache: paths of the arrays and what they hold."""

    images_path: Path  # N x H x W x 3 uint8
    masks_path: Path  # N x H x W uint8
    frames: list[str]  # frame id of each row
    class_counts: np.ndarray  # int64[NUM_CLASSES]: pixels per class over the split, at this size
    size: tuple[int, int]  # (height, width)

    def __len__(self) -> int:
        return len(self.frames)

    def open(self) -> tuple[np.ndarray, np.ndarray]:
        """(images, masks) as read-only memory maps."""
        return np.load(self.images_path, mmap_mode="r"), np.load(self.masks_path, mmap_mode="r")


def default_cache_dir(root: str | Path) -> Path:
    """<root>/.lunartune_cache when the data folder is writable, else ~/.cache/lunartune/<root id>/cache."""
    root = Path(root)
    return root / CACHE_DIR_NAME if is_writable(root) else user_state_dir(root) / "cache"


def cache_key(samples: Sequence[Sample], size: tuple[int, int]) -> str:
    body = json.dumps({"version": CACHE_VERSION, "size": list(size), "frames": [s.frame for s in samples],
                       "source": samples[0].source if samples else None, "files": fingerprint(samples)})
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def build_or_load(samples: Sequence[Sample], split: str, size: tuple[int, int], cache_dir: str | Path,
                  progress: bool = True) -> CachedSplit:
    """The cache of these samples at `size`, building it first if no valid one exists."""
    if not samples:
        raise DataError(f"split {split!r}: no frames to cache (expected at least one)")
    size = (int(size[0]), int(size[1]))
    cache_dir = Path(cache_dir)
    prefix = f"{split}-{size[0]}x{size[1]}-{samples[0].source}-"
    stem = cache_dir / (prefix + cache_key(samples, size))
    cached = _read_cached(stem, size)
    if cached is not None:
        return cached
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with _exclusive_lock(stem.with_suffix(".lock")):
            cached = _read_cached(stem, size)  # another process may have built it while we waited
            if cached is None:
                _remove_orphans(stem)
                cached = _build(samples, stem, size, progress and len(samples) >= PROGRESS_MIN_FILES)
    except OSError as err:  # a full disk, a quota, no permission: the folder and what it needs, not a traceback
        needed = len(samples) * size[0] * size[1] * 4 / 2**20  # images (3 bytes per pixel) and masks (1)
        advice = ("free space there; deleting the folder drops every cache in it"
                  if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) else "it must be a writable folder")
        raise DataError(f"{cache_dir}: cannot build the {split} cache there ({err.strerror or err}; it needs "
                        f"{needed:,.1f} MiB): {advice}") from None
    _remove_stale(cache_dir, prefix, keep=stem.name, source=samples[0].source)
    return cached


def _build(samples: Sequence[Sample], stem: Path, size: tuple[int, int], progress: bool) -> CachedSplit:
    images_path, masks_path = Path(f"{stem}.images.npy"), Path(f"{stem}.masks.npy")
    tmp_images, tmp_masks = _tmp(images_path), _tmp(masks_path)
    try:
        images = np.lib.format.open_memmap(tmp_images, mode="w+", dtype=np.uint8, shape=(len(samples), *size, 3))
        masks = np.lib.format.open_memmap(tmp_masks, mode="w+", dtype=np.uint8, shape=(len(samples), *size))
        _reserve(tmp_images), _reserve(tmp_masks)
        counts = np.zeros(NUM_CLASSES, dtype=np.int64)
        for i, sample in enumerate(_progress(samples, progress, stem.name)):
            image, mask = load_sample(sample)
            images[i] = resize_image(image, size)
            masks[i] = resize_mask(mask, size)
            counts += np.bincount(masks[i].ravel(), minlength=NUM_CLASSES)
        images.flush(), masks.flush()
        del images, masks  # close the maps before renaming
        os.replace(tmp_images, images_path)
        os.replace(tmp_masks, masks_path)
    finally:
        tmp_images.unlink(missing_ok=True)
        tmp_masks.unlink(missing_ok=True)
    frames = [s.frame for s in samples]
    # the metadata goes last: its presence says both arrays are complete
    write_json_atomic(Path(f"{stem}.json"), {
        "version": CACHE_VERSION, "size": list(size), "frames": frames, "class_counts": counts.tolist(),
        # what _remove_stale checks: has any of these files changed since?
        "sources": [[str(s.image.resolve()), str(s.mask.resolve())] for s in samples],
        "fingerprint": fingerprint(samples)})
    return CachedSplit(images_path, masks_path, frames, counts, size)


def _reserve(path: Path) -> None:
    """Allocate the (sparse) array file's blocks now: writing through a map onto a full disk is SIGBUS,
    which kills the process with no message; here it is ENOSPC, an OSError. File systems without
    fallocate (some NFS) keep the sparse file."""
    with open(path, "r+b") as handle:
        try:
            os.posix_fallocate(handle.fileno(), 0, os.fstat(handle.fileno()).st_size)
        except OSError as err:
            if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise


def _read_cached(stem: Path, size: tuple[int, int]) -> CachedSplit | None:
    """The cache at `stem` if complete and consistent, else None (it is then rebuilt)."""
    meta_path = Path(f"{stem}.json")
    images_path, masks_path = Path(f"{stem}.images.npy"), Path(f"{stem}.masks.npy")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        images, masks = np.load(images_path, mmap_mode="r"), np.load(masks_path, mmap_mode="r")
        n = len(meta["frames"])
        counts = np.asarray(meta["class_counts"], dtype=np.int64)
    except (OSError, ValueError, KeyError, TypeError):  # incomplete or foreign metadata: rebuilt
        return None
    if images.shape != (n, *size, 3) or masks.shape != (n, *size) or images.dtype != np.uint8 \
            or counts.shape != (NUM_CLASSES,):
        return None
    return CachedSplit(images_path, masks_path, list(meta["frames"]), counts, size)


@contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _tmp(path: Path) -> Path:
    # unique per process and ending in .npy so numpy does not append another suffix
    return path.with_name(f".{path.name[:-4]}.{os.getpid()}.tmp.npy")


def _remove_orphans(stem: Path) -> None:
    """Temporary arrays of a build of this cache that was killed (its finally never ran). Call with the
    cache's lock held: no live builder of it is writing them then."""
    for path in stem.parent.glob(f".{stem.name}.*.tmp.npy"):
        path.unlink(missing_ok=True)


def _remove_stale(cache_dir: Path, prefix: str, keep: str, source: str) -> None:
    """Delete the caches of the same split, size and source whose source files changed or went since they
    were built (open memmaps stay valid). Another frame list's cache with unchanged files is kept."""
    for meta_path in cache_dir.glob(prefix + "*.json"):
        stem = meta_path.with_suffix("")
        if stem.name != keep and _is_stale(meta_path, source):
            for path in (meta_path, Path(f"{stem}.images.npy"), Path(f"{stem}.masks.npy")):
                path.unlink(missing_ok=True)


def _is_stale(meta_path: Path, source: str) -> bool:
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        samples = [Sample(frame, Path(image), Path(mask), source)
                   for frame, (image, mask) in zip(meta["frames"], meta["sources"], strict=True)]
        return meta["version"] != CACHE_VERSION or fingerprint(samples) != meta["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError, DataError):  # unreadable, from an older lunartune, gone
        return True


def _progress(samples: Sequence[Sample], enabled: bool, what: str):
    if not enabled:
        return samples
    from tqdm import tqdm  # only when there is something to show

    return tqdm(samples, desc=f"caching {what}", unit="img")


# -- preparing a data set for training (no torch here: the tuner's driver calls this) ---------------

@dataclass(frozen=True)
class PreparedData:
    manifest: SplitManifest
    caches: dict[str, CachedSplit]  # one per non-empty split
    cache_dir: Path


def prepare(cfg: DataConfig) -> PreparedData:
    """Find the pairs, read or write the split manifest, and build (or find) the cache of every split."""
    check_config(cfg)
    root = Path(cfg.root)
    samples = find_pairs(root, cfg.mask_source, cfg.allow_missing, cfg.exclude_mismatches)
    real = [s.frame for s in find_real_photos(root)]
    manifest = prepare_split(root, cfg.split_seed, cfg.val_fraction, cfg.test_fraction, samples,
                             manifest_path=cfg.manifest_path, cache_dir=cfg.cache_dir,
                             exclude_mismatches=cfg.exclude_mismatches, real_eval=real)
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir(root)
    by_frame = {s.frame: s for s in samples}
    caches = {name: build_or_load([by_frame[f] for f in frames], name, cfg.image_size, cache_dir, cfg.progress)
              for name, frames in manifest.splits.items() if frames}
    return PreparedData(manifest, caches, cache_dir)


def prepare_dataset(cfg: DataConfig) -> SplitManifest:
    """Build the split manifest and the caches of all splits once (the tuner's driver calls this before
    starting trials, so trials only read). Returns the manifest (`.hash`, `.splits`, `.path`)."""
    return prepare(cfg).manifest


def check_config(cfg: DataConfig) -> None:
    """DataError naming the field for values no loader could use."""
    size = tuple(cfg.image_size)
    if len(size) != 2 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in size):
        raise DataError(f"image_size: expected (height, width) positive integers, got {cfg.image_size!r}")
    if not isinstance(cfg.batch_size, int) or cfg.batch_size < 1:
        raise DataError(f"batch_size: expected an integer >= 1, got {cfg.batch_size!r}")
    if cfg.mask_source not in MASK_DIRS:
        raise DataError(f"mask_source: expected one of {', '.join(MASK_DIRS)} for training, got {cfg.mask_source!r}")
    if not isinstance(cfg.num_workers, int) or not 0 <= cfg.num_workers <= MAX_WORKERS:
        raise DataError(f"num_workers: expected an integer in [0, {MAX_WORKERS}], got {cfg.num_workers!r}")
