"""Procedural lunar scenes written in the Kaggle Artificial Lunar Landscape layout.

    generate(out, count, seed)          -> out/images/render/renderNNNN.png   (RGB)
                                           out/images/clean/cleanNNNN.png     (exact 4-colour masks)
                                           out/bounding_boxes.csv             (one row per large rock)
                                           out/lunartune_synth.json           (the parameters)
    render_scene(seed, index, size, style) -> Scene(image, mask, boxes)   (pure: no files, no globals)

Scene i depends only on (seed, i) and the parameters, so the output is byte-identical whatever the
number of worker processes. Styles: "realistic" (synth_realistic.py) and "simple" (synth_simple.py).
"""
from __future__ import annotations

import contextlib
import csv
import fcntl
import json
import multiprocessing
import os
import signal
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from data_pipeline import synth_realistic, synth_simple
from data_pipeline.classes import encode_mask
from data_pipeline.errors import DataError

STYLES = {"realistic": synth_realistic.render, "simple": synth_simple.render}
MIN_SIZE = 48  # smallest height or width, px: below it rocks and horizon no longer fit
MAX_SIZE = 8192  # largest: a typo of 100000 asked numpy for 30 GB per scene
MANIFEST = "lunartune_synth.json"
MANIFEST_VERSION = 8  # bump when the generator's output changes for the same parameters
BOX_COLUMNS = ("Frame", "TopLeftCornerX", "TopLeftCornerY", "Length", "Height")
PNG_COMPRESS_LEVEL = 1  # fastest zlib level: encoding, not rendering, would otherwise dominate
CHUNK_SIZE = 8  # scenes handed to a worker at a time


@dataclass(frozen=True)
class Scene:
    image: np.ndarray  # H x W x 3 uint8 RGB
    mask: np.ndarray  # H x W uint8 class indices (0 ground, 1 sky, 2 small rocks, 3 large rocks)
    boxes: tuple[tuple[int, int, int, int], ...]  # per visible large rock: (left, top, width, height), px


def render_scene(seed: int, index: int, size: tuple[int, int] = (480, 720),
                 style: str = "realistic") -> Scene:
    """Scene number `index` (1-based, as in the file names) of the data set with this seed."""
    height, width = check_size(size)
    render = check_style(style)
    rng = np.random.default_rng([check_int("seed", seed, 0), check_int("index", index, 0)])
    image, mask, instances = render(rng, height, width)
    return Scene(image, mask, boxes_of(instances))


def boxes_of(instances: np.ndarray) -> tuple[tuple[int, int, int, int], ...]:
    """Bounding box of every large-rock instance still visible, in painting order."""
    boxes = []
    for found in ndimage.find_objects(instances):
        if found is not None:
            rows, cols = found
            boxes.append((cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start))
    return tuple(boxes)


def _params(count: int, seed: int, size: tuple[int, int], style: str) -> dict:
    check_style(style)
    return {"version": MANIFEST_VERSION, "count": check_int("count", count, 1),
            "seed": check_int("seed", seed, 0), "size": list(check_size(size)), "style": style}


def already_generated(out, count: int, seed: int, size: tuple[int, int] = (480, 720),
                      style: str = "realistic") -> bool:
    """Whether `generate` with these arguments would return `out` as it is (complete, same parameters)."""
    return is_complete(Path(out), _params(count, seed, size, style))


def generate(out, count: int, seed: int, size: tuple[int, int] = (480, 720), style: str = "realistic",
             workers: int = 0, progress: bool = True) -> Path:
    """Write `count` scenes into `out` (Kaggle layout) and return `out` as a Path.

    workers=0 uses every core. A folder that already holds a data set is refused unless it was made
    with identical parameters: then a complete one is returned as is, an interrupted one is redone.
    """
    params = _params(count, seed, size, style)
    workers = check_int("workers", workers, 0) or os.cpu_count() or 1
    out = Path(out)
    if is_complete(out, params):
        return out
    with folder_lock(out):  # another process generating here (two sweeps of one --data synthetic): wait for it
        if is_complete(out, params):
            return out
        prepare_folder(out, params)
        rows = render_all(out, params, min(workers, params["count"]), progress)
        write_boxes(out / "bounding_boxes.csv", rows)
        write_manifest(out, {**params, "complete": True})
    return out


@contextlib.contextmanager
def folder_lock(out: Path):
    """Hold an flock on the folder itself (created if missing; no lock file left behind), waiting for a
    holder with a message. Without it, two processes generating into one folder refused each other's
    half-made folder or removed each other's frames mid-write."""
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as err:
        raise DataError(f"{out}: cannot create the data set folder there ({err.strerror or err})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another process generating scenes into {out}", file=sys.stderr, flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise DataError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise DataError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_size(size) -> tuple[int, int]:
    if not isinstance(size, (tuple, list)) or len(size) != 2:
        raise DataError(f"size must be (height, width), got {size!r}")
    height, width = (check_int("size", v, 1) for v in size)
    if min(height, width) < MIN_SIZE or max(height, width) > MAX_SIZE:
        raise DataError(f"size must be {MIN_SIZE} to {MAX_SIZE} px per side, got {width}x{height} (width x height)")
    return height, width


def check_style(style: str):
    if style not in STYLES:
        raise DataError(f"style must be one of {', '.join(sorted(STYLES))}, got {style!r}")
    return STYLES[style]


def frame_name(index: int, count: int) -> str:
    """Zero-padded frame number: 4 digits as in Kaggle, more when the count needs them."""
    return str(index).zfill(max(4, len(str(count))))


# ---------------------------------------------------------------- the folder and its manifest

def read_manifest(out: Path) -> dict | None:
    try:
        return json.loads((out / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):  # none there, or `out` is a file / under a file
        return None


def write_manifest(out: Path, content: dict) -> None:
    (out / MANIFEST).write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")


def is_complete(out: Path, params: dict) -> bool:
    manifest = read_manifest(out)
    return manifest == {**params, "complete": True} and (out / "bounding_boxes.csv").is_file()


def _described(params: dict) -> str:
    """'6 scenes (180x120, style realistic, seed 0, generator v8)': a manifest's parameters as flags give them."""
    size = params.get("size") or ["?", "?"]
    return (f"{params.get('count', '?')} scenes ({size[1]}x{size[0]}, style {params.get('style', '?')}, seed "
            f"{params.get('seed', '?')}, generator v{params.get('version', '?')})")


def prepare_folder(out: Path, params: dict) -> None:
    """Create the layout; refuse a folder that holds anything but an interrupted run of these params."""
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder")
    if out.exists() and any(out.iterdir()):
        manifest = read_manifest(out)
        if manifest is None:
            raise DataError(f"{out}: folder is not empty and holds no {MANIFEST}; refusing to write "
                            f"generated scenes into it (choose an empty or new folder)")
        previous = {k: v for k, v in manifest.items() if k != "complete"}
        if previous != params:
            differ = [k for k in sorted(set(previous) | set(params)) if previous.get(k) != params.get(k)]
            raise DataError(f"{out}: holds {_described(previous)}, not {_described(params)} (other "
                            f"{', '.join(differ)}); refusing to overwrite it (choose another folder)")
    try:
        for sub in ("images/render", "images/clean"):
            (out / sub).mkdir(parents=True, exist_ok=True)
            for partial in (out / sub).glob(".*.partial"):  # frames an interrupted run was writing
                partial.unlink()
        write_manifest(out, {**params, "complete": False})
    except OSError as err:
        raise DataError(f"{out}: cannot create the data set folder there ({err.strerror or err})") from None


# ---------------------------------------------------------------- rendering and writing

def render_all(out: Path, params: dict, workers: int, progress: bool) -> list[tuple]:
    """Render and write every scene, in a process pool when workers > 1; returns the box rows."""
    job = partial(write_scene, out, params["seed"], tuple(params["size"]), params["style"], params["count"])
    indices = range(1, params["count"] + 1)
    bar = make_progress(params["count"], progress)
    rows = []
    with open_pool(workers) as pool:
        results = pool.imap(job, indices, chunksize=CHUNK_SIZE) if pool else map(job, indices)
        for boxes in results:  # imap keeps the order, so the CSV is sorted by frame
            rows.extend(boxes)
            bar.update(1)
    bar.close()
    return rows


def open_pool(workers: int):
    """A process pool for workers > 1, else an empty context (render in this process)."""
    if workers <= 1:
        return contextlib.nullcontext()
    # workers ignore Ctrl-C: the main process stops them (each printed a KeyboardInterrupt traceback)
    return multiprocessing.get_context("spawn" if os.name == "nt" else "fork").Pool(
        workers, initializer=signal.signal, initargs=(signal.SIGINT, signal.SIG_IGN))


def make_progress(total: int, enabled: bool):
    from tqdm import tqdm  # only the writer needs it, not render_scene
    return tqdm(total=total, desc="generating scenes", unit="scene", disable=not enabled)


def write_scene(out: Path, seed: int, size: tuple[int, int], style: str, count: int, index: int):
    """Render scene `index`, write its PNGs, return its rows for bounding_boxes.csv."""
    scene = render_scene(seed, index, size, style)
    name = frame_name(index, count)
    _save_whole(scene.image, out / "images/render" / f"render{name}.png")
    _save_whole(encode_mask(scene.mask), out / "images/clean" / f"clean{name}.png")
    # Kaggle's boxes use pixel-edge coordinates of 1-based pixels: the left edge of column 0 is 0.5
    return [(index, left + 0.5, top + 0.5, width, height) for left, top, width, height in scene.boxes]


def _save_whole(rgb: np.ndarray, path: Path) -> None:
    """A PNG under a hidden temporary name, then renamed: an interrupted run never leaves a truncated frame."""
    partial = path.with_name(f".{path.name}.partial")
    Image.fromarray(rgb, "RGB").save(partial, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    os.replace(partial, path)


def write_boxes(path: Path, rows: list[tuple]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(BOX_COLUMNS)
        writer.writerows(rows)
