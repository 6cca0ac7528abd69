"""Class names and the colour code of the masks: the only place mask colours live.

The Kaggle Artificial Lunar Landscape masks use four pure colours (see ../shared/DATASET.md):

    index  name         colour in `clean` masks
    0      ground       (0, 0, 0)      black (also "unlabelled")
    1      sky          (255, 0, 0)    red
    2      small_rocks  (0, 255, 0)    green
    3      large_rocks  (0, 0, 255)    blue

`decode_mask` turns an H x W x 3 uint8 RGB mask into H x W uint8 class indices; it knows three sources:

- "clean":  processed masks with exactly the four colours. Any other colour is a DataError naming how
            many pixels and which colours were found.
- "ground": the raw render labels, graded intensities (~1,000 colours per image: sky near (226, 0, 0),
            distant rocks darker, many near-zero noise values). Rule: a channel is "on" when its value
            is >= GROUND_THRESHOLD; the brightest "on" channel picks the class (R -> sky, G -> small
            rocks, B -> large rocks; ties go to the earlier channel); no channel on -> ground. The
            threshold drops the near-zero noise but keeps darker, distant rocks.
- "real":   hand-made masks of the real photos, with anti-aliased edges: each pixel takes the class of
            the nearest palette colour (squared RGB distance; ties go to the lower index).
"""
from __future__ import annotations

import numpy as np

from data_pipeline.errors import DataError

CLASS_NAMES: tuple[str, ...] = ("ground", "sky", "small_rocks", "large_rocks")
NUM_CLASSES = len(CLASS_NAMES)
ROCK_CLASS_IDS: tuple[int, ...] = (2, 3)  # small_rocks, large_rocks: the classes a rock objective scores
PALETTE = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]], dtype=np.uint8)  # row i = class i
PALETTE.setflags(write=False)  # shared module constant: nobody may recolour it in place
MASK_SOURCES: tuple[str, ...] = ("clean", "ground", "real")
GROUND_THRESHOLD = 20  # "ground" masks: channel values below this are label noise, not a class

_MAX_LISTED_COLOURS = 5  # how many unknown colours an error message lists
# a "real" mask pixel whose largest channel difference from every palette colour exceeds this is no
# anti-aliased edge (an even blend of two palette colours lies within 128 of one of them): white or yellow
# annotation, another colour code. Nearest-colour decoding still gives it a class: `data check` reports it.
OFF_PALETTE_DISTANCE = 160


def class_table() -> list[dict]:
    """[{name, index, color: (r, g, b)}, ...] in class-index order, for reports and checkpoints."""
    return [{"name": name, "index": i, "color": tuple(int(c) for c in PALETTE[i])}
            for i, name in enumerate(CLASS_NAMES)]


def decode_mask(rgb: np.ndarray, source: str, *, name: str = "mask") -> np.ndarray:
    """H x W x 3 uint8 RGB mask -> H x W uint8 class indices (0..3), by the rule of `source`.

    `name` (a file path, usually) only goes into error messages.
    """
    _check_rgb(rgb, name)
    if source == "clean":
        return _decode_exact(rgb, name)
    if source == "ground":
        return _decode_graded(rgb)
    if source == "real":
        return _decode_nearest(rgb)
    raise DataError(f"{name}: unknown mask source {source!r}; expected one of {', '.join(MASK_SOURCES)}")


def encode_mask(indices: np.ndarray) -> np.ndarray:
    """H x W class indices (any integer dtype, values 0..3) -> H x W x 3 uint8 RGB in the clean colours."""
    indices = np.asarray(indices)
    if indices.ndim != 2 or not np.issubdtype(indices.dtype, np.integer):
        raise DataError(f"encode_mask: expected an H x W integer array, got {indices.dtype} {indices.shape}")
    if indices.size and (indices.min() < 0 or indices.max() >= NUM_CLASSES):
        raise DataError(f"encode_mask: class indices must lie in 0..{NUM_CLASSES - 1}, "
                        f"got {indices.min()}..{indices.max()}")
    return PALETTE[indices]


def _check_rgb(rgb: np.ndarray, name: str) -> None:
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        got = f"{rgb.dtype} {rgb.shape}" if isinstance(rgb, np.ndarray) else type(rgb).__name__
        raise DataError(f"{name}: expected an H x W x 3 uint8 RGB array, got {got}")


def _pack(rgb: np.ndarray) -> np.ndarray:
    """One int32 per pixel (r << 16 | g << 8 | b): compares a colour in one vectorised pass."""
    rgb = rgb.astype(np.int32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def _decode_exact(rgb: np.ndarray, name: str) -> np.ndarray:
    packed = _pack(rgb)
    out = np.full(packed.shape, 255, dtype=np.uint8)  # 255 marks "no palette colour"
    for index, code in enumerate(_pack(PALETTE[None])[0]):
        out[packed == code] = index
    unknown = out == 255
    if unknown.any():
        raise DataError(_unknown_colours_message(name, packed[unknown]))
    return out


def _unknown_colours_message(name: str, packed_unknown: np.ndarray) -> str:
    codes, counts = np.unique(packed_unknown, return_counts=True)
    order = np.argsort(-counts)[:_MAX_LISTED_COLOURS]
    listed = ", ".join(f"({c >> 16}, {(c >> 8) & 255}, {c & 255}) x{n}"
                       for c, n in zip(codes[order].tolist(), counts[order].tolist()))
    more = f" and {len(codes) - len(order)} more" if len(codes) > len(order) else ""
    return (f"{name}: {packed_unknown.size} pixels have colours outside the clean palette "
            f"(expected only black, red, green, blue): {listed}{more}. "
            f"Graded raw labels are read as mask source 'ground', from images/ground/ (--mask-source ground "
            f"in data check, train and tune; evaluate reads it for frames without a clean mask).")


def _decode_graded(rgb: np.ndarray) -> np.ndarray:
    on = rgb >= GROUND_THRESHOLD
    # argmax returns the first maximum, so ties go to the earlier channel (R, then G, then B)
    strongest = np.argmax(np.where(on, rgb, 0), axis=-1).astype(np.uint8)
    return np.where(on.any(axis=-1), strongest + 1, 0).astype(np.uint8)


def off_palette_pixels(rgb: np.ndarray) -> int:
    """How many pixels of an RGB mask lie farther than OFF_PALETTE_DISTANCE from every palette colour."""
    diff = np.abs(rgb[..., None, :].astype(np.int16) - PALETTE.astype(np.int16)).max(axis=-1)  # H x W x 4
    return int((diff.min(axis=-1) > OFF_PALETTE_DISTANCE).sum())


def _decode_nearest(rgb: np.ndarray) -> np.ndarray:
    diff = rgb[..., None, :].astype(np.int32) - PALETTE.astype(np.int32)  # H x W x 4 x 3
    distance = np.einsum("hwkc,hwkc->hwk", diff, diff)
    return np.argmin(distance, axis=-1).astype(np.uint8)
