"""`lunartune predict`: colour masks and overlays at each image's own size, real photos included."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.tuner.test_model_spec import make_checkpoint
from tuner.cli import main

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
REAL_PHOTOS = SHARED / "kaggle-samples" / "real_moon_images"
PALETTE = {(0, 0, 0), (255, 0, 0), (0, 255, 0), (0, 0, 255)}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "best.pt", image_size=(64, 96))


def predict(checkpoint, tmp_path, *inputs, out="out"):
    return main(["--run-dir", str(tmp_path / "run"), "predict", "--model", str(checkpoint), *map(str, inputs),
                 "--out", str(tmp_path / out)])


def write_png(path, shape, mode="RGB", seed=0):
    pixels = np.random.default_rng(seed).integers(0, 255, (*shape, len(mode)), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode=mode).save(path)
    return path


@pytest.mark.skipif(not REAL_PHOTOS.is_dir(), reason=f"{REAL_PHOTOS} absent (the shared data sits beside the repo)")
def test_real_photos_get_masks_and_overlays_at_their_own_size(checkpoint, tmp_path):
    modes = {}
    for p in sorted(REAL_PHOTOS.glob("*.png")):
        with Image.open(p) as image:  # the header only; closed, not left to the garbage collector
            modes[p] = image.mode
    rgba = [p for p, m in modes.items() if m == "RGBA"][:2]  # the point: 777 x 571 RGBA photos are handled
    photos = [p for p, m in modes.items() if m == "RGB"][:1] + rgba
    assert len(photos) == 3
    assert predict(checkpoint, tmp_path, *photos) == 0
    for photo in photos:
        image = np.asarray(Image.open(photo).convert("RGB"))
        mask = np.asarray(Image.open(tmp_path / "out" / f"{photo.stem}_mask.png"))
        over = np.asarray(Image.open(tmp_path / "out" / f"{photo.stem}_overlay.png"))
        assert mask.shape == over.shape == image.shape == (571, 777, 3)
        assert {tuple(c) for c in np.unique(mask.reshape(-1, 3), axis=0).tolist()} <= PALETTE
        # ground pixels are left as the photo; every other class is tinted
        ground = np.all(mask == 0, axis=-1)
        assert 0 < ground.sum() < ground.size
        assert np.array_equal(over[ground], image[ground])
        assert not np.array_equal(over[~ground], image[~ground])
    assert len(list((tmp_path / "out").iterdir())) == 2 * len(photos)


def test_truth_masks_beside_their_photos_are_skipped(checkpoint, tmp_path):
    folder = tmp_path / "real_moon_images"
    write_png(folder / "PCAM1.png", (40, 50), "RGBA")
    write_png(folder / "g_PCAM1.png", (40, 50))
    write_png(folder / "g_lonely.png", (30, 30))  # no photo called lonely.png: an image like any other
    assert predict(checkpoint, tmp_path, folder) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "PCAM1_mask.png", "PCAM1_overlay.png", "g_lonely_mask.png", "g_lonely_overlay.png"]


def test_a_file_that_is_not_an_image_fails_and_writes_nothing(checkpoint, tmp_path, capsys):
    good = write_png(tmp_path / "in" / "a.png", (32, 48))
    bad = tmp_path / "in" / "b.png"
    bad.write_text("not an image")
    assert predict(checkpoint, tmp_path, good, bad) == 1
    assert f"{bad}: cannot decode image" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []  # no staging left behind
    assert predict(checkpoint, tmp_path, good, bad, out="n1/n2/out") == 1
    assert not (tmp_path / "n1").exists()  # nor the folders made on the way to --out
    (tmp_path / "n3").mkdir()
    assert predict(checkpoint, tmp_path, good, out="n3/n4/out") == 0 and (tmp_path / "n3/n4/out/a_mask.png").is_file()


def test_an_existing_out_keeps_its_files_when_a_later_run_fails(checkpoint, tmp_path):
    good = write_png(tmp_path / "in" / "a.png", (32, 48))
    assert predict(checkpoint, tmp_path, good) == 0
    before = (tmp_path / "out" / "a_mask.png").read_bytes()
    truncated = tmp_path / "in2" / "a.png"
    truncated.parent.mkdir()
    truncated.write_bytes(good.read_bytes()[:60])
    assert predict(checkpoint, tmp_path, truncated) == 1
    assert (tmp_path / "out" / "a_mask.png").read_bytes() == before


def test_an_out_that_would_replace_an_input_image_is_refused(checkpoint, tmp_path, capsys):
    """--out = the input folder, which holds a.png and the user's own a_mask.png: that file was replaced."""
    folder = tmp_path / "photos"
    write_png(folder / "a.png", (32, 48))
    theirs = write_png(folder / "a_mask.png", (32, 48), seed=1).read_bytes()
    assert predict(checkpoint, tmp_path, folder, out="photos") == 1
    assert "the outputs of a.png would replace the input image a_mask.png" in capsys.readouterr().err
    assert (folder / "a_mask.png").read_bytes() == theirs and sorted(p.name for p in folder.iterdir()) == ["a.png", "a_mask.png"]
    (tmp_path / "a-file").write_text("x")  # and an --out under a file: one line (was FileExistsError's traceback)
    assert predict(checkpoint, tmp_path, folder / "a.png", out="a-file/sub") == 1
    assert f"{tmp_path / 'a-file'} is a file, not a folder" in capsys.readouterr().err


@pytest.mark.parametrize("case, expected", [
    ("missing", "no such image file or folder"),
    ("empty", "folder holds no images"),
    ("clash", "would both write a_mask.png"),
])
def test_bad_inputs_are_clear_errors(checkpoint, tmp_path, capsys, case, expected):
    one = write_png(tmp_path / "x" / "a.png", (32, 32))
    inputs = {"missing": [tmp_path / "nope.png"], "empty": [(tmp_path / "e").resolve()],
              "clash": [one, write_png(tmp_path / "y" / "a.png", (32, 32))]}[case]
    (tmp_path / "e").mkdir()
    assert predict(checkpoint, tmp_path, *inputs) == 1
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_an_unknown_model_is_a_clear_error(tmp_path, capsys):
    image = write_png(tmp_path / "a.png", (32, 32))
    assert predict(tmp_path / "missing.pt", tmp_path, image) == 1
    assert "missing.pt: no such checkpoint file" in capsys.readouterr().err
