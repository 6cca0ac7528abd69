"""Reading, writing and resizing images and masks with PIL; every failure names the file."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps

from data_pipeline.errors import DataError

# PIL raises these for truncated, corrupt or non-image files (SyntaxError: some broken headers)
_PIL_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
_QUARTER_TURNS = {5, 6, 7, 8}  # EXIF orientations whose display swaps width and height


def load_rgb(path: str | Path) -> np.ndarray:
    """The image at `path` as H x W x 3 uint8 RGB. RGBA drops alpha; L and P modes are converted; 16- and
    32-bit grey (I modes) are refused, since converting them would clip them to white.

    A missing, truncated or corrupt file raises DataError naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found (expected a PNG image)")
    try:
        with Image.open(path) as im:
            im.load()  # decode now: a truncated PNG only fails here, not at open()
            if im.mode.startswith("I"):  # 16/32-bit grey: convert("RGB") would clip every value above 255
                raise DataError(f"{path}: {im.mode} image ({'16' if ';16' in im.mode else '32'}-bit grey); "
                                f"expected 8 bits per channel (RGB, RGBA, L or P)")
            # a camera JPEG stored sideways with an orientation tag: as viewers show it (a no-op without one)
            return np.asarray(ImageOps.exif_transpose(im).convert("RGB"), dtype=np.uint8).copy()
    except DataError:
        raise  # ours, already naming the file (a ValueError, which _PIL_ERRORS would wrap again)
    except _PIL_ERRORS as err:
        raise DataError(f"{path}: cannot decode image (expected a readable PNG or JPEG): {err}") from None


def read_size(path: str | Path) -> tuple[int, int]:
    """(height, width) from the file header, without decoding the pixels."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            turned = im.getexif().get(ExifTags.Base.Orientation) in _QUARTER_TURNS  # as load_rgb returns it
            return (im.width, im.height) if turned else (im.height, im.width)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found (expected a PNG image)") from None
    except _PIL_ERRORS as err:
        raise DataError(f"{path}: cannot read image header (expected a PNG): {err}") from None


def save_rgb(path: str | Path, rgb: np.ndarray) -> Path:
    """Write an H x W x 3 uint8 array as PNG (parents created)."""
    path = Path(path)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise DataError(f"{path}: expected an H x W x 3 uint8 array to save, got {rgb.dtype} {rgb.shape}")
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb, mode="RGB").save(path)
    return path


def resize_image(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """H x W x 3 uint8 -> size=(height, width) x 3 uint8, bilinear. Returns the input if already that size."""
    if rgb.shape[:2] == tuple(size):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((size[1], size[0]), Image.BILINEAR))


def resize_mask(indices: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """H x W uint8 class indices -> size=(height, width), nearest neighbour: never mixes classes."""
    if indices.shape == tuple(size):
        return indices
    return np.asarray(Image.fromarray(indices).resize((size[1], size[0]), Image.NEAREST))
