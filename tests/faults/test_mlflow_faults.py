"""The MLflow server goes away mid-sweep: training goes on; MLflow ends up with every epoch of every trial,
whether the server comes back during the sweep or only afterwards (then `tune --resume` fills it in)."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from _procs import free_port, terminate_session
from fault_helpers import child_statuses, epoch_histories, trial_rows, tune_args, wait_exit, wait_for
from test_mlflow_server import MLFLOW, _wait_healthy
from models.checkpoint import load_checkpoint
from tuner import tracking
from tuner.cli import EXIT_INCOMPLETE

EPOCHS = 6


def _server(tmp_path: Path, port: int) -> subprocess.Popen:
    """`mlflow server` on 127.0.0.1:port over the same store each time (a restart finds its data again)."""
    proc = subprocess.Popen([MLFLOW, "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                             "--artifacts-destination", str(tmp_path / "server-artifacts"), "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    _wait_healthy(f"http://127.0.0.1:{port}", proc, timeout_s=90)
    return proc


def _some_epoch_logged(uri: str) -> bool:
    try:
        experiment = tracking.client(uri).get_experiment_by_name("outage")
        runs = experiment and tracking.client(uri).search_runs([experiment.experiment_id], "metrics.epoch >= 1")
        return bool(runs)
    except Exception:
        return False


def _start_and_kill_server(sweeps, tmp_path, slow_space, scenes, epochs: int = EPOCHS):
    tracking.bound_http_retries()  # this test process's own polling too
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = _server(tmp_path, port)
    run_dir = tmp_path / "run"
    proc = sweeps.start(run_dir, "--tracking-uri", uri,
                        *tune_args(slow_space, scenes, "outage", samples=2, epochs=epochs, concurrency=2))
    try:
        wait_for("a first epoch in MLflow", lambda: _some_epoch_logged(uri), 240, proc, poll_s=0.5)
    finally:
        terminate_session(server.pid)  # SIGTERM, then SIGKILL: the server is gone
    return uri, port, run_dir, proc


def _assert_complete_in_mlflow(uri: str, run_dir: Path, epochs: int = EPOCHS) -> None:
    histories = epoch_histories(uri, "outage")
    assert sorted(histories.values()) == [list(range(1, epochs + 1))] * 2, histories
    assert set(child_statuses(uri, "outage").values()) == {"completed"}
    folders = trial_rows(run_dir / "ray")
    assert len(folders) == 2 and all(any(f.glob("checkpoint_*/trial.pt")) for f in folders)
    _assert_best_checkpoints_in_mlflow(uri, run_dir, tmp=run_dir.parent / "downloaded")


def _assert_best_checkpoints_in_mlflow(uri: str, run_dir: Path, tmp: Path) -> None:
    """Each child run's checkpoint/best.pt holds its trial's best epoch in Ray's results, weights only: the
    sync uploads it from Ray's checkpoint when the trial's own upload failed during the outage."""
    mlflow = tracking.client(uri)
    experiment = tracking.find_experiment(uri, "outage")
    parent = tracking.latest_parent_run(uri, experiment.experiment_id)
    run_of = {r.data.tags[tracking.TRIAL_ID_TAG]: r.info.run_id
              for r in tracking.child_runs(uri, experiment.experiment_id, parent.info.run_id)}
    trials = trial_rows(run_dir / "ray")
    assert len(trials) == 2, trials
    for rows in trials.values():
        scores = [row["val_miou"] for row in rows]
        best_epoch = rows[scores.index(max(scores))]["epoch"]
        run_id = run_of[rows[-1]["trial_id"]]
        assert tracking.best_checkpoint_epoch(uri, run_id) == best_epoch, (run_id, scores)
        best = load_checkpoint(mlflow.download_artifacts(run_id, tracking.CHECKPOINT_ARTIFACT, str(tmp / run_id)))
        assert best["epoch"] == best_epoch and best["optimizer"] is None


@pytest.mark.slow
def test_server_back_mid_sweep_gets_every_epoch(sweeps, scenes, slow_space, tmp_path):
    # the trials must outlast the outage: after a failed call they leave MLflow alone for a minute, so epochs
    # no longer wait on the dead server and run at full speed (~1 s each here)
    epochs = 6 * EPOCHS
    uri, port, run_dir, proc = _start_and_kill_server(sweeps, tmp_path, slow_space, scenes, epochs)
    wait_for("a trial that saw the outage", lambda: "not logged" in proc.log.read_text(), 120, proc, poll_s=0.5)
    server = _server(tmp_path, port)
    try:
        assert proc.poll() is None, "the sweep ended during the outage: this would test the other case"
        assert wait_exit(proc, 400) == 0, proc.log.read_text()[-4000:]
        assert "not logged" in proc.log.read_text()  # trials saw the outage and went on
        assert "missing data" not in proc.log.read_text()
        _assert_complete_in_mlflow(uri, run_dir, epochs)
    finally:
        terminate_session(server.pid)


@pytest.mark.slow
def test_server_gone_for_good_then_resume_fills_mlflow_in(sweeps, scenes, slow_space, tmp_path):
    uri, port, run_dir, proc = _start_and_kill_server(sweeps, tmp_path, slow_space, scenes)
    assert wait_exit(proc, 400) == EXIT_INCOMPLETE, proc.log.read_text()[-4000:]
    log = proc.log.read_text()
    assert "is missing data for" in log and "--experiment outage --resume" in log, log[-3000:]
    trials = trial_rows(run_dir / "ray")
    assert len(trials) == 2 and all(len(rows) == EPOCHS for rows in trials.values())  # Ray has everything

    server = _server(tmp_path, port)
    try:
        # the command the sweep printed, as printed: --resume logs to the server the sweep was started with
        code, out = sweeps.run(run_dir, "tune", "--experiment", "outage", "--resume")
        assert code == 0 and "missing data" not in out, out[-3000:]
        _assert_complete_in_mlflow(uri, run_dir)
        assert not (run_dir / "mlflow.db").exists()
    finally:
        terminate_session(server.pid)
