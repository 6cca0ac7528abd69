"""bench/many_trials.py drives the sweep's real wiring (searcher, limiter, ASHA, callback, sync to MLflow): a tiny
run keeps it in step with that wiring's signatures (it had fallen out of step once, unnoticed)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_a_small_run_puts_every_trial_in_ray_mlflow_and_optuna(tmp_path):
    out = tmp_path / "many.json"
    # a process of its own: the bench starts its own local Ray, as a user runs it
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "many_trials.py"), "--trials", "6", "--epochs", "2",
                           "--out", str(out)], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["ok"] and report["mlflow_child_runs"] == 6 and report["incomplete"] == []
    assert sum(report["optuna_states"].values()) == 6
    # a table to read, not raw JSON (that is in the file)
    assert not proc.stdout.lstrip().startswith("{") and "MLflow child runs   6:" in proc.stdout
    assert f"wrote {out}" in proc.stdout
