"""bench/rock_recall.py: each real rock's contrast with the ground around it, and recall per contrast band."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
GROUND, SKY, SMALL, LARGE = 0, 1, 2, 3


@pytest.fixture(scope="module")
def rock_recall():
    spec = importlib.util.spec_from_file_location("rock_recall", REPO / "bench" / "rock_recall.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def scene():
    """Grey ground (100) under a black sky; a bright (130), a similar (105) and a dark (50) 10x10 rock."""
    image = np.full((80, 120, 3), 100, np.uint8)
    mask = np.zeros((80, 120), np.uint8)
    image[:10], mask[:10] = 0, SKY
    for col, value, label in ((10, 130, SMALL), (50, 105, LARGE), (90, 50, SMALL)):
        image[40:50, col:col + 10], mask[40:50, col:col + 10] = value, label
    mask[70:72, 0:2] = SMALL  # 4 px of mask debris: not a rock
    return SimpleNamespace(image=image, mask=mask)


def test_each_rock_gets_its_contrast_with_the_ground_around_it(rock_recall):
    sample = scene()
    contrasts = sorted(round(c, 2) for _, _, c in rock_recall.rock_components(sample.image, sample.mask))
    assert contrasts == [-0.5, 0.05, 0.3]


def test_recall_per_band_counts_pixels_predicted_as_either_rock_class(rock_recall):
    sample = scene()
    prediction = np.zeros_like(sample.mask)
    prediction[40:45, 10:20] = LARGE  # half the bright rock, as the other rock class: still found
    prediction[40:50, 50:60] = SMALL  # all of the similar one
    prediction[60:65, 100:110] = SMALL  # 50 px of rock on bare ground
    table = rock_recall.recall_by_contrast([sample], [prediction])
    assert table["brighter"] == {"rocks": 1, "pixel_share": pytest.approx(1 / 3), "recall": 0.5}
    assert table["similar"]["recall"] == 1.0 and table["darker"]["recall"] == 0.0
    assert table["false_rock_share"] == pytest.approx(50 / 200)


def test_a_rock_with_no_ground_around_it_is_left_out(rock_recall):
    image = np.zeros((40, 40, 3), np.uint8)
    mask = np.full((40, 40), SKY, np.uint8)
    mask[10:20, 10:20] = LARGE  # a rock in the sky (a mask's boundary debris): no ring of ground
    table = rock_recall.recall_by_contrast([SimpleNamespace(image=image, mask=mask)], [mask])
    assert all(table[band]["rocks"] == 0 for band in ("darker", "similar", "brighter"))
    assert math.isnan(table["similar"]["recall"])


def test_the_table_header_has_no_trailing_space_for_one_model(rock_recall):
    sample = scene()
    table = rock_recall.format_table({"": rock_recall.recall_by_contrast([sample], [sample.mask])})
    assert table.splitlines()[0].endswith(" recall")
    side_by_side = rock_recall.format_table({"a": rock_recall.recall_by_contrast([sample], [sample.mask])})
    assert side_by_side.splitlines()[0].endswith(" recall a")


def refused(rock_recall, argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        rock_recall.main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    return err.strip().splitlines()[-1]


def test_a_json_path_under_a_file_is_refused_before_the_model_is_loaded(rock_recall, tmp_path, capsys):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    # --model names nothing: had the model been loaded first, the error would be about it
    line = refused(rock_recall, ["--model", str(tmp_path / "absent.pt"), "--json", str(a_file / "r.json")], capsys)
    assert line.endswith(f"--json {a_file / 'r.json'}: {a_file} is a file, not a folder")
    assert refused(rock_recall, ["--model", str(tmp_path / "absent.pt"), "--json", str(tmp_path)],
                   capsys).endswith("is a folder; expected a file path")
    assert [p.name for p in tmp_path.iterdir()] == ["a-file"]


def test_a_device_the_machine_lacks_is_one_line(rock_recall, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    line = refused(rock_recall, ["--model", str(tmp_path / "absent.pt"), "--device", "cuda"], capsys)
    assert "--device: " in line and "no CUDA device" in line
