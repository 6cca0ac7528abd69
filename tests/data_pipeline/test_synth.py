"""The procedural scene generator: layout, exact masks, determinism, balance, boxes, argument errors."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_pipeline.classes import PALETTE, decode_mask
from data_pipeline.synth import MANIFEST, frame_name, generate, render_scene

SIZE = (96, 144)  # (height, width): small, so every test stays fast on two shared cores
KAGGLE_BOXES = Path(__file__).resolve().parents[3] / "shared/data/kaggle-samples/bounding_boxes.csv"
STYLES = ("realistic", "simple")


def make(out: Path, count: int = 3, seed: int = 0, style: str = "realistic", workers: int = 1) -> Path:
    return generate(out, count, seed, size=SIZE, style=style, workers=workers, progress=False)


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def read_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.mode == "RGB", f"{path} is {image.mode}, expected RGB"
        return np.asarray(image)


def read_boxes(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make(tmp_path_factory.mktemp("synth") / "set", count=4, seed=11)


def test_writes_the_kaggle_layout(dataset: Path):
    names = lambda sub: sorted(p.name for p in (dataset / "images" / sub).iterdir())
    assert names("render") == [f"render{i:04d}.png" for i in range(1, 5)]
    assert names("clean") == [f"clean{i:04d}.png" for i in range(1, 5)]
    assert (dataset / "bounding_boxes.csv").is_file()
    assert json.loads((dataset / MANIFEST).read_text())["complete"] is True
    image = read_rgb(dataset / "images/render/render0001.png")
    assert image.shape == (*SIZE, 3) and image.dtype == np.uint8


def test_frame_names_widen_beyond_9999():
    assert frame_name(7, 9999) == "0007"
    assert frame_name(7, 10000) == "00007"


def test_boxes_csv_header_matches_kaggle(dataset: Path):
    header = (dataset / "bounding_boxes.csv").read_text().splitlines()[0]
    assert header == "Frame,TopLeftCornerX,TopLeftCornerY,Length,Height"
    if not KAGGLE_BOXES.is_file():
        pytest.skip(f"{KAGGLE_BOXES} is absent (../shared is not beside this clone)")
    assert header == KAGGLE_BOXES.read_text().splitlines()[0]


@pytest.mark.parametrize("style", STYLES)
def test_masks_hold_only_the_four_palette_colours(tmp_path: Path, style: str):
    out = make(tmp_path / style, count=3, style=style)
    paths = sorted((out / "images/clean").iterdir())
    assert len(paths) == 3
    for path in paths:
        colours = np.unique(read_rgb(path).reshape(-1, 3), axis=0)
        assert all((PALETTE == c).all(axis=1).any() for c in colours), f"{path.name}: {colours}"


def test_files_are_the_pure_render_of_seed_and_index(dataset: Path):
    scene = render_scene(11, 3, SIZE)
    assert np.array_equal(read_rgb(dataset / "images/render/render0003.png"), scene.image)
    assert np.array_equal(decode_mask(read_rgb(dataset / "images/clean/clean0003.png"), "clean"),
                          scene.mask)


def test_render_scene_is_pure_and_seeded():
    first, again = render_scene(5, 2, SIZE), render_scene(5, 2, SIZE)
    assert np.array_equal(first.image, again.image) and np.array_equal(first.mask, again.mask)
    assert first.boxes == again.boxes
    assert not np.array_equal(first.image, render_scene(6, 2, SIZE).image)  # another seed
    assert not np.array_equal(first.image, render_scene(5, 3, SIZE).image)  # another index
    assert first.mask.dtype == np.uint8 and first.mask.shape == SIZE and first.mask.max() <= 3


def test_same_seed_same_bytes_whatever_the_worker_count(tmp_path: Path):
    serial = tree_bytes(make(tmp_path / "serial", count=5, seed=3, workers=1))
    parallel = tree_bytes(make(tmp_path / "parallel", count=5, seed=3, workers=2))
    assert serial == parallel
    other_seed = tree_bytes(make(tmp_path / "other", count=5, seed=4, workers=1))
    assert other_seed["images/render/render0001.png"] != serial["images/render/render0001.png"]


def class_shares(style: str, scenes: int = 30) -> np.ndarray:
    counts = sum(np.bincount(render_scene(1, i, SIZE, style).mask.ravel(), minlength=4)
                 for i in range(1, scenes + 1))
    return counts / counts.sum()


@pytest.mark.parametrize("style", STYLES)
def test_class_balance_is_close_to_the_real_set(style: str):
    """Real masks: sky 19 %, small rocks 2.8 %, large 2.3 %. Rocks may be up to ~4x as common (more rock
    pixels for a short training run to learn from), never a rarity nor the majority."""
    ground, sky, small, large = class_shares(style)
    assert 0.08 <= sky <= 0.35, f"sky {sky:.3f}"
    assert 0.005 <= small <= 0.11, f"small rocks {small:.3f}"
    assert 0.005 <= large <= 0.09, f"large rocks {large:.3f}"
    assert ground > 0.5, f"ground {ground:.3f}"


def test_rocks_are_not_separable_by_brightness_alone():
    """A single grey-level threshold must not tell rock pixels from ground pixels well."""
    ground, rocks = [], []
    for i in range(1, 11):
        scene = render_scene(2, i, SIZE)
        grey = scene.image.mean(axis=-1)
        ground.append(grey[scene.mask == 0])
        rocks.append(grey[scene.mask >= 2])
    ground, rocks = np.concatenate(ground), np.concatenate(rocks)
    thresholds = np.arange(256)[:, None]
    below_g = (ground[None, :] < thresholds).mean(axis=1)
    below_r = (rocks[None, :] < thresholds).mean(axis=1)
    balanced = 0.5 * (below_g + 1 - below_r)  # "brighter than t is rock"
    best = np.maximum(balanced, 1 - balanced).max()
    assert best < 0.85, f"a brightness threshold separates rocks from ground with {best:.2f}"


def test_boxes_csv_matches_large_rock_regions(tmp_path: Path):
    out = make(tmp_path / "boxes", count=12, seed=21)
    rows = read_boxes(out / "bounding_boxes.csv")
    assert rows, "12 scenes without a single large rock: the check below would test nothing"
    for index in range(1, 13):
        mask = decode_mask(read_rgb(out / f"images/clean/clean{index:04d}.png"), "clean")
        large = mask == 3
        covered = np.zeros_like(large)
        for row in (r for r in rows if int(r["Frame"]) == index):
            left, top = float(row["TopLeftCornerX"]) - 0.5, float(row["TopLeftCornerY"]) - 0.5
            assert left.is_integer() and top.is_integer(), row  # Kaggle's half-pixel convention
            cols = slice(int(left), int(left) + int(row["Length"]))
            rows_ = slice(int(top), int(top) + int(row["Height"]))
            region = large[rows_, cols]
            # a tight box: large-rock pixels touch each of its four edges
            assert region[0].any() and region[-1].any() and region[:, 0].any() and region[:, -1].any(), row
            covered[rows_, cols] = True
        assert not (large & ~covered).any(), f"frame {index}: large-rock pixels outside every box"


def test_frame_column_is_an_unpadded_integer_sorted(tmp_path: Path):
    rows = read_boxes(make(tmp_path / "frames", count=8, seed=21) / "bounding_boxes.csv")
    frames = [r["Frame"] for r in rows]
    assert frames  # 8 scenes have rocks
    assert all(f.isdigit() and not f.startswith("0") for f in frames)
    assert [int(f) for f in frames] == sorted(int(f) for f in frames)


@pytest.mark.parametrize("kwargs, argument", [
    ({"count": 0}, "count"),
    ({"count": -3}, "count"),
    ({"count": 2.5}, "count"),
    ({"seed": -1}, "seed"),
    ({"size": (20, 144)}, "size"),
    ({"size": (96,)}, "size"),
    ({"style": "fancy"}, "style"),
    ({"workers": -1}, "workers"),
])
def test_bad_arguments_raise_a_value_error_naming_them(tmp_path: Path, kwargs: dict, argument: str):
    args = {"out": tmp_path / "bad", "count": 2, "seed": 0, "size": SIZE, "progress": False, **kwargs}
    with pytest.raises(ValueError, match=argument):
        generate(**args)
    assert not (tmp_path / "bad").exists(), "a rejected call must not leave a half-made folder"


def test_render_scene_rejects_an_unknown_style():
    with pytest.raises(ValueError, match="style"):
        render_scene(0, 1, SIZE, "fancy")


def test_refuses_a_folder_with_other_parameters(tmp_path: Path):
    out = make(tmp_path / "set", count=2, seed=1)
    with pytest.raises(ValueError, match=r"seed 1, .*seed 2, .*\(other seed\); refusing to overwrite"):
        make(out, count=2, seed=2)
    with pytest.raises(ValueError, match=r"\(other style\); refusing to overwrite"):
        make(out, count=2, seed=1, style="simple")


def test_refuses_a_non_empty_folder_without_manifest(tmp_path: Path):
    (tmp_path / "notes.txt").write_text("someone else's data")
    with pytest.raises(ValueError, match="not empty"):
        make(tmp_path, count=2)


def test_identical_complete_set_is_returned_without_redoing(tmp_path: Path):
    out = make(tmp_path / "set", count=2, seed=1)
    first = out / "images/render/render0001.png"
    first.write_bytes(b"marker")  # would be overwritten if the scenes were rendered again
    assert make(out, count=2, seed=1) == out
    assert first.read_bytes() == b"marker"


def test_an_interrupted_set_with_identical_parameters_is_redone(tmp_path: Path):
    out = make(tmp_path / "set", count=2, seed=1)
    reference = tree_bytes(out)
    manifest = json.loads((out / MANIFEST).read_text())
    (out / MANIFEST).write_text(json.dumps({**manifest, "complete": False}))
    (out / "images/render/render0002.png").unlink()
    make(out, count=2, seed=1)
    assert tree_bytes(out) == reference


def test_two_processes_generating_into_one_folder_both_get_the_whole_set(tmp_path: Path):
    """Two sweeps of one `--data synthetic` started together: the second used to refuse the first's half-made
    folder ("holds no lunartune_synth.json") or crash removing its frames mid-write (FileNotFoundError).
    A third process holds the folder's lock while both start, so they overlap for sure: one waits for the
    other. (Not this process: forked children would inherit its locked file description.)"""
    import multiprocessing

    out = tmp_path / "shared"
    context = multiprocessing.get_context("fork")
    locked, release = context.Event(), context.Event()
    holder = context.Process(target=_hold_folder_lock, args=(out, locked, release))
    holder.start()
    assert locked.wait(60)
    runs = [context.Process(target=make, args=(out,), kwargs=dict(count=3, seed=2)) for _ in range(2)]
    for run in runs:
        run.start()
    runs[0].join(1.0)  # both are waiting on the lock now
    assert runs[0].exitcode is None and not any(out.iterdir())
    release.set()
    for run in [holder, *runs]:
        run.join(120)
    assert [run.exitcode for run in runs] == [0, 0]
    assert tree_bytes(out) == tree_bytes(make(tmp_path / "alone", count=3, seed=2))


def _hold_folder_lock(out: Path, locked, release) -> None:
    from data_pipeline.synth import folder_lock

    with folder_lock(out):
        locked.set()
        release.wait(60)
