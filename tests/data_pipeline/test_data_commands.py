"""`lunartune data synth|check` end to end through the real CLI and the real generator."""

from data_pipeline import DataConfig, make_loaders
from tuner.cli import main


def test_synth_then_check_then_load(tmp_path, capsys):
    out = tmp_path / "scenes"
    run = ["--run-dir", str(tmp_path / "runs"), "data"]
    assert main([*run, "synth", "--out", str(out), "--count", "8", "--size", "64x48", "--style", "simple",
                 "--workers", "1"]) == 0
    assert main([*run, "check", str(out)]) == 0
    assert "renders (clean masks): 8 pairs" in capsys.readouterr().out
    loaders = make_loaders(DataConfig(root=str(out), image_size=(32, 32), batch_size=2, val_fraction=0.25,
                                      test_fraction=0.25))
    x, y = next(iter(loaders.train))
    assert x.shape == (2, 3, 32, 32) and loaders.split_sizes == {"train": 4, "val": 2, "test": 2}
