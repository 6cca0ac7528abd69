"""Draw docs/img/synth-vs-real.jpg: generated scenes with their masks beside real renders and a real photo.

    python bench/synth_vs_real_figure.py [--data ../shared/data/kaggle-eval-small] [--out docs/img/synth-vs-real.jpg]

Left two columns: realistic scenes 1-4 of seed 0 at 720x480 (the current MANIFEST_VERSION) and their masks;
right two: the three real renders with the most rock pixels and the real photo with the most, with theirs.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import data_pipeline as dp  # noqa: E402
from benchargs import output_file  # noqa: E402  (bench/benchargs.py)
from data_pipeline.synth import MANIFEST_VERSION, render_scene  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ROWS, TILE = 4, (160, 240)  # tile height, width: the data set's 2:3 aspect
GAP = 4


def rockiest(samples, count: int):
    return sorted(samples, key=lambda s: -int((s.mask >= 2).sum()) / s.mask.size)[:count]


def tiles(image: np.ndarray, mask: np.ndarray) -> list[np.ndarray]:
    return [dp.resize_image(image, TILE), dp.encode_mask(dp.resize_mask(mask, TILE))]


def figure(data: Path) -> Image.Image:
    generated = [render_scene(0, i, (480, 720)) for i in range(1, ROWS + 1)]
    real = rockiest(dp.load_eval_set(data, "render"), ROWS - 1) + rockiest(dp.load_eval_set(data, "real"), 1)
    height, width = TILE
    canvas = np.full((ROWS * (height + GAP) - GAP, 4 * (width + GAP) + GAP, 3), 255, np.uint8)
    for row, (ours, theirs) in enumerate(zip(generated, real)):
        for col, tile in enumerate(tiles(ours.image, ours.mask) + tiles(theirs.image, theirs.mask)):
            top, left = row * (height + GAP), col * (width + GAP) + (GAP if col >= 2 else 0)
            canvas[top:top + height, left:left + width] = tile
    return Image.fromarray(canvas)


def image_suffixes() -> set[str]:
    """File extensions Pillow can save to (it picks the format by the extension)."""
    return {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.SAVE}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/kaggle-eval-small")
    parser.add_argument("--out", type=Path, default=REPO / "docs/img/synth-vs-real.jpg")
    args = parser.parse_args(argv)
    output_file(parser, "--out", args.out)  # checked before drawing: else it fails only at the end
    if args.out.suffix.lower() not in image_suffixes():
        parser.error(f"--out {args.out}: unknown image file extension {args.out.suffix!r}; expected one Pillow "
                     "writes, such as .jpg or .png")
    try:
        picture = figure(args.data)
    except dp.DataError as err:
        print(f"synth_vs_real_figure: {err}", file=sys.stderr)
        return 2
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    picture.save(args.out, quality=88)
    print(f"{args.out}: generated scenes (MANIFEST_VERSION {MANIFEST_VERSION}) beside real renders and a photo")
    return 0


if __name__ == "__main__":
    sys.exit(main())
