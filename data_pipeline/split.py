"""A seeded train/val/test split by frame, written once as a JSON manifest beside the data.

Every trial of a sweep and every later evaluation reads the same manifest, so they all see the same
split. The manifest also holds a fingerprint of the source files (size + mtime of every render and
mask); its `hash` identifies the exact data + split (the tuner logs it to MLflow).

Where it lives: `<root>/lunartune_split.json` when the data folder is writable, else beside the cache
(`<cache_dir>/lunartune_split-<root id>.json`), else the per-user fallback
`~/.cache/lunartune/<root id>/lunartune_split.json`. A folder whose permission bits forbid writing is
treated as read-only even for root, so shared read-only data is never written into.

The split: frames are ordered by a keyed hash of (seed, frame id); the first round(n * test_fraction)
go to test, the next round(n * val_fraction) to val, the rest to train. A frame's place depends only on
the seed and its id, so adding frames to a data set moves few existing frames between splits.
Real photos (real_moon_images) are listed separately under `real_eval` and never trained on.
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from data_pipeline.errors import DataError
from data_pipeline.kaggle import Sample

MANIFEST_NAME = "lunartune_split.json"
MANIFEST_VERSION = 1
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SplitManifest:
    path: Path  # where the manifest file lives
    splits: dict[str, list[str]]  # frame ids per train / val / test, each sorted
    params: dict  # mask_source, seed, val_fraction, test_fraction, exclude_mismatches
    files_hash: str  # fingerprint of every sample file (size + mtime)
    hash: str  # identifies params + splits + files: the "manifest hash" logged with each run
    real_eval: list[str] = field(default_factory=list)  # real photos: evaluation only

    @property
    def sizes(self) -> dict[str, int]:
        return {name: len(frames) for name, frames in self.splits.items()}

    def to_dict(self) -> dict:
        return {"version": MANIFEST_VERSION, "params": self.params, "files_hash": self.files_hash,
                "splits": self.splits, "real_eval": self.real_eval, "hash": self.hash}


# -- where state lives ----------------------------------------------------------------------------

def root_id(root: str | Path) -> str:
    """Short stable id of a data folder (its absolute path), for per-user cache folders."""
    return hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:16]


def is_writable(folder: Path) -> bool:
    """True when `folder` exists and may be written: permission bits are honoured even for root."""
    try:
        mode = folder.stat().st_mode
    except OSError:
        return False
    return stat.S_ISDIR(mode) and bool(mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)) \
        and os.access(folder, os.W_OK)


def user_state_dir(root: str | Path) -> Path:
    """The per-user fallback for a read-only data folder: ~/.cache/lunartune/<root id>."""
    return Path.home() / ".cache" / "lunartune" / root_id(root)


def default_manifest_path(root: str | Path, cache_dir: str | Path | None = None) -> Path:
    root = Path(root)
    if is_writable(root):
        return root / MANIFEST_NAME
    if cache_dir is not None:
        return Path(cache_dir) / f"lunartune_split-{root_id(root)}.json"
    return user_state_dir(root) / MANIFEST_NAME


# -- the split ------------------------------------------------------------------------------------

def fingerprint(samples: Sequence[Sample]) -> str:
    """sha256 over (frame, file name, size, mtime) of every image and mask: changes when a file does."""
    digest = hashlib.sha256()
    for s in samples:
        for path in (s.image, s.mask):
            try:
                st = path.stat()
            except OSError as err:
                raise DataError(f"{path}: cannot stat source file: {err}") from None
            digest.update(f"{s.frame}\0{path.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def min_frames(val_fraction: float, test_fraction: float) -> int:
    """The fewest frames that leave no split empty (4 at the default 15 % / 15 %)."""
    _check_fractions(val_fraction, test_fraction)
    n = 1
    while min(round(n * val_fraction), n - round(n * val_fraction) - round(n * test_fraction),
              round(n * test_fraction) if test_fraction > 0 else 1) < 1:
        n += 1
    return n


def split_frames(frames: Sequence[str], seed: int, val_fraction: float,
                 test_fraction: float) -> dict[str, list[str]]:
    """Deterministic split of frame ids; an empty val (or requested test) split is a DataError."""
    _check_fractions(val_fraction, test_fraction)
    n = len(frames)
    n_test, n_val = round(n * test_fraction), round(n * val_fraction)
    n_train = n - n_test - n_val
    for name, count, wanted in (("val", n_val, True), ("test", n_test, test_fraction > 0),
                                ("train", n_train, True)):
        if wanted and count < 1:
            raise DataError(f"data set too small: {n} frames leave the {name} split empty "
                            f"(val_fraction={val_fraction}, test_fraction={test_fraction}); "
                            f"{min_frames(val_fraction, test_fraction)} frames at least")
    ordered = sorted(frames, key=lambda f: hashlib.sha256(f"{seed}:{f}".encode()).hexdigest())
    parts = {"test": ordered[:n_test], "val": ordered[n_test:n_test + n_val], "train": ordered[n_test + n_val:]}
    return {name: sorted(parts[name], key=_frame_order) for name in SPLITS}


def load_or_create_split(root: str | Path, seed: int, val_fraction: float, test_fraction: float,
                         samples: Sequence[Sample], *, manifest_path: str | Path | None = None,
                         cache_dir: str | Path | None = None, exclude_mismatches: bool = False,
                         real_eval: Sequence[str] = ()) -> dict[str, list[str]]:
    """Frame ids per train/val/test, from the manifest if it matches, else newly split and written."""
    return prepare_split(root, seed, val_fraction, test_fraction, samples, manifest_path=manifest_path,
                         cache_dir=cache_dir, exclude_mismatches=exclude_mismatches,
                         real_eval=real_eval).splits


def prepare_split(root: str | Path, seed: int, val_fraction: float, test_fraction: float,
                  samples: Sequence[Sample], *, manifest_path: str | Path | None = None,
                  cache_dir: str | Path | None = None, exclude_mismatches: bool = False,
                  real_eval: Sequence[str] = ()) -> SplitManifest:
    """The manifest for these samples and parameters, reading it when it matches, else (re)writing it.

    Written once: a manifest with the same parameters and frames keeps its split even if the split
    rule changes in a later version; if only file contents changed, the split stays and the
    fingerprint (and hash) are updated. Different parameters or frames give a new split.
    """
    _check_fractions(val_fraction, test_fraction)
    path = Path(manifest_path) if manifest_path else default_manifest_path(root, cache_dir)
    params = {"mask_source": samples[0].source if samples else None, "seed": int(seed),
              "val_fraction": float(val_fraction), "test_fraction": float(test_fraction),
              "exclude_mismatches": bool(exclude_mismatches)}
    frames = [s.frame for s in samples]
    files_hash = fingerprint(samples)
    existing = _read_manifest(path)
    if existing and existing.get("params") == params and _frames_of(existing) == sorted(frames, key=_frame_order):
        if existing.get("files_hash") == files_hash and existing.get("real_eval") == list(real_eval):
            return _manifest(path, existing["splits"], params, files_hash, list(real_eval))
        splits = existing["splits"]  # same frames, changed contents: the split itself stays
    else:
        splits = split_frames(frames, seed, val_fraction, test_fraction)
    manifest = _manifest(path, splits, params, files_hash, list(real_eval))
    write_json_atomic(path, manifest.to_dict())
    return manifest


def write_json_atomic(path: Path, data: dict) -> None:
    """Write JSON to a temp file in the same folder, then rename: readers never see half a file. The file
    gets the mode the umask gives (mkstemp's 0600 hid it from the rest of a shared group)."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "x", encoding="utf-8") as f:
            json.dump(data, f, indent=1)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _manifest(path: Path, splits: dict, params: dict, files_hash: str, real_eval: list[str]) -> SplitManifest:
    body = json.dumps({"params": params, "splits": splits, "files_hash": files_hash}, sort_keys=True)
    return SplitManifest(path=path, splits={k: list(splits[k]) for k in SPLITS}, params=params,
                         files_hash=files_hash, hash=hashlib.sha256(body.encode()).hexdigest()[:16],
                         real_eval=real_eval)


def _read_manifest(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: unreadable split manifest ({err}); delete it to make a new split") from None
    if not isinstance(data, dict) or data.get("version") != MANIFEST_VERSION:
        return None  # another format version: split afresh rather than guess
    splits = data.get("splits")
    if not isinstance(splits, dict) or set(splits) != set(SPLITS) or not all(
            isinstance(frames, list) and all(isinstance(f, str) for f in frames) for frames in splits.values()):
        raise DataError(f"{path}: split manifest has no train/val/test lists of frame names (strings); "
                        f"delete it to make a new split")
    return data


def _frames_of(manifest: dict) -> list[str]:
    return sorted((f for name in SPLITS for f in manifest["splits"][name]), key=_frame_order)


def _frame_order(frame: str) -> tuple[int, str]:
    return (int(frame), frame) if frame.isdigit() else (-1, frame)


def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    if not 0 < val_fraction < 1:
        raise DataError(f"val_fraction: expected a number in (0, 1), got {val_fraction}")
    if not 0 <= test_fraction < 1:
        raise DataError(f"test_fraction: expected a number in [0, 1), got {test_fraction}")
    if val_fraction + test_fraction >= 1:
        raise DataError(f"val_fraction + test_fraction: expected < 1 to leave frames for training, "
                        f"got {val_fraction} + {test_fraction}")
