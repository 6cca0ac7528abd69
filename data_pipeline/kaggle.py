"""Find render/mask pairs and real photos in the Kaggle Artificial Lunar Landscape layout.

    <root>/images/render/renderNNNN.png   paired by frame number with
    <root>/images/clean/cleanNNNN.png     (mask_source "clean", default) or
    <root>/images/ground/groundNNNN.png   (mask_source "ground")
    <root>/real_moon_images/PCAM1.png     paired with real_moon_images/g_PCAM1.png (source "real")
    <root>/mismatch_IDs.txt               optional: frames whose mask does not match the render

Also the evaluation view: `load_eval_set` yields images and masks at their own size.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from data_pipeline.classes import decode_mask
from data_pipeline.errors import DataError
from data_pipeline.imageio import load_rgb, resize_image

RENDER_DIR = Path("images/render")
MASK_DIRS = {"clean": Path("images/clean"), "ground": Path("images/ground")}
REAL_DIR = Path("real_moon_images")
MISMATCH_FILE = "mismatch_IDs.txt"
REAL_MASK_PREFIX = "g_"
_LISTED = 10  # how many missing files an error message names


@dataclass(frozen=True)
class Sample:
    frame: str  # "0001" for render0001.png; "PCAM1" for a real photo
    image: Path  # the render or photo
    mask: Path  # its colour mask
    source: str  # how the mask decodes: clean | ground | real


@dataclass(frozen=True)
class PairScan:
    """Everything `find_pairs` saw: the pairs, and what it would skip or reject."""

    samples: list[Sample]
    renders_without_mask: list[Path] = field(default_factory=list)
    masks_without_render: list[Path] = field(default_factory=list)
    excluded_frames: list[str] = field(default_factory=list)  # listed in mismatch_IDs.txt and dropped
    mismatch_file: Path | None = None  # the exclusion list that was applied, if any


@dataclass(frozen=True)
class RealScan:
    samples: list[Sample]
    photos_without_mask: list[Path] = field(default_factory=list)
    masks_without_photo: list[Path] = field(default_factory=list)


def find_pairs(root: str | Path, mask_source: str = "clean", allow_missing: bool = False,
               exclude_mismatches: bool = False) -> list[Sample]:
    """Render/mask pairs sorted by frame number.

    A render without a mask (or a mask without a render) is an error listing them, unless
    `allow_missing`, which skips them. `exclude_mismatches` drops frames listed in mismatch_IDs.txt
    when that file exists.
    """
    scan = scan_pairs(root, mask_source, exclude_mismatches)
    unpaired = scan.renders_without_mask + scan.masks_without_render
    if unpaired and not allow_missing:
        raise DataError(_unpaired_message(Path(root), mask_source, scan))
    if not scan.samples:
        raise DataError(f"{Path(root) / RENDER_DIR}: no render/{mask_source} pairs found "
                        f"(expected renderNNNN.png with {MASK_DIRS[mask_source] / (mask_source + 'NNNN.png')})")
    return scan.samples


def scan_pairs(root: str | Path, mask_source: str = "clean", exclude_mismatches: bool = False) -> PairScan:
    """Pairs plus the unpaired files, without judging them (for `lunartune data check`)."""
    root = _existing_dir(Path(root), "data folder")
    if mask_source not in MASK_DIRS:
        raise DataError(f"mask_source: expected one of {', '.join(MASK_DIRS)}, got {mask_source!r}")
    renders = _numbered(_existing_dir(root / RENDER_DIR, "render folder"), "render")
    masks = _numbered(_existing_dir(root / MASK_DIRS[mask_source], f"{mask_source} mask folder"), mask_source)
    excluded, mismatch_file = set(), None
    if exclude_mismatches:  # asked for: a missing list must not pass as "nothing to exclude"
        mismatch_file = root / MISMATCH_FILE
        if not mismatch_file.is_file():
            raise DataError(f"{mismatch_file}: not found; exclude_mismatches (--exclude-mismatches) leaves out the "
                            f"frames it lists (later versions of the Kaggle data set ship it): add it, or leave "
                            f"the flag out")
        excluded = _read_frame_numbers(mismatch_file)
    samples = [Sample(frame, path, masks[number][1], mask_source)
               for number, (frame, path) in sorted(renders.items())
               if number in masks and number not in excluded]
    return PairScan(
        samples=samples,
        renders_without_mask=[p for n, (_, p) in sorted(renders.items()) if n not in masks],
        masks_without_render=[p for n, (_, p) in sorted(masks.items()) if n not in renders],
        excluded_frames=[f for n, (f, _) in sorted(renders.items()) if n in excluded and n in masks],
        mismatch_file=mismatch_file,
    )


def render_files(root: str | Path) -> list[Path]:
    """Every images/render/renderNNNN.png, by frame number (named as scan_pairs reads them); [] if no folder."""
    folder = Path(root) / RENDER_DIR
    return [path for _, (_, path) in sorted(_numbered(folder, "render").items())] if folder.is_dir() else []


def find_real_photos(root: str | Path) -> list[Sample]:
    """Real photos that have a g_* mask, sorted (PCAM before TCAM, then by number); [] if none."""
    return scan_real_photos(root).samples


def scan_real_photos(root: str | Path) -> RealScan:
    """Real photos paired with their masks, plus the unpaired files. No real_moon_images/ -> empty."""
    folder = _existing_dir(Path(root), "data folder") / REAL_DIR
    if not folder.is_dir():
        return RealScan(samples=[])
    pngs = {p.name: p for p in folder.iterdir() if p.suffix.lower() == ".png" and p.is_file()}
    photos = {n: p for n, p in pngs.items() if not n.startswith(REAL_MASK_PREFIX)}
    masks = {n[len(REAL_MASK_PREFIX):]: p for n, p in pngs.items() if n.startswith(REAL_MASK_PREFIX)}
    names = sorted(set(photos) & set(masks), key=_photo_order)
    return RealScan(
        samples=[Sample(Path(n).stem, photos[n], masks[n], "real") for n in names],
        photos_without_mask=[photos[n] for n in sorted(set(photos) - set(masks), key=_photo_order)],
        masks_without_photo=[masks[n] for n in sorted(set(masks) - set(photos), key=_photo_order)],
    )


def load_sample(sample: Sample) -> tuple[np.ndarray, np.ndarray]:
    """(image H x W x 3 uint8, mask H x W uint8 class indices) at the MASK's own size.

    A real photo larger (or smaller) than its hand-made mask is resized to the mask (bilinear); a
    render whose mask has another size is a DataError, because render/mask pairs are pixel-aligned.
    """
    image = load_rgb(sample.image)
    mask = decode_mask(load_rgb(sample.mask), sample.source, name=str(sample.mask))
    if image.shape[:2] != mask.shape:
        if sample.source != "real":
            raise DataError(f"{sample.mask}: mask is {mask.shape[1]}x{mask.shape[0]} but its render "
                            f"{sample.image.name} is {image.shape[1]}x{image.shape[0]} (expected equal sizes)")
        image = resize_image(image, mask.shape)
    return image, mask


@dataclass(frozen=True)
class EvalSample:
    name: str  # frame id ("0034") or photo name ("PCAM1")
    image: np.ndarray  # H x W x 3 uint8, the mask's own size (not the training size)
    mask: np.ndarray  # H x W uint8 class indices 0..3
    source: str  # clean | ground | real
    image_path: Path
    mask_path: Path


class EvalSet(Sequence[EvalSample]):
    """A lazy list of evaluation samples: each image is decoded when indexed, so a large set never sits
    in memory at once. `len()` is the number of samples; iterate or index to get `EvalSample`s."""

    def __init__(self, samples: Sequence[Sample]):
        self.samples = list(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return EvalSet(self.samples[i])
        s = self.samples[i]
        image, mask = load_sample(s)
        return EvalSample(s.frame, image, mask, s.source, s.image, s.mask)

    def __iter__(self) -> Iterator[EvalSample]:
        return (self[i] for i in range(len(self)))


def load_eval_set(root: str | Path, kind: str = "render", mask_source: str = "clean",
                  frames: Sequence[str] | None = None, allow_missing: bool = False,
                  exclude_mismatches: bool = False) -> EvalSet:
    """Evaluation samples at their own size: kind "render" (pairs of images/render) or "real"
    (real_moon_images with g_* masks; an empty set when the folder has none).

    `frames` keeps only those frame ids (e.g. a manifest's test split); an unknown id is an error.
    Each item is an `EvalSample` with image H x W x 3 uint8 and mask H x W uint8 of the same H x W.
    """
    if kind == "render":
        samples = find_pairs(root, mask_source, allow_missing, exclude_mismatches)
    elif kind == "real":
        samples = find_real_photos(root)
    else:
        raise DataError(f"kind: expected 'render' or 'real', got {kind!r}")
    if frames is not None:
        samples = _select_frames(samples, frames, Path(root))
    return EvalSet(samples)


def _select_frames(samples: list[Sample], frames: Sequence[str], root: Path) -> list[Sample]:
    by_frame = {s.frame: s for s in samples}
    unknown = [f for f in frames if f not in by_frame]
    if unknown:
        raise DataError(f"{root}: {len(unknown)} requested frames are not in the data set: "
                        f"{', '.join(unknown[:_LISTED])}")
    return [by_frame[f] for f in frames]


def _existing_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DataError(f"{path}: {what} not found (expected the Kaggle layout: "
                        f"images/render, images/clean or images/ground, optional real_moon_images)")
    return path


def _numbered(folder: Path, prefix: str) -> dict[int, tuple[str, Path]]:
    """{frame number: (frame id as written, path)} for <prefix>NNNN.png files; other files are ignored."""
    pattern = re.compile(rf"{re.escape(prefix)}(\d+)\.png", re.IGNORECASE)
    found = {}
    for path in sorted(folder.iterdir()):
        match = pattern.fullmatch(path.name)
        if match:
            number = int(match.group(1))
            if number in found:  # render1.png beside render0001.png: which one pairs would be chance
                raise DataError(f"{found[number][1]} and {path}: two files for frame {number}; keep one")
            found[number] = (match.group(1), path)
    return found


def _read_frame_numbers(path: Path) -> set[int]:
    """Frame numbers in an ID list: any integers, one per line or separated by commas/spaces."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise DataError(f"{path}: cannot read the frame ID list: {err}") from None
    return {int(n) for n in re.findall(r"\d+", text)}


def _photo_order(name: str) -> tuple[str, int, str]:
    match = re.fullmatch(r"([A-Za-z_]*)(\d*).*", Path(name).stem)
    prefix, number = match.group(1), match.group(2)
    return prefix, int(number) if number else -1, name


def _unpaired_message(root: Path, mask_source: str, scan: PairScan) -> str:
    parts = []
    for what, paths in (("renders without a mask", scan.renders_without_mask),
                        ("masks without a render", scan.masks_without_render)):
        if paths:
            more = f" and {len(paths) - _LISTED} more" if len(paths) > _LISTED else ""
            parts.append(f"{len(paths)} {what}: {', '.join(p.name for p in paths[:_LISTED])}{more}")
    return (f"{root}: unpaired files with mask source {mask_source!r} - " + "; ".join(parts)
            + ". Every render needs its mask; pass allow_missing (--allow-missing) to skip them.")
