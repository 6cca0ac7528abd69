"""A trial's worker process is SIGKILLed mid-epoch (with and without a corrupt checkpoint to resume from)."""
from __future__ import annotations

import os
import signal
import tempfile
from pathlib import Path

import pytest

from fault_helpers import (child_statuses, epoch_histories, metric_histories, running_trial, trial_rows, tune_args,
                           wait_exit, wait_for)

EPOCHS = 4


def _kill_worker_mid_epoch(sweeps, run_dir, proc, min_epoch: int):
    """SIGKILL the worker of a trial that has reported >= min_epoch epochs (so it is inside the next one)."""
    folder, last = wait_for(f"a trial past epoch {min_epoch}",
                            lambda: running_trial(run_dir / "ray", EPOCHS, min_epoch=min_epoch), 240, proc, poll_s=0.1)
    os.kill(last["pid"], signal.SIGKILL)
    return folder, last


@pytest.mark.slow
def test_sigkilled_worker_resumes_from_its_checkpoint_and_continues_its_run(sweeps, scenes, slow_space, tmp_path):
    run_dir = tmp_path / "run"
    proc = sweeps.start(run_dir, *tune_args(slow_space, scenes, "workerkill", samples=1, epochs=EPOCHS))
    folder, last = _kill_worker_mid_epoch(sweeps, run_dir, proc, min_epoch=1)
    assert wait_exit(proc, 300) == 0, proc.log.read_text()[-4000:]

    rows = trial_rows(run_dir / "ray")[folder]
    assert len({r["pid"] for r in rows}) == 2, "the trial should have been restarted in a new worker"
    epochs = [r["epoch"] for r in rows]
    assert epochs == list(range(1, EPOCHS + 1)), f"epochs already done were trained again: {epochs}"
    restarted = [r for r in rows if r["pid"] != last["pid"]]
    assert restarted[0]["epoch"] == last["epoch"] + 1  # resumed right after its last checkpoint
    histories = epoch_histories(f"sqlite:///{run_dir / 'mlflow.db'}", "workerkill")
    assert list(histories.values()) == [list(range(1, EPOCHS + 1))], f"one run, every epoch once: {histories}"
    assert list(child_statuses(f"sqlite:///{run_dir / 'mlflow.db'}", "workerkill").values()) == ["completed"]
    assert "1 completed" in proc.log.read_text()  # the sweep's final results count it
    staged = list(Path(tempfile.gettempdir()).glob(f"lunartune-checkpoint-{folder.parent.name}-*"))
    assert not staged, f"the killed worker's staged checkpoint should be gone: {staged}"

    # the same sweep never interrupted: same trial, same numbers (weights, optimizer, and dropout's RNG resumed)
    other_dir = tmp_path / "uninterrupted"
    code, log = sweeps.run(other_dir, *tune_args(slow_space, scenes, "workerkill", samples=1, epochs=EPOCHS))
    assert code == 0, log[-4000:]
    for key in ("train_loss", "val_miou"):
        resumed = metric_histories(f"sqlite:///{run_dir / 'mlflow.db'}", "workerkill", key)
        assert resumed == metric_histories(f"sqlite:///{other_dir / 'mlflow.db'}", "workerkill", key), key


@pytest.mark.slow
def test_corrupt_checkpoint_falls_back_to_an_older_one_with_a_warning(sweeps, scenes, slow_space, tmp_path):
    run_dir = tmp_path / "run"
    proc = sweeps.start(run_dir, *tune_args(slow_space, scenes, "corrupt", samples=1, epochs=EPOCHS))
    # wait for two kept checkpoints, ruin the newest one, then make the trial resume from it
    folder, last = wait_for("a trial past epoch 2", lambda: running_trial(run_dir / "ray", EPOCHS, min_epoch=2),
                            240, proc, poll_s=0.1)
    corrupt = folder / last["checkpoint_dir_name"] / "trial.pt"
    corrupt.write_bytes(b"not a checkpoint" * 64)
    os.kill(last["pid"], signal.SIGKILL)
    assert wait_exit(proc, 300) == 0, proc.log.read_text()[-4000:]

    log = proc.log.read_text()
    assert f"cannot resume from {corrupt.parent}" in log and "falling back to an older checkpoint" in log
    rows = trial_rows(run_dir / "ray")[folder]
    restarted = [r["epoch"] for r in rows if r["pid"] != last["pid"]]
    assert restarted and restarted[-1] == EPOCHS
    assert 1 < restarted[0] <= last["epoch"], f"should resume from the older checkpoint, not from scratch: {restarted}"
    uri = f"sqlite:///{run_dir / 'mlflow.db'}"
    assert list(epoch_histories(uri, "corrupt").values()) == [list(range(1, EPOCHS + 1))]
    assert list(child_statuses(uri, "corrupt").values()) == ["completed"]
