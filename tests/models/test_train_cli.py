"""`lunartune train` end to end on generated scenes (64 x 64, 2 epochs), through tuner.cli.main."""
import json
import re
import signal
import subprocess
import sys
import time

import pytest

from models.checkpoint import model_from_checkpoint
from data_pipeline import synth
from tuner.cli import main
from tuner.settings import RunPaths
from tuner.train import synthetic_root, without_generator_version

COMMON = ["--synthetic-count", "24", "--image-size", "64", "--batch-size", "4", "--seed", "0"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("run")


def test_train_synthetic_saves_best_checkpoint_and_prints_metrics(run_dir, capsys):
    code = main(["train", "--run-dir", str(run_dir), *COMMON, "--backbone", "unet_scratch", "--epochs", "2"])
    out, err = capsys.readouterr()
    assert code == 0, err
    summary = json.loads(out)
    assert "epoch 1/2" in err and "epoch 2/2" in err
    assert "data: 16 train / 4 val / 4 test frames; split in " in err  # 24 scenes at the default fractions
    assert summary["status"] == "ok"
    lines = re.findall(r"epoch (\d)/2  train_loss .*? val_miou (\S+) .*?( \* best)?$", err, re.M)
    assert [int(epoch) for epoch, _, _ in lines] == [1, 2]
    scores = [float(score) for _, score, _ in lines]
    best = scores.index(max(scores)) + 1  # the first epoch with the top score is kept
    assert summary["best_epoch"] == best and summary["val_miou"] == pytest.approx(max(scores), abs=5e-5)
    assert [bool(mark) for _, _, mark in lines] == [True, scores[1] > scores[0]]
    for split in ("val", "test"):
        assert 0 <= summary[f"{split}_miou"] <= 1 and f"{split}_iou_large_rocks" in summary
    model, info = model_from_checkpoint(summary["checkpoint"])
    assert info["epoch"] == summary["best_epoch"] and info["classes"][1]["name"] == "sky"
    assert info["metrics"]["val_miou"] == pytest.approx(summary["val_miou"])
    assert json.loads((run_dir / "train" / "unet_scratch" / "metrics.json").read_text()) == summary


def test_bad_config_is_one_clear_line(run_dir, capsys):
    code = main(["train", "--run-dir", str(run_dir), *COMMON, "--backbone", "vgg12"])
    assert code == 1
    assert "--backbone='vgg12': expected one of" in capsys.readouterr().err  # the flag, not ModelConfig.backbone
    assert main(["train", "--run-dir", str(run_dir), *COMMON, "--backbone", "vgg11", "--image-size", "48"]) == 1
    assert "--image-size=48x48: expected" in capsys.readouterr().err


def test_divergence_is_a_clear_message_and_exit_code_1(run_dir, capsys):
    out = run_dir / "diverged"
    out.mkdir()
    (out / "metrics.json").write_text('{"an earlier run": true}')  # what a run into this folder left
    (out / "best.pt").write_bytes(b"its weights")
    code = main(["train", "--run-dir", str(run_dir), *COMMON, "--backbone", "unet_scratch", "--epochs", "3",
                 "--optimizer", "sgd", "--lr", "1e30", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "training diverged" in err and "status: diverged" in err and "Traceback" not in err
    # nothing half-written: no new best.pt beside the earlier run's metrics.json
    assert (out / "best.pt").read_bytes() == b"its weights" and sorted(p.name for p in out.iterdir()) == \
        ["best.pt", "metrics.json"]
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".diverged.")]


def test_an_out_that_is_a_file_or_a_missing_device_is_refused_before_any_work(run_dir, tmp_path, capsys):
    (tmp_path / "taken.png").write_bytes(b"x")
    args = ["train", "--run-dir", str(tmp_path / "run"), *COMMON, "--backbone", "unet_scratch", "--epochs", "1"]
    assert main([*args, "--out", str(tmp_path / "taken.png")]) == 1
    assert "taken.png: exists and is not a folder" in capsys.readouterr().err
    assert main([*args, "--device", "gpu"]) == 1
    assert "--device='gpu': expected auto, cpu, cuda or cuda:N" in capsys.readouterr().err
    assert not (tmp_path / "run" / "data").exists()  # no scenes were generated


def _batches_tracked(checkpoint) -> set[int]:
    model, _ = model_from_checkpoint(checkpoint)
    return {int(m.num_batches_tracked) for m in model.modules() if hasattr(m, "num_batches_tracked")}


def test_bn_recalibration_flag_reaches_the_saved_checkpoint(run_dir, tmp_path, capsys):
    """The saved BatchNorm statistics come from the recalibration pass (2 batches), or, with 0, from the
    training steps (every batch of the epoch: more than 2 here)."""
    args = ["train", "--run-dir", str(run_dir), *COMMON, "--backbone", "unet_scratch", "--epochs", "1"]
    assert main([*args, "--out", str(tmp_path / "two"), "--bn-recalibration-batches", "2"]) == 0
    assert _batches_tracked(json.loads(capsys.readouterr().out)["checkpoint"]) == {2}
    assert main([*args, "--out", str(tmp_path / "off"), "--bn-recalibration-batches", "0"]) == 0
    assert min(_batches_tracked(json.loads(capsys.readouterr().out)["checkpoint"])) > 2
    assert main([*args, "--bn-recalibration-batches", "-1"]) == 1
    assert "--bn-recalibration-batches=" in capsys.readouterr().err


def test_a_newer_generator_writes_its_scenes_beside_the_older_ones(tmp_path, monkeypatch):
    """Scenes of an older generator version once blocked `--data synthetic` for good (same folder, other
    parameters: refused); now each version has its own folder and the old one is left as it was."""
    paths = RunPaths(tmp_path)
    older = synth.generate(synthetic_root(paths, 2, 0), 2, 0, size=(48, 72), workers=1, progress=False)
    monkeypatch.setattr(synth, "MANIFEST_VERSION", synth.MANIFEST_VERSION + 1)
    newer = synth.generate(synthetic_root(paths, 2, 0), 2, 0, size=(48, 72), workers=1, progress=False)
    assert newer != older
    assert without_generator_version(newer) == without_generator_version(older)  # one Optuna study for both
    assert synth.read_manifest(older)["version"] + 1 == synth.read_manifest(newer)["version"]


def test_sigterm_mid_training_leaves_no_staging_folder(tmp_path):
    """`timeout`, `kill` and job schedulers send SIGTERM: it ended `train` at once and left its staging folder
    (`.unet_scratch.partial-*`, the best checkpoint so far) beside the output, never removed."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "tuner.cli", "--run-dir", str(run), "train", *COMMON, "--backbone", "unet_scratch",
           "--epochs", "500", "--device", "cpu"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not list((run / "train").glob(".unet_scratch.partial-*/best.pt")) and time.monotonic() < deadline:
            time.sleep(0.2)  # training has saved a checkpoint into its staging folder
        assert proc.poll() is None, proc.communicate()
        assert list((run / "train").glob(".unet_scratch.partial-*/best.pt")), "no checkpoint staged in time"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "lunartune train: terminated (SIGTERM)" in err
    assert list(run.rglob("*.partial-*")) == []
    assert not (run / "train" / "unet_scratch").exists()  # nothing half-written lands either
