"""The sweep's up-front disk check: its estimate against real checkpoint files, and its warning."""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from data_pipeline import DataError
from models import ModelConfig, TrainConfig, build
from models.checkpoint import save_checkpoint
from search_spaces import resolve
from tuner import disk
from tuner.space import load_space
from tuner.sweep import CHECKPOINTS_KEPT, SweepConfig, run_sweep


def _write(tmp_path, text: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_a_real_checkpoint_is_the_weights_plus_the_optimizers_state(tmp_path, optimizer):
    model_cfg = ModelConfig(backbone="unet_scratch", scratch_width=8, scratch_depth=3)
    train_cfg = TrainConfig(optimizer=optimizer, momentum=0.9)
    model = build(model_cfg)
    opt = (torch.optim.Adam(model.parameters()) if optimizer == "adam"
           else torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    model(torch.rand(2, 3, 32, 32)).mean().backward()
    opt.step()  # the optimizer's state exists from its first step on
    path = save_checkpoint(tmp_path / "trial.pt", model, model_cfg, train_cfg, classes=[], image_size=(32, 32),
                           normalization={"mean": [0.5] * 3, "std": [0.2] * 3}, epoch=1, metrics={}, optimizer=opt)
    tensors = disk.weight_bytes(model_cfg) * (1 + disk.OPTIMIZER_STATE[optimizer])
    assert tensors < path.stat().st_size < tensors + 100_000  # + configs, metrics, pickle framing


def test_the_estimate_takes_the_largest_model_and_hungriest_optimizer_of_the_space():
    space = load_space(resolve("smoke"))  # unet_scratch or vgg11, adam or sgd
    vgg11 = disk.weight_bytes(ModelConfig(backbone="vgg11"))
    built = build(ModelConfig(backbone="vgg11")).state_dict().values()  # on the CPU, for real
    assert vgg11 == sum(t.numel() * t.element_size() for t in built)
    assert disk.weight_bytes(ModelConfig(backbone="unet_scratch")) < vgg11 / 10
    # 2 epochs: each trial keeps 2 checkpoints (weights + Adam's two moments) and the best weights in MLflow;
    # each of the 4 running trials stages one checkpoint in the temp folder
    estimate = disk.sweep_checkpoint_bytes
    assert estimate(space, samples=6, max_epochs=2, kept=CHECKPOINTS_KEPT, concurrency=4) == disk.CheckpointBytes(
        ray=6 * 2 * 3 * vgg11, mlflow=6 * vgg11, staging=4 * 3 * vgg11)
    assert estimate(space, samples=6, max_epochs=9, kept=CHECKPOINTS_KEPT, concurrency=8).ray == 6 * 3 * 3 * vgg11
    assert estimate(space, samples=2, max_epochs=9, kept=CHECKPOINTS_KEPT, concurrency=8).staging == 2 * 3 * vgg11


def test_a_searched_scratch_width_counts_at_its_largest(tmp_path):
    space = load_space(_write(tmp_path, "params:\n  scratch_width: {low: 8, high: 64, type: int}\n"
                                        "fixed: {backbone: unet_scratch, optimizer: sgd}\n"))
    widest = disk.weight_bytes(ModelConfig(backbone="unet_scratch", scratch_width=64))
    assert disk.sweep_checkpoint_bytes(space, samples=1, max_epochs=1, kept=CHECKPOINTS_KEPT,
                                       concurrency=1).mlflow == widest


def test_the_warning_names_both_sizes_and_the_folders(tmp_path):
    # the nearest existing folder's disk; other processes write meanwhile, so equal to within a GB
    not_yet, there = disk.free_bytes(tmp_path / "not" / "yet"), disk.free_bytes(tmp_path)
    assert not_yet > 0 and abs(not_yet - there) < 10**9
    assert disk.disk_warning(10**9, 2 * 10**9, [tmp_path]) is None
    warning = disk.disk_warning(5 * 10**9, 2 * 10**9, [tmp_path / "ray", tmp_path / "mlartifacts"])
    assert (f"up to 5.0 GB of checkpoints, but only 2.0 GB are free on the disk of {tmp_path / 'ray'} and "
            f"{tmp_path / 'mlartifacts'}") in warning


def test_folders_on_one_disk_add_up_and_folders_on_two_are_checked_apart(tmp_path):
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on another filesystem than the temporary folder")
    assert disk.by_disk({tmp_path / "ray": 3, tmp_path / "not" / "yet": 4}) == [
        ([tmp_path / "ray", tmp_path / "not" / "yet"], 7)]
    assert sorted(disk.by_disk({tmp_path / "ray": 3, shm / "lt-artifacts": 4})) == sorted([
        ([tmp_path / "ray"], 3), ([shm / "lt-artifacts"], 4)])
    # more than the small disk holds, less than the big one: the warning names only the small one
    small, big = disk.free_bytes(shm), disk.free_bytes(tmp_path)
    if not small * 2 < big:
        pytest.skip(f"needs /dev/shm much smaller than {tmp_path}'s disk")
    warnings = disk.disk_warnings({tmp_path / "ray": small, shm / "lt-artifacts": small + 10**9})
    assert len(warnings) == 1 and f"free on the disk of {shm / 'lt-artifacts'}:" in warnings[0]
    assert disk.disk_warnings({tmp_path / "ray": small + 10**9, shm / "lt-artifacts": 1}) == []


def test_a_sweep_that_may_not_fit_warns_before_it_starts(tmp_path, run_paths, capsys):
    (tmp_path / "empty-data").mkdir()  # a folder without a data set: checked only after the disk
    cfg = SweepConfig(space="smoke", data=str(tmp_path / "empty-data"), samples=10**6, device="cpu")
    with pytest.raises(DataError):  # what comes after the check stops the sweep before Ray starts
        run_sweep(cfg, run_paths)
    err = capsys.readouterr().err
    assert "lunartune tune: warning: this sweep may write up to" in err
    # the embedded MLflow store's artifacts lie on the same disk: one warning, counting both
    assert err.count("this sweep may write") == 1
    assert f"{run_paths.ray_results} and {run_paths.mlflow_artifacts}" in err
    # --storage as a file:// URI is a local folder too (object storage is not counted)
    with pytest.raises(DataError):
        run_sweep(replace(cfg, storage=f"file://{tmp_path}/store"), run_paths)
    assert f"free on the disk of {tmp_path}/store and " in capsys.readouterr().err
