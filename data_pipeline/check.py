"""What `lunartune data check DIR` reports: counts, class balance and problems of a Kaggle-layout folder.

Renders (with the chosen mask source) and real photos (real_moon_images with g_* masks) are reported
separately. Every file is decoded once, so truncated PNGs, unknown mask colours and size mismatches are
all found; problems are collected (never raised) so one run lists them all.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from data_pipeline.classes import CLASS_NAMES, NUM_CLASSES, ROCK_CLASS_IDS, off_palette_pixels
from data_pipeline.errors import DataError
from data_pipeline.imageio import load_rgb, read_size
from data_pipeline.kaggle import RENDER_DIR, Sample, load_sample, scan_pairs, scan_real_photos

_SHOWN = 20  # problems / notes listed per section before "... and N more"
OFF_PALETTE_SHARE = 0.01  # of a real mask's pixels far from every palette colour: a problem above this
_PROGRESS_MIN_FILES = 50


@dataclass
class SetReport:
    """One evaluated set: the renders, or the real photos."""

    title: str
    pairs: int = 0  # pairs that decoded cleanly
    unreadable: int = 0  # pairs found that did not (each one is a problem)
    class_pixels: np.ndarray = field(default_factory=lambda: np.zeros(NUM_CLASSES, dtype=np.int64))
    frames_without: Counter = field(default_factory=Counter)  # class name -> masks that lack it
    sizes: Counter = field(default_factory=Counter)  # "WxH" of the masks -> count
    problems: list[str] = field(default_factory=list)  # make the check fail
    notes: list[str] = field(default_factory=list)  # worth knowing, not failures

    def balance(self) -> dict[str, float]:
        total = max(int(self.class_pixels.sum()), 1)
        return {name: float(n) / total for name, n in zip(CLASS_NAMES, self.class_pixels)}

    def to_dict(self) -> dict:
        return {"title": self.title, "pairs": self.pairs, "unreadable_pairs": self.unreadable, "class_balance": self.balance(),
                "class_pixels": self.class_pixels.tolist(), "frames_without": dict(self.frames_without),
                "sizes": dict(self.sizes), "problems": self.problems, "notes": self.notes}


@dataclass
class CheckReport:
    root: Path
    mask_source: str
    renders: SetReport
    real: SetReport

    @property
    def problems(self) -> list[str]:
        return self.renders.problems + self.real.problems

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {"root": str(self.root), "mask_source": self.mask_source, "ok": self.ok,
                "renders": self.renders.to_dict(), "real": self.real.to_dict()}

    def format(self) -> str:
        lines = [f"data set {self.root} (mask source {self.mask_source})"]
        for part in (self.renders, self.real):
            lines += _format_set(part)
        lines.append("OK: no problems" if self.ok else f"FAILED: {len(self.problems)} problem(s)")
        return "\n".join(lines)


def check_dataset(root: str | Path, mask_source: str = "clean", allow_missing: bool = False,
                  exclude_mismatches: bool = False, progress: bool = False) -> CheckReport:
    """Validate a Kaggle-layout folder: renders with `mask_source` masks, and real photos if any."""
    root = Path(root)
    report = CheckReport(root, mask_source, SetReport(f"renders ({mask_source} masks)"),
                         SetReport("real photos (real_moon_images, g_* masks; evaluation only)"))
    if not root.is_dir():
        report.renders.problems.append(f"{root}: " + ("not a folder (expected a data set folder in the Kaggle layout)"
                                                      if root.exists() else "data folder not found"))
        return report
    interrupted = _interrupted_generation(root)
    if interrupted:
        report.renders.problems.append(interrupted)
    real = _check_real(root, report.real, progress)
    _check_renders(root, mask_source, allow_missing, exclude_mismatches, report.renders, progress,
                   has_real=real > 0)
    return report


def _interrupted_generation(root: Path) -> str | None:
    """A generated folder whose run was stopped: its scenes so far look like a smaller, valid data set."""
    from data_pipeline.synth import MANIFEST, read_manifest

    manifest = read_manifest(root)
    if manifest is None or manifest.get("complete") is not False:
        return None
    return (f"{root / MANIFEST}: the generation of {manifest.get('count')} scenes was interrupted; rerun "
            f"`lunartune data synth` with the same parameters to complete it")


def _check_renders(root: Path, mask_source: str, allow_missing: bool, exclude_mismatches: bool,
                   out: SetReport, progress: bool, has_real: bool) -> None:
    if has_real and not (root / RENDER_DIR).is_dir():
        out.notes.append(f"no {RENDER_DIR} folder: real photos only")
        return
    try:
        scan = scan_pairs(root, mask_source, exclude_mismatches)
    except DataError as err:
        out.problems.append(str(err))
        return
    unpaired = [(p, "render without a mask") for p in scan.renders_without_mask] + \
               [(p, "mask without a render") for p in scan.masks_without_render]
    target = out.notes if allow_missing else out.problems
    target += [f"{p}: {what}" + (" (skipped: allow_missing)" if allow_missing else "") for p, what in unpaired]
    if scan.mismatch_file:
        out.notes.append(f"{len(scan.excluded_frames)} frames excluded as listed in {scan.mismatch_file.name}")
    if not scan.samples:
        out.problems.append(f"{root / RENDER_DIR}: no render/{mask_source} pairs found")
    elif len(scan.samples) < (needed := _frames_to_train()):
        out.notes.append(f"{len(scan.samples)} pairs: too few to train on (the train/val/test split needs at "
                         f"least {needed}); `lunartune evaluate` scores them")
    _tally(scan.samples, out, progress)


def _frames_to_train() -> int:
    from data_pipeline.config import DataConfig
    from data_pipeline.split import min_frames

    defaults = DataConfig(root=".")
    return min_frames(defaults.val_fraction, defaults.test_fraction)


def _check_real(root: Path, out: SetReport, progress: bool) -> int:
    scan = scan_real_photos(root)
    out.notes += [f"{p}: photo without a g_ mask (not evaluable)" for p in scan.photos_without_mask]
    out.problems += [f"{p}: mask without its photo" for p in scan.masks_without_photo]
    resized = _tally(scan.samples, out, progress)
    if resized:
        out.notes.append(f"{resized} photos differ in size from their masks: resized to the mask when loaded")
    return len(scan.samples) + len(scan.photos_without_mask)


def _tally(samples: Sequence[Sample], out: SetReport, progress: bool) -> int:
    """Decode every pair into `out`; returns how many images had to be resized to their mask."""
    resized = 0
    for sample in _progress(samples, progress):
        try:
            image, mask = load_sample(sample)
        except DataError as err:
            out.problems.append(str(err))
            out.unreadable += 1
            continue
        if sample.source == "real":
            _check_real_colours(sample, mask.size, out)
        counts = np.bincount(mask.ravel(), minlength=NUM_CLASSES)
        out.pairs += 1
        out.class_pixels += counts
        out.sizes[f"{mask.shape[1]}x{mask.shape[0]}"] += 1
        out.frames_without.update(CLASS_NAMES[i] for i in ROCK_CLASS_IDS if counts[i] == 0)
        resized += sample.source == "real" and _header_size_differs(sample)
    return resized


def _check_real_colours(sample: Sample, pixels: int, out: SetReport) -> None:
    """Hand-drawn masks decode to the nearest palette colour; colours no anti-aliasing explains (white,
    yellow: annotations, another colour code) are a problem above OFF_PALETTE_SHARE, else a note."""
    far = off_palette_pixels(load_rgb(sample.mask))
    if far:
        text = (f"{sample.mask}: {far} pixels ({far / pixels:.1%}) are far from every palette colour (expected "
                f"black, red, green, blue and their anti-aliased blends); they decode as the nearest class")
        (out.problems if far > OFF_PALETTE_SHARE * pixels else out.notes).append(text)


def _header_size_differs(sample: Sample) -> bool:
    return read_size(sample.image) != read_size(sample.mask)


def _format_set(part: SetReport) -> list[str]:
    lines = [f"{part.title}: {part.pairs} pairs" + (f" read cleanly, {part.unreadable} not" if part.unreadable else "")]
    if part.pairs:
        sizes = ", ".join(f"{s} x{n}" for s, n in part.sizes.most_common(5))
        lines.append(f"  sizes (mask WxH): {sizes}")
        lines.append("  class balance: " + "  ".join(f"{k} {v:.1%}" for k, v in part.balance().items()))
        lines.append("  masks without " + ", ".join(f"{CLASS_NAMES[i]}: {part.frames_without[CLASS_NAMES[i]]}"
                                                    for i in ROCK_CLASS_IDS))
    for label, items in (("problem", part.problems), ("note", part.notes)):
        lines += [f"  {label}: {item}" for item in items[:_SHOWN]]
        if len(items) > _SHOWN:
            lines.append(f"  ... and {len(items) - _SHOWN} more {label}s")
    return lines


def _progress(samples: Sequence[Sample], enabled: bool):
    if not enabled or len(samples) < _PROGRESS_MIN_FILES:
        return samples
    from tqdm import tqdm

    return tqdm(samples, desc="checking", unit="pair")
