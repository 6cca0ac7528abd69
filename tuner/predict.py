"""`lunartune predict --model SPEC IMAGE_OR_DIR... --out DIR`: a colour mask and an overlay per image.

For each image `<stem>.png` (any size, RGB or RGBA: alpha is dropped) it writes, at the image's own size,

    <stem>_mask.png      the predicted classes in the data set's colour code (ground black, sky red,
                         small rocks green, large rocks blue)
    <stem>_overlay.png   the image with sky and rocks tinted in their class colour (ground left as is:
                         blending black over it would only darken the photo)

The image is resized to the model's input size (from its checkpoint) and the logits back to the image's
size before the argmax, so masks are never resized as colours. Folders contribute their .png/.jpg files
(not recursive); a `g_<name>` file beside `<name>` is that photo's ground-truth mask and is skipped.
Everything is written to a staging folder first: a bad input leaves --out as it was.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Iterator

from tuner.cli import CliError
from tuner.settings import RunPaths

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MASK_SUFFIX, OVERLAY_SUFFIX = "_mask.png", "_overlay.png"
OVERLAY_ALPHA = 0.45  # weight of the class colour over the image where a class other than ground is predicted
BATCH = 4  # images loaded and predicted at once


@contextlib.contextmanager
def staged_output(out: Path) -> Iterator[Path]:
    """Yield an empty staging folder beside `out`; on success its files land in `out`, on error nothing does.

    A missing `out` is created by one rename; into an existing `out` each finished file is moved with
    os.replace (atomic per file), so a failed run never leaves a partial file there.
    """
    out = check_out_folder(out)
    made = [p for p in reversed(out.parents) if not p.exists()]  # folders above `out` this run creates
    landed = False
    try:
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
        except OSError as err:
            raise CliError(f"--out {out}: cannot create it ({err.strerror or err})") from None
        staging.chmod(0o777 & ~_umask())  # mkdtemp's 0700 would become `out`'s: others could not read it
        try:
            yield staging
            if not out.exists():
                os.replace(staging, out)
            else:
                for item in sorted(staging.rglob("*")):
                    if item.is_file():
                        target = out / item.relative_to(staging)
                        target.parent.mkdir(parents=True, exist_ok=True)
                        os.replace(item, target)
            landed = True
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    finally:
        if not landed:  # a failed run leaves no trace, not even the empty folders it made on the way to `out`
            for folder in reversed(made):
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only if still empty


def check_out_folder(out) -> Path:
    """--out as an absolute path, refused before any work if no folder can be made there: it is a file, or
    the nearest existing folder above it is a file or not writable."""
    out = Path(out).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {out}: exists and is not a folder")
    above = next((p for p in out.parents if p.exists()), None)
    if above is not None and not above.is_dir():
        raise CliError(f"--out {out}: {above} is a file, not a folder")
    if above is not None and not out.exists() and not os.access(above, os.W_OK):
        raise CliError(f"--out {out}: cannot create a folder in {above}")
    return out


def check_outputs_spare_inputs(images: list[Path], out) -> None:
    """Refuse an --out where an output would replace one of the input images (--out = an input folder
    holding a.png and a_mask.png, say, or the outputs of an earlier run)."""
    out, inputs = Path(out).expanduser().resolve(), {p.resolve() for p in images}
    for image in images:
        for target in (out / f"{image.stem}{MASK_SUFFIX}", out / f"{image.stem}{OVERLAY_SUFFIX}"):
            if target in inputs:
                raise CliError(f"--out {out}: the outputs of {image.name} would replace the input image "
                               f"{target.name}; choose another --out")


def _umask() -> int:
    mask = os.umask(0o022)  # read it the only way there is: set, then restore
    os.umask(mask)
    return mask


def collect_images(inputs: list[str]) -> list[Path]:
    """Image files named directly or found in the named folders; CliError for a missing input,
    an empty folder, or two images that would write the same output names."""
    found = []
    for text in inputs:
        path = Path(text).expanduser()
        if path.is_dir():
            images = _images_in(path)
            if not images:
                raise CliError(f"{path}: folder holds no images (expected {', '.join(IMAGE_SUFFIXES)} files)")
            found += images
        elif path.is_file():
            found.append(path)
        else:
            raise CliError(f"{path}: no such image file or folder")
    return _unique(found)


def _images_in(folder: Path) -> list[Path]:
    from data_pipeline.kaggle import REAL_MASK_PREFIX  # g_PCAM1.png is the mask of PCAM1.png: not an input

    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    names = {p.name for p in files}
    return [p for p in files if not (p.name.startswith(REAL_MASK_PREFIX) and p.name[len(REAL_MASK_PREFIX):] in names)]


def _unique(paths: list[Path]) -> list[Path]:
    """The same file named twice counts once; two files with one stem would overwrite each other's outputs."""
    seen: dict[str, Path] = {}
    for path in (p.resolve() for p in paths):
        if seen.setdefault(path.stem, path) != path:
            raise CliError(f"{path} and {seen[path.stem]} would both write {path.stem}{MASK_SUFFIX}; "
                           f"predict them into different --out folders")
    return list(seen.values())


def overlay(image, classes):
    """H x W x 3 uint8 image with non-ground classes blended in their colour (OVERLAY_ALPHA)."""
    import numpy as np

    from data_pipeline import encode_mask

    colours = encode_mask(classes).astype(np.float32)
    tinted = (1 - OVERLAY_ALPHA) * image.astype(np.float32) + OVERLAY_ALPHA * colours
    return np.where((classes > 0)[..., None], tinted, image).round().astype(np.uint8)


def predict_files(model, info, images: list[Path], out: Path, device) -> list[dict]:
    """Write mask + overlay for each image into `out`; one summary dict per image (name, size, class shares)."""
    import numpy as np

    from data_pipeline import CLASS_NAMES, encode_mask, load_rgb, save_rgb
    from models.inference import predict_masks

    norm, summary = info["normalization"], []
    for start in range(0, len(images), BATCH):
        paths = images[start:start + BATCH]
        pixels = [load_rgb(p) for p in paths]  # DataError naming the file for anything not an image
        masks = predict_masks(model, pixels, tuple(info["image_size"]), norm["mean"], norm["std"], device, BATCH)
        for path, image, mask in zip(paths, pixels, masks):
            save_rgb(out / f"{path.stem}{MASK_SUFFIX}", encode_mask(mask))
            save_rgb(out / f"{path.stem}{OVERLAY_SUFFIX}", overlay(image, mask))
            shares = np.bincount(mask.ravel(), minlength=len(CLASS_NAMES)) / mask.size
            summary.append({"image": str(path), "size": [int(mask.shape[0]), int(mask.shape[1])],
                            **{name: round(float(s), 4) for name, s in zip(CLASS_NAMES, shares)}})
    return summary


def device_from_flag(spec: str):
    """The torch device of a --device flag; a bad or absent one is a CliError naming the flag."""
    from models import ConfigError
    from models.training import resolve_device

    try:
        return resolve_device(spec)
    except ConfigError as err:
        raise CliError(f"--device={spec!r}: {str(err).partition(': ')[2]}") from None


def main(args, paths: RunPaths) -> int:
    from data_pipeline import DataError
    from tuner.model_spec import load_model

    device = device_from_flag(getattr(args, "device", "auto"))
    images = collect_images(args.inputs)
    check_out_folder(args.out)
    check_outputs_spare_inputs(images, args.out)
    model, info, resolved = load_model(args.model, paths)
    model.to(device)
    try:
        with staged_output(Path(args.out)) as staging:
            summary = predict_files(model, info, images, staging, device)
    except DataError as err:
        raise CliError(f"{err} (nothing was written to {args.out})") from None
    for row in summary:
        shares = "  ".join(f"{k} {row[k]:.1%}" for k in row if k not in ("image", "size"))
        print(f"{Path(row['image']).name}: {row['size'][1]}x{row['size'][0]}  {shares}")
    plural = "s" if len(summary) != 1 else ""
    print(f"wrote {len(summary)} mask{plural} and overlay{plural} to {Path(args.out).resolve()} (model {resolved.description})",
          file=sys.stderr)
    return 0
