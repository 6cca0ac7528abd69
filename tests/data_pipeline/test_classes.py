import csv
import subprocess
import sys

import numpy as np
import pytest

from data_pipeline import (CLASS_NAMES, GROUND_THRESHOLD, PALETTE, ROCK_CLASS_IDS, DataError, class_table,
                           decode_mask, encode_mask, load_rgb)


def test_clean0015_matches_published_pixel_counts(shared_data):
    samples = shared_data / "kaggle-samples"
    with open(samples / "clean_pixel_counts.csv", newline="") as f:
        row = next(r for r in csv.DictReader(f) if r["image"] == "clean0015.png")
    counts = np.bincount(decode_mask(load_rgb(samples / "images/clean/clean0015.png"), "clean").ravel(), minlength=4)
    # the CSV's colour columns in class order: black ground, red sky, green small rocks, blue large rocks
    expected = [int(row[c]) for c in ("blacks", "reds", "greens", "blues")]
    assert counts.tolist() == expected


def test_ground0001_decodes_to_plausible_classes(shared_data):
    mask = decode_mask(load_rgb(shared_data / "kaggle-samples/images/ground/ground0001.png"), "ground")
    h = mask.shape[0]
    top, bottom = mask[: h // 10], mask[-h // 3:]
    assert (top == 1).mean() > 0.9  # sky fills the top of the frame
    assert (bottom == 1).mean() < 0.01  # and is absent from the bottom third
    share = np.bincount(mask.ravel(), minlength=4) / mask.size
    assert share[0] > 0.5 and share[2] > 0.005 and share[3] > 0.002  # mostly ground, rocks present


def test_ground_rule_thresholds_then_takes_the_strongest_channel():
    pixels = np.array([[[3, 0, 0], [226, 0, 0], [0, GROUND_THRESHOLD, 0], [0, 30, 60],
                        [0, GROUND_THRESHOLD - 1, 5], [90, 90, 0]]], dtype=np.uint8)
    assert decode_mask(pixels, "ground").tolist() == [[0, 1, 2, 3, 0, 1]]


def test_clean_rejects_unknown_colours_naming_count_and_colours():
    rgb = PALETTE[np.zeros((4, 4), dtype=np.uint8)].copy()
    rgb[0, :3] = (128, 0, 0)
    rgb[1, 0] = (0, 0, 7)
    with pytest.raises(DataError) as err:
        decode_mask(rgb, "clean", name="clean0042.png")
    message = str(err.value)
    assert "clean0042.png" in message and "4 pixels" in message
    assert "(128, 0, 0) x3" in message and "(0, 0, 7) x1" in message


def test_real_masks_take_the_nearest_palette_colour():
    antialiased = np.array([[[200, 30, 30], [20, 20, 180], [10, 10, 120], [30, 230, 40], [255, 255, 255]]],
                           dtype=np.uint8)
    assert decode_mask(antialiased, "real").tolist() == [[1, 3, 0, 2, 1]]  # white: a tie, lowest coloured index


def test_encode_then_decode_round_trips():
    indices = np.random.default_rng(0).integers(0, 4, size=(5, 7)).astype(np.uint8)
    rgb = encode_mask(indices)
    assert rgb.shape == (5, 7, 3) and rgb.dtype == np.uint8
    assert np.array_equal(decode_mask(rgb, "clean"), indices)


@pytest.mark.parametrize("bad", [np.array([[4]]), np.array([[-1]]), np.zeros((2, 2, 3), dtype=np.uint8)])
def test_encode_rejects_out_of_range_or_wrong_shape(bad):
    with pytest.raises(DataError, match="encode_mask"):
        encode_mask(bad)


def test_decode_rejects_unknown_source_and_wrong_arrays():
    with pytest.raises(DataError, match="unknown mask source 'blue'"):
        decode_mask(np.zeros((2, 2, 3), dtype=np.uint8), "blue")
    with pytest.raises(DataError, match="H x W x 3 uint8"):
        decode_mask(np.zeros((2, 2, 3), dtype=np.float32), "clean")
    with pytest.raises(DataError, match="H x W x 3 uint8"):
        decode_mask(np.zeros((2, 2), dtype=np.uint8), "real")


def test_class_table_agrees_with_names_and_palette():
    table = class_table()
    assert [row["name"] for row in table] == list(CLASS_NAMES)
    assert [row["color"] for row in table] == [tuple(c) for c in PALETTE.tolist()]
    assert ROCK_CLASS_IDS == (CLASS_NAMES.index("small_rocks"), CLASS_NAMES.index("large_rocks"))
    with pytest.raises(ValueError):
        PALETTE[0, 0] = 1  # the shared palette is read-only


def test_importing_the_package_does_not_import_torch():
    code = "import sys, data_pipeline; data_pipeline.decode_mask; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
