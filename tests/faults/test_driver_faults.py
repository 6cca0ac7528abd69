"""The driver is killed mid-sweep (SIGKILL: no chance to save; the SIGINT case is tests/tuner/test_resume.py),
and a second sweep is started on the same run dir and experiment."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from fault_helpers import (RAY_EXIT_S, REPO, describe, epoch_histories, trial_rows, tune_args, wait_for,
                           wait_gone)
from test_resume import _finished_in_study
from tuner import leftovers
from tuner.cli import CliError
from tuner.settings import RunPaths
from tuner.sweep import SweepConfig, run_sweep, sweep_lock

SAMPLES = 4


@pytest.mark.slow
def test_sigkilled_driver_resumes_without_rerunning_and_a_second_sweep_is_refused(sweeps, scenes, slow_space, tmp_path):
    run_dir = tmp_path / "run"
    args = tune_args(slow_space, scenes, "killed", samples=SAMPLES, epochs=2)
    proc = sweeps.start(run_dir, *args)
    lock = run_dir / "sweeps" / "killed.lock"
    wait_for("the sweep's lock", lambda: lock.is_file() and f"pid {proc.pid} " in lock.read_text(), 120, proc)
    code, out = sweeps.run(run_dir, *args, timeout_s=120)  # same run dir and experiment, while it runs
    assert code == 1 and f"is held by pid {proc.pid}" in out and "killed.lock" in out, out[-2000:]
    assert proc.poll() is None, "the first sweep must still be running (else this proves nothing)"

    wait_for("two finished trials", lambda: _finished_in_study(run_dir / "optuna.db") >= 2, 300, proc)
    # the private Ray's processes (gcs_server, raylet, workers) carry the sweep's label: lock file + driver pid
    labelled = leftovers.find(lock)
    assert set(labelled.values()) == {proc.pid}, labelled
    assert {"gcs_server", "raylet"} <= {_command_name(pid) for pid in labelled}, labelled

    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # Ray's fate-sharing usually takes its processes down with the driver, but not always (a loaded CI machine
    # kept some alive for over a minute). Stand in for such a survivor deterministically: a process labelled
    # as the killed driver's. --resume must stop it, and any real survivors, before it starts Ray again.
    survivor = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True,
                                env={**sweeps.env, leftovers.LABEL: leftovers.label_value(lock, proc.pid)})
    sweeps.procs.append(survivor)
    uri = f"sqlite:///{run_dir / 'mlflow.db'}"
    before = {name: steps for name, steps in epoch_histories(uri, "killed").items() if steps == [1, 2]}
    assert len(before) >= 2, before  # the two trials Optuna saw finish (no ASHA: both ran 2 epochs), else
    # "finished trials were not rerun" below would check nothing

    code, out = sweeps.run(run_dir, "tune", "--experiment", "killed", "--resume", timeout_s=400)
    assert code == 0, out[-4000:]
    assert survivor.wait(timeout=1) == -signal.SIGTERM, "--resume must stop the killed sweep's leftovers"
    assert f"left running by the killed sweep (driver pid {proc.pid})" in out, out[-4000:]
    # a trial Optuna was told had ended, though Ray's saved state still had it running, is no error either
    assert f"sweep killed: {SAMPLES} completed\n" in out, out[-4000:]
    # Ray stops its processes asynchronously after the CLI exits; the killed driver's must be gone too
    left = wait_gone(sweeps.mark, RAY_EXIT_S, sweeps.sessions())
    assert not left, f"the resumed sweep left Ray processes behind for {RAY_EXIT_S} s:\n{describe(left)}\n{out[-3000:]}"
    histories = epoch_histories(uri, "killed")  # also: still exactly one parent run
    assert len(histories) == SAMPLES and all(steps == [1, 2] for steps in histories.values()), histories
    rows = trial_rows(run_dir / "ray")
    assert len(rows) == SAMPLES
    # the checkpoints the killed sweep's workers were writing are gone (a resumed trial clears its own, even
    # one with no epoch left; the driver those of trials Ray never saved, which it reran under other ids)
    sweep_name = next(iter(rows)).parent.name
    assert not list(Path(tempfile.gettempdir()).glob(f"lunartune-checkpoint-{sweep_name}-*"))
    for name in before:  # finished trials were not rerun: one report per epoch in Ray's results
        (trial,) = [r for f, r in rows.items() if f.name.startswith(name + "_")]
        assert [r["epoch"] for r in trial] == [1, 2], name
    study = optuna.load_study(study_name="killed", storage=f"sqlite:///{run_dir / 'optuna.db'}")
    states = [t.state for t in study.trials]
    assert states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED) == SAMPLES, states
    assert TrialState.RUNNING not in states, "trials the killed driver had asked for must not stay RUNNING"


@pytest.mark.slow
def test_second_sweep_on_the_same_experiment_is_refused_and_a_dead_holder_frees_the_lock(scenes, tiny_space, tmp_path):
    paths = RunPaths(root=tmp_path / "run")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom tuner.settings import RunPaths\nfrom tuner.sweep import sweep_lock\n"
         f"with sweep_lock(RunPaths(root=__import__('pathlib').Path({str(paths.root)!r})), 'twice'):\n"
         "    print('held', flush=True); time.sleep(600)"], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        cfg = SweepConfig(space=tiny_space, data=str(scenes), samples=1, max_epochs=1, device="cpu", experiment="twice")
        with pytest.raises(CliError, match=rf"twice\.lock is held by pid {holder.pid} on "):
            run_sweep(cfg, paths)
        assert not (paths.root / "sweeps" / "twice.json").exists()  # the refused sweep wrote nothing
        assert not paths.mlflow_db.exists()
    finally:
        holder.kill()
        holder.wait()
    with sweep_lock(paths, "twice"):  # the holder died by SIGKILL: its lock is free, not stale
        pass


def _command_name(pid: int) -> str | None:
    try:
        return (Path("/proc") / str(pid) / "comm").read_text().strip()
    except OSError:
        return None
