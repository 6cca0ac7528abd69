"""Interrupt a real `lunartune tune` with SIGINT, resume it: finished trials are not rerun."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tuner import tracking
from tuner.sweep import SweepConfig, run_sweep

REPO = Path(__file__).resolve().parents[2]
SAMPLES = 4


def _finished_in_study(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=1) as con:
            return con.execute("select count(*) from trials where state in ('COMPLETE', 'PRUNED')").fetchone()[0]
    except sqlite3.OperationalError:  # tables not created yet
        return 0


def _interrupt_after(proc: subprocess.Popen, db: Path, finished: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while _finished_in_study(db) < finished:
        assert proc.poll() is None, f"the sweep ended early:\n{proc.communicate()[1][-3000:]}"
        assert time.monotonic() < deadline, "no trial finished in time"
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)


def _histories(uri: str, runs) -> dict:
    return {r.info.run_id: [(m.step, m.value) for m in tracking.client(uri).get_metric_history(r.info.run_id, "val_miou")]
            for r in runs}


@pytest.mark.slow
def test_sigint_then_resume_does_not_rerun_finished_trials(local_ray, scenes, tiny_space, run_paths):
    command = [sys.executable, "-m", "tuner.cli", "--run-dir", str(run_paths.root), "tune", "--space", tiny_space,
               "--data", str(scenes), "--samples", str(SAMPLES), "--max-epochs", "2", "--concurrency", "1",
               "--device", "cpu", "--experiment", "resume"]
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        _interrupt_after(proc, run_paths.optuna_db, finished=2, timeout_s=240)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr[-3000:]
    assert "--experiment resume --resume" in stderr

    uri = run_paths.tracking_uri
    experiment = tracking.find_experiment(uri, "resume")
    parent = tracking.latest_parent_run(uri, experiment.experiment_id)
    assert parent.data.tags[tracking.STATUS_TAG] == "interrupted"
    before = tracking.child_runs(uri, experiment.experiment_id, parent.info.run_id)
    done_before = [r for r in before if r.data.tags[tracking.STATUS_TAG] in ("completed", "pruned")]
    assert len(done_before) >= 2 and len(before) < SAMPLES + 1
    histories_before = _histories(uri, done_before)

    result = run_sweep(SweepConfig(experiment="resume", resume=True), run_paths)  # settings come from the sweep

    assert not result.interrupted and sum(result.statuses.values()) == SAMPLES
    assert result.parent_run_id == parent.info.run_id
    after = tracking.child_runs(uri, experiment.experiment_id, parent.info.run_id)
    assert len(after) == SAMPLES, "a resumed trial must continue its own child run, not open a new one"
    assert _histories(uri, done_before) == histories_before, "finished trials were rerun"
    for run in after:
        steps = [s for s, _ in _histories(uri, [run])[run.info.run_id]]
        assert steps == sorted(set(steps)) and steps[0] == 1, f"{run.info.run_name}: epochs logged {steps}"
    study = optuna.load_study(study_name="resume", storage=f"sqlite:///{run_paths.optuna_db}")
    # the restored searcher is still the Optuna one, with its trials: every trial told, none left RUNNING
    assert len(study.trials) == SAMPLES
    assert {t.state for t in study.trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
