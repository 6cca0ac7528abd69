"""bench/synth_vs_real_figure.py draws the README's figure from the generator and the shared real data."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
SMALL = REPO.parent / "shared" / "data" / "kaggle-eval-small"


@pytest.mark.skipif(not SMALL.is_dir(), reason=f"the real data is not here ({SMALL}; ../shared absent)")
def test_figure_holds_generated_and_real_pairs(tmp_path):
    out = tmp_path / "figure.jpg"
    done = subprocess.run([sys.executable, str(REPO / "bench" / "synth_vs_real_figure.py"), "--data", str(SMALL),
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "MANIFEST_VERSION" in done.stdout
    figure = np.asarray(Image.open(out).convert("RGB")).astype(int)
    assert figure.shape == (4 * 164 - 4, 4 * 244 + 4, 3)
    for column in range(4):  # every tile drawn: no column left as the white background
        tile = figure[:160, column * 244 + (4 if column >= 2 else 0):][:, :240]
        assert tile.std() > 10, column
    masks = figure[:, 244:484], figure[:, 3 * 244 + 4:]
    for mask in masks:  # mask columns hold the class colours: red sky, green/blue rocks
        red, green, blue = (mask[..., c] > 200 for c in range(3))
        assert (red & ~green & ~blue).mean() > 0.01 and ((green | blue) & ~red).mean() > 0.01


def test_a_missing_data_folder_is_a_clear_error(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "bench" / "synth_vs_real_figure.py"), "--data",
                           str(tmp_path / "nope"), "--out", str(tmp_path / "f.jpg")], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2 and "nope: data folder not found" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "f.jpg").exists()


@pytest.mark.parametrize("out, message", [
    ("a-file/f.jpg", "a-file is a file, not a folder"),
    ("fig.xyz", "unknown image file extension '.xyz'; expected one Pillow writes, such as .jpg or .png"),
    (".", "is a folder; expected a file path"),
])
def test_an_out_it_cannot_write_is_refused_before_drawing(tmp_path, out, message):
    (tmp_path / "a-file").write_text("x")
    # --data names nothing: had the figure been drawn first, the error would be about the data
    done = subprocess.run([sys.executable, str(REPO / "bench" / "synth_vs_real_figure.py"), "--data",
                           str(tmp_path / "nope"), "--out", out], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("synth_vs_real_figure.py: error: --out ")
    assert message in done.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["a-file"]
