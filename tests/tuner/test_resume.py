"""Interrupt a real `lunartune tune` with SIGINT, resume it: finished trials are not rerun, and the interrupted
sweep left no Ray processes behind."""
from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from ray.tune import ExperimentAnalysis, ResultGrid

from _procs import MARK, RAY_EXIT_S, describe, started, wait_gone
from data_pipeline import DataConfig
from tuner import sweep, tracking
from tuner.sweep import SweepConfig, run_sweep, sync_to_mlflow, trials_ray_resumes

REPO = Path(__file__).resolve().parents[2]
SAMPLES = 8  # enough that the sweep cannot finish between "2 trials done" and the SIGINT landing


def _finished_in_study(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=1) as con:
            return con.execute("select count(*) from trials where state in ('COMPLETE', 'PRUNED')").fetchone()[0]
    except sqlite3.OperationalError:  # tables not created yet
        return 0


def _interrupt_after(proc: subprocess.Popen, db: Path, finished: int, timeout_s: float, mark: str = "") -> list[int]:
    """SIGINT `proc` once `finished` trials are done; returns the pids carrying `mark` just before (only
    those: a lost mark must not pass for one that reached Ray)."""
    deadline = time.monotonic() + timeout_s
    while _finished_in_study(db) < finished:
        assert proc.poll() is None, f"the sweep ended early:\n{proc.communicate()[1][-3000:]}"
        assert time.monotonic() < deadline, "no trial finished in time"
        time.sleep(0.5)
    running = started(mark) if mark else []
    proc.send_signal(signal.SIGINT)
    return running


def _kill(pids: list[int]) -> None:
    for pid in pids:  # only processes carrying this test's mark: never `ray stop`, never by name
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def _histories(uri: str, runs) -> dict:
    return {r.info.run_id: [(m.step, m.value) for m in tracking.client(uri).get_metric_history(r.info.run_id, "val_miou")]
            for r in runs}


@pytest.mark.slow
def test_sigint_then_resume_does_not_rerun_finished_trials(local_ray, scenes, tiny_space, run_paths, capsys):
    command = [sys.executable, "-m", "tuner.cli", "--run-dir", str(run_paths.root), "tune", "--space", tiny_space,
               "--data", str(scenes), "--samples", str(SAMPLES), "--max-epochs", "2", "--concurrency", "1",
               "--device", "cpu", "--experiment", "resume"]
    mark = uuid.uuid4().hex  # inherited by the Ray processes the CLI starts: finds exactly those
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", MARK: mark}, start_new_session=True)
    try:
        running = _interrupt_after(proc, run_paths.optuna_db, finished=2, timeout_s=240, mark=mark)
        _, stderr = proc.communicate(timeout=120)
        left = wait_gone(mark, RAY_EXIT_S, [proc.pid])  # and its session: an agent's mark may be overwritten
        described = describe(left)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _kill(started(mark, [proc.pid]))  # whatever a failure left: not into the resume below or other tests
    assert proc.returncode == 130, f"{stderr[-3000:]}\nmarked processes left after {RAY_EXIT_S} s:\n{described}"
    assert "--experiment resume --resume" in stderr
    assert len(running) > 2, f"the mark must reach Ray's processes (else the check below proves nothing): {running}"
    assert not left, f"{len(left)} Ray process(es) still alive {RAY_EXIT_S} s after the interrupted CLI exited:\n{described}"

    uri = run_paths.tracking_uri
    experiment = tracking.find_experiment(uri, "resume")
    parent = tracking.latest_parent_run(uri, experiment.experiment_id)
    assert parent.data.tags[tracking.STATUS_TAG] == "interrupted"
    before = tracking.child_runs(uri, experiment.experiment_id, parent.info.run_id)
    done_before = [r for r in before if r.data.tags[tracking.STATUS_TAG] in ("completed", "pruned")]
    assert 2 <= len(done_before) < SAMPLES, "the SIGINT must leave trials to resume (else this proves nothing)"
    so_far = parent.data.metrics  # how far it got, as the summary printed it (it logged only `trials`)
    assert so_far["trials_completed"] + so_far["trials_pruned"] == len(done_before) and "best_val_miou" not in so_far
    def scores(runs):
        return [m.value for r in runs for m in tracking.client(uri).get_metric_history(r.info.run_id, "val_miou")]
    # the best epoch Ray had received (a running trial may have logged a later one to MLflow on its own)
    assert so_far["best_objective"] >= max(scores(done_before))
    assert any(so_far["best_objective"] == pytest.approx(v) for v in scores(before))
    histories_before = _histories(uri, done_before)

    capsys.readouterr()
    result = run_sweep(SweepConfig(experiment="resume", resume=True), run_paths)  # settings come from the sweep
    # ASHA goes on with the rungs the finished trials filled (Ray does not save a scheduler's state: a resumed
    # ASHA started empty, "Iter 1.000: None", and let trials run that the uninterrupted sweep would stop)
    first_status = re.search(r"Bracket: (.*)", capsys.readouterr().out)
    assert first_status and re.search(r"Iter 1\.000: [0-9.]+", first_status.group(1)), first_status

    assert not result.interrupted and sum(result.statuses.values()) == SAMPLES
    assert result.parent_run_id == parent.info.run_id
    after = tracking.child_runs(uri, experiment.experiment_id, parent.info.run_id)
    assert len(after) == SAMPLES, "a resumed trial must continue its own child run, not open a new one"
    assert _histories(uri, done_before) == histories_before, "finished trials were rerun"
    for run in after:
        steps = [s for s, _ in _histories(uri, [run])[run.info.run_id]]
        assert steps == sorted(set(steps)) and steps[0] == 1, f"{run.info.run_name}: epochs logged {steps}"
    # the interrupted trial's run names the node it finished on (this Ray instance's), like the newer runs
    finished_first = {r.info.run_id for r in done_before}
    first_node = {r.data.tags["ray_node_id"] for r in done_before}
    resumed_node = {r.data.tags["ray_node_id"] for r in after if r.info.run_id not in finished_first}
    assert len(first_node) == 1 and len(resumed_node) == 1 and resumed_node != first_node, (first_node, resumed_node)
    study = optuna.load_study(study_name="resume", storage=f"sqlite:///{run_paths.optuna_db}")
    # the restored searcher is still the Optuna one, with its trials: every trial told, none left RUNNING
    assert len(study.trials) == SAMPLES
    assert {t.state for t in study.trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    # now finished: a second --resume says there is nothing left (it used to rerun Ray and reprint the summary)
    with pytest.raises(sweep.CliError, match="finished .*nothing is left to resume"):
        run_sweep(SweepConfig(experiment="resume", resume=True), run_paths)


def _save_as_running(experiment_path: Path, trial_id: str) -> None:
    """Rewrite Ray's newest experiment state as Ray saves it when Ctrl-C lands after ASHA stopped `trial_id`
    but before that epoch's checkpoint was saved: the trial RUNNING, its last result already done=True."""
    state_file = sorted(experiment_path.glob("experiment_state-*.json"))[-1]
    state = json.loads(state_file.read_text())
    for entry in state["trial_data"]:
        trial = json.loads(entry[0])
        if trial["trial_id"] == trial_id:
            trial["status"] = "RUNNING"
            entry[0] = json.dumps(trial)
    state_file.write_text(json.dumps(state))


@pytest.mark.slow
def test_a_trial_ray_will_resume_is_not_tagged_finished_though_its_last_result_says_done(
        local_ray, scenes, tmp_path, run_paths):
    # lr 1e-9 learns nothing, so ASHA (grace 1, reduction 2) stops it at epoch 1; lr 3e-2 runs both epochs
    space = tmp_path / "asha.yaml"
    space.write_text("params:\n  lr: {low: 1.0e-9, high: 3.0e-2, log: true}\n"
                     "fixed: {backbone: unet_scratch, optimizer: adam, scratch_width: 8, scratch_depth: 3}\n"
                     "points_to_evaluate:\n  - {lr: 3.0e-2}\n  - {lr: 1.0e-9}\n")
    cfg = SweepConfig(space=str(space), data=str(scenes), samples=2, max_epochs=2, grace_epochs=1, reduction_factor=2,
                      concurrency=1, seed=0, experiment="race", device="cpu")
    first = run_sweep(cfg, run_paths)
    assert first.statuses == {"completed": 1, "pruned": 1}
    uri = run_paths.tracking_uri
    children = {float(r.data.params["lr"]): r for r in tracking.child_runs(uri, first.experiment_id, first.parent_run_id)}
    pruned = children[1e-9]
    _save_as_running(Path(first.results_path), pruned.data.tags[tracking.TRIAL_ID_TAG])
    pointer = run_paths.root / "sweeps" / "race.json"  # and the sweep's pointer as that Ctrl-C leaves it
    pointer.write_text(json.dumps({**json.loads(pointer.read_text()), "finished": False}))
    tracking.client(uri).set_tag(pruned.info.run_id, tracking.STATUS_TAG, tracking.RUNNING)  # its callback never ran

    results = ResultGrid(ExperimentAnalysis(first.results_path))
    assert {r.metrics["trial_id"]: r.metrics["done"] for r in results} == {
        r.data.tags[tracking.TRIAL_ID_TAG]: True for r in children.values()}  # both last results say done
    resumable = trials_ray_resumes(results)
    assert resumable == {pruned.data.tags[tracking.TRIAL_ID_TAG]}
    target = tracking.TrackingTarget(uri, first.experiment_id, first.parent_run_id)
    setup = sweep._trial_setup(SweepConfig(max_epochs=2, objective="val_miou"), DataConfig(root="unused"), target)
    assert sync_to_mlflow(results, setup, resumable=resumable) == []
    tags = {lr: tracking.client(uri).get_run(r.info.run_id).data.tags[tracking.STATUS_TAG] for lr, r in children.items()}
    assert tags == {3e-2: "completed", 1e-9: tracking.RUNNING}, "a trial --resume runs on must not be tagged finished"

    resumed = run_sweep(SweepConfig(experiment="race", resume=True), run_paths)  # Ray runs the "RUNNING" one on
    assert resumed.statuses == {"completed": 2}
    history = tracking.client(uri).get_metric_history(pruned.info.run_id, "val_miou")
    assert [m.step for m in history] == [1, 2]
    assert tracking.client(uri).get_run(pruned.info.run_id).data.tags[tracking.STATUS_TAG] == "completed"


@pytest.mark.parametrize("sent_to", ["driver", pytest.param("process group", marks=pytest.mark.slow)])
def test_sigterm_stops_the_sweep_as_ctrl_c_does(local_ray, scenes, tiny_space, run_paths, sent_to):
    """A deleted KubeRay pod, `timeout` or systemd send SIGTERM: Ray's driver aborted on it (exit 134, no
    summary, the parent run and its trials left running in MLflow). Now it is Ctrl-C: resumable, said so.
    `timeout` signals its whole process group: the GCS and raylet stopped with the driver, which then waited
    60 s for them and was ended by Ray (exit 1, no summary): Ray's processes now have a group of their own."""
    wrapper = ["timeout", "-s", "TERM", "900"] if sent_to == "process group" else []  # our signal, not its timer
    command = [*wrapper, sys.executable, "-m", "tuner.cli", "--run-dir", str(run_paths.root), "tune", "--space", tiny_space,
               "--data", str(scenes), "--samples", "6", "--max-epochs", "2", "--concurrency", "1",
               "--device", "cpu", "--experiment", "term"]
    mark = uuid.uuid4().hex
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", MARK: mark}, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while _finished_in_study(run_paths.optuna_db) < 1:
            assert proc.poll() is None, f"the sweep ended early:\n{proc.communicate()[1][-3000:]}"
            assert time.monotonic() < deadline, "no trial finished in time"
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
        left = wait_gone(mark, RAY_EXIT_S, [proc.pid])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _kill(started(mark, [proc.pid]))
    assert proc.returncode == 130, stderr[-3000:]
    assert "sweep interrupted; continue it with" in stderr and "--experiment term --resume" in stderr
    assert "Tuner.restore" not in stderr  # Ray's own hint, for its Python API: one way to resume is said, ours
    assert not left, describe(left)
    uri = run_paths.tracking_uri
    parent = tracking.latest_parent_run(uri, tracking.find_experiment(uri, "term").experiment_id)
    assert parent.data.tags[tracking.STATUS_TAG] == "interrupted"
