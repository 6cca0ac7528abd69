"""Real sweeps on a real local Ray, a real SQLite MLflow store and a real Optuna study."""
from __future__ import annotations

import argparse
import getpass
import math
import os
import re
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from ray.exceptions import RayTaskError
from ray.tune import TuneError

from models.checkpoint import load_checkpoint
from tuner import tracking
from tuner.cli import CliError, build_parser
from tuner.promote import best_of_history
from tuner.searcher import RAY_TRIAL_ATTR
from tuner.settings import RunPaths
from tuner.sweep import (TRIAL_STATUSES, SweepConfig, describe_error, format_summary, run_sweep, sampler_seed,
                         startup_trials, sweep_config_from_args, trial_device)


def _cfg(space, scenes, **kw) -> SweepConfig:
    base = dict(space=space, data=str(scenes), samples=6, max_epochs=2, grace_epochs=1, reduction_factor=2,
                concurrency=2, cpus_per_trial=1.0, seed=0, experiment="test", device="cpu")
    return SweepConfig(**{**base, **kw})


def _children(paths: RunPaths, result) -> list:
    return tracking.child_runs(paths.tracking_uri, result.experiment_id, result.parent_run_id)


def _study(paths: RunPaths, name: str):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{paths.optuna_db}")


# -- flags and early failures (no Ray) ---------------------------------------------------------------

def _args(*flags) -> argparse.Namespace:
    return build_parser().parse_args(["tune", *flags])


def test_flags_become_a_sweep_config():
    cfg = sweep_config_from_args(_args("--space", "smoke", "--samples", "3", "--no-asha", "--objective",
                                       "val_rock_miou", "--image-size", "64x96", "--gpus-per-trial", "0.5"))
    assert (cfg.space, cfg.samples, cfg.use_asha, cfg.objective, cfg.image_size, cfg.gpus_per_trial) == \
        ("smoke", 3, False, "val_rock_miou", (64, 96), 0.5)
    assert cfg.time_budget_s is None  # no limit unless asked
    assert [sweep_config_from_args(_args("--time-budget", t)).time_budget_s for t in ("90", "45s", "30m", "1h30m")] \
        == [90, 45, 1800, 5400]


@pytest.mark.parametrize("budget", ["0", "-5m", "30 minutes", "1h30", "m"])
def test_a_bad_time_budget_is_a_usage_error_naming_the_forms(budget, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _args(f"--time-budget={budget}")
    assert exit_info.value.code == 2
    assert "argument --time-budget: expected a duration" in capsys.readouterr().err


def test_tpe_starts_modelling_after_a_third_of_the_samples_not_after_optunas_ten():
    """Optuna's default n_startup_trials (10) made the default 8-trial sweep a random search."""
    assert [startup_trials(SweepConfig(samples=n)) for n in (1, 6, 8, 12, 30, 100)] == [2, 2, 2, 4, 10, 10]
    assert startup_trials(sweep_config_from_args(_args("--startup-trials", "5"))) == 5


@pytest.mark.parametrize("flags, says", [
    (["--samples", "0"], "--samples=0: expected an integer >= 1"),
    (["--grace-epochs", "5", "--max-epochs", "4"], "--grace-epochs=5"),
    (["--reduction-factor", "1"], "--reduction-factor=1"),
    (["--experiment", "a/b"], "--experiment='a/b'"),
    (["--device", "cuda:1"], "--device='cuda:1': expected auto or cpu when --gpus-per-trial is 0"),
    (["--device", "cuda:1", "--gpus-per-trial", "0.5"], "--device='cuda:1': expected auto, cpu, cuda or cuda:N "
                                                         "with N < 1: a trial sees only the GPUs Ray gives it"),
    # else Ray would start and every trial fail three times on it
    (["--device", "gpu", "--gpus-per-trial", "1"], "--device='gpu': expected auto, cpu, cuda or cuda:N$"),
    (["--device", "mps"], "--device='mps': expected auto, cpu, cuda or cuda:N$"),
    (["--gpus-per-trial", "nan"], "--gpus-per-trial=nan: expected a number >= 0"),  # was a ValueError traceback
    (["--gpus-per-trial", "inf"], "--gpus-per-trial=inf: expected a number >= 0"),
    (["--cpus-per-trial", "nan"], "--cpus-per-trial=nan: expected a number > 0"),
    (["--num-workers", "-1"], "--num-workers=-1: expected an integer >= 0"),
    (["--startup-trials", "0"], "--startup-trials=0: expected an integer >= 1"),
    (["--seed", "-1"], r"--seed=-1: expected an integer in \[0, 2\*\*32\)"),  # was Optuna's traceback, after a parent run
])
def test_bad_flags_are_clear_errors(flags, says):
    with pytest.raises(CliError, match=says):
        sweep_config_from_args(_args(*flags))


def test_a_trial_uses_a_gpu_only_when_ray_gives_it_one():
    """With no GPU per trial, "auto" means the CPU even on a GPU machine: Ray may leave the GPUs visible."""
    assert trial_device(sweep_config_from_args(_args())) == "cpu"
    assert trial_device(sweep_config_from_args(_args("--gpus-per-trial", "0.25"))) == "cuda"
    assert trial_device(sweep_config_from_args(_args("--gpus-per-trial", "1", "--device", "cpu"))) == "cpu"


def test_unreachable_tracking_server_fails_before_any_trial(scenes, tmp_path):
    paths = RunPaths(root=tmp_path / "run", tracking_uri_override="http://127.0.0.1:9")
    with pytest.raises(tracking.TrackingError, match="127.0.0.1:9 is not reachable"):
        run_sweep(_cfg("smoke", scenes), paths)
    assert not paths.root.exists()  # refused before the run dir's folders and lock file are made


def test_a_bad_space_fails_before_anything_starts(scenes, tmp_path, run_paths):
    bad = tmp_path / "bad.yaml"
    bad.write_text("params:\n  lr: {low: 0.1, high: 0.01}\n")
    with pytest.raises(ValueError, match=f"{bad}: params.lr: low"):
        run_sweep(_cfg(str(bad), scenes), run_paths)
    with pytest.raises(CliError, match="--space: search space 'nope'"):
        run_sweep(_cfg("nope", scenes), run_paths)
    # what the models refuse, and a missing data folder, made the run dir's folders and lock file first
    with pytest.raises(ValueError, match=r"--image-size 48x48 does not fit every configuration of .*smoke.yaml"):
        run_sweep(_cfg("smoke", scenes, image_size=(48, 48)), run_paths)
    with pytest.raises(CliError, match=f"--data {tmp_path / 'nope'}: no such folder"):
        run_sweep(_cfg("smoke", str(tmp_path / "nope")), run_paths)
    assert not run_paths.root.exists()  # not even the run dir's folders and lock file


def test_what_ray_would_wait_on_forever_is_refused_before_anything_starts(scenes, tmp_path, run_paths):
    """An --address nobody answers at (ray.init retried for minutes), GPUs this machine lacks (every trial
    PENDING for good) and a --storage that is a file (a traceback after the parent run was made)."""
    import socket
    import torch

    with socket.socket() as closed:  # a port that was free a moment ago: nothing listens there
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    with pytest.raises(CliError, match=f"--address 127.0.0.1:{port}: nothing answers there"):
        run_sweep(_cfg("smoke", scenes, address=f"127.0.0.1:{port}"), run_paths)
    if torch.cuda.device_count() == 0:
        with pytest.raises(CliError, match="--gpus-per-trial 0.5: this machine has 0 GPU"):
            run_sweep(_cfg("smoke", scenes, gpus_per_trial=0.5), run_paths)
    (tmp_path / "afile").write_text("")
    with pytest.raises(CliError, match=f"--storage {tmp_path}/afile/x: {tmp_path}/afile is a file, not a folder"):
        run_sweep(_cfg("smoke", scenes, storage=str(tmp_path / "afile" / "x")), run_paths)
    assert not run_paths.root.exists()


def test_resume_without_a_started_sweep_is_a_clear_error(scenes, run_paths):
    with pytest.raises(CliError, match="--resume: no sweep of experiment 'test'"):
        run_sweep(_cfg("smoke", scenes, resume=True), run_paths)
    assert not run_paths.root.exists()  # the run dir's folders and lock were made first


def test_resume_rejoins_the_sweeps_cluster_and_checks_it_answers_first(scenes, tmp_path):
    """The printed resume command has no --address: it resumed a cluster sweep on a private local Ray (one
    needing GPUs then waited forever); and --resume skipped the checks a new sweep gets (a dead address hung)."""
    import json
    import socket
    from dataclasses import asdict

    with socket.socket() as closed:  # a port that was free a moment ago: nothing listens there
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    run_paths = RunPaths(root=tmp_path / "run")
    pointer = run_paths.root / "sweeps" / "test.json"
    pointer.parent.mkdir(parents=True)
    started = _cfg("smoke", scenes, address=f"127.0.0.1:{port}")
    pointer.write_text(json.dumps({"config": asdict(started), "parent_run_id": "p", "results_path": "r"}))
    before = sorted(p.name for p in run_paths.root.rglob("*"))
    # the sweep's own address, checked; named as the sweep's, since the user typed no --address
    with pytest.raises(CliError, match=f"^--resume: the sweep's cluster at 127.0.0.1:{port} .its --address when "
                                       f"started.: nothing answers there .*; or resume the sweep elsewhere: "
                                       f"--address host:port, or --address local for a private local Ray$"):
        run_sweep(SweepConfig(experiment="test", resume=True), run_paths)
    assert sorted(p.name for p in run_paths.root.rglob("*")) == before  # no lock, no MLflow store
    with pytest.raises(CliError, match=r"^--address 127.0.0.1:1: nothing answers there .*\(host:6379\)$"):
        run_sweep(SweepConfig(experiment="test", resume=True, address="127.0.0.1:1"), run_paths)  # or the one given
    with pytest.raises(CliError, match="--resume: the sweep's parent run p is not in the MLflow store"):
        run_sweep(SweepConfig(experiment="test", resume=True, address="local"), run_paths)  # past it: no cluster
    with pytest.raises(CliError, match="--time-budget: a resumed sweep goes on with what is left of the budget"):
        run_sweep(SweepConfig(experiment="test", resume=True, time_budget_s=60.0), run_paths)
    # other flags that differ from the sweep's were ignored without a word (--samples 5 ran its 6 trials)
    with pytest.raises(CliError, match=r"^--resume runs the sweep as it was started; leave out --space vgg11 \(started "
                                       r"with --space smoke\), --samples 5 \(started with --samples 6\), --no-asha "
                                       r"\(started with ASHA\) \(a new sweep"):
        run_sweep(SweepConfig(experiment="test", resume=True, samples=5, use_asha=False, space="vgg11"), run_paths)
    run_sweep_args = SweepConfig(experiment="test", resume=True, samples=6, device="cpu", address="127.0.0.1:1")
    with pytest.raises(CliError, match="--address 127.0.0.1:1: nothing answers there"):
        run_sweep(run_sweep_args, run_paths)  # the sweep's own values given again: fine


def test_resume_of_a_finished_sweep_says_there_is_nothing_to_resume(scenes, tmp_path):
    """It used to rerun Ray on the finished sweep and reprint its summary; a finished sweep whose MLflow is
    incomplete is still resumed (that fills MLflow in), as is one with errored trials (not `finished`)."""
    import json
    from dataclasses import asdict

    run_paths = RunPaths(root=tmp_path / "run")
    pointer = run_paths.root / "sweeps" / "test.json"
    pointer.parent.mkdir(parents=True)
    state = {"config": asdict(_cfg("smoke", scenes)), "parent_run_id": "p", "results_path": "r", "finished": True}
    pointer.write_text(json.dumps(state))
    with pytest.raises(CliError, match="^--resume: the latest sweep of experiment 'test' finished .every trial ended, "
                                       "none errored, MLflow complete.: nothing is left to resume"):
        run_sweep(SweepConfig(experiment="test", resume=True), run_paths)
    for other in ({"finished": False}, {"mlflow_incomplete": ["child run x (ConnectionError)"]}):
        pointer.write_text(json.dumps({**state, **other}))
        with pytest.raises(CliError, match="--resume: the sweep's parent run p is not in the MLflow store"):
            run_sweep(SweepConfig(experiment="test", resume=True), run_paths)  # past the check


def test_an_address_ray_cannot_join_is_one_line_before_anything_is_written(tmp_path):
    """ray.init's failures (here: no port number) were a traceback after the sweep's parent run was made."""
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "tuner.cli", "--run-dir", str(run), "tune", "--space", "smoke",
                           "--synthetic-count", "8", "--address", "127.0.0.1:bogus"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "lunartune tune: error: --address 127.0.0.1:bogus: could not join a Ray cluster there (ValueError: ")
    assert not run.exists()


def test_the_summary_aligns_trial_names_and_shows_the_config_short(tmp_path):
    from tuner.sweep import SweepResult, format_summary

    result = SweepResult(
        experiment="e", experiment_id="1", parent_run_id="p", tracking_uri="sqlite:///x.db", results_path="r",
        interrupted=False, statuses={"completed": 2},
        best_config={"backbone": "vgg11", "lr": 0.007768811685516966, "optimizer": "adam", "momentum": 0.9,
                     "scratch_width": 8, "loss": "ce", "focal_gamma": 2.0},
        best_metrics={}, best_run_id="b",
        top_trials=[{"trial": "vgg11-t002", "backbone": "vgg11", "objective": 0.5, "epochs": 2, "status": "completed"},
                    {"trial": "unet_scratch-t004", "backbone": "unet_scratch", "objective": 0.4, "epochs": 2,
                     "status": "completed"}])
    lines = format_summary(result, SweepConfig(), RunPaths(root=tmp_path)).splitlines()
    rows = [line for line in lines if "-t00" in line]
    assert [row.index("val_miou") for row in rows] == [len("  unet_scratch-t004  ")] * 2
    config = next(line for line in lines if line.startswith("best config:"))
    # rounded, and without what adam and CE ignore (momentum, focal_gamma) or vgg11 (scratch_width)
    assert config == "best config: backbone=vgg11, loss=ce, lr=0.007769, optimizer=adam"
    # a resumed sweep is summarised by its own config, not by the defaults of the flags `--resume` came with
    started = SweepConfig(objective="val_rock_miou", samples=4, time_budget_s=1800.0)
    resumed = format_summary(replace(result, budget_spent=True, config=started), SweepConfig(resume=True),
                             RunPaths(root=tmp_path))
    assert "top trials by val_rock_miou" in resumed and "time budget 30m spent" in resumed
    assert "2 of 4 never started" in resumed
    # a trial stopped before its first epoch ended has no score: said so, not "nan"
    unscored = {"trial": "vgg11-t005", "backbone": "vgg11", "objective": float("nan"), "epochs": 0,
                "status": "unfinished"}
    cut = format_summary(replace(result, top_trials=[*result.top_trials, unscored]), SweepConfig(),
                         RunPaths(root=tmp_path))
    assert "  vgg11-t005         val_miou n/a  epochs 0  unfinished" in cut.splitlines()


def test_the_live_table_survives_a_finished_trial_without_the_best_metric(local_ray, tmp_path, capsys):
    """Ray sorts finished trials by the reporter's metric; a trial without it (a diverged one did not report
    best_<objective>, and a trial resumed from an older lunartune's results may not) crashed the sweep."""
    from ray import tune

    from tuner.sweep import BestEpochReporter, _ray_output_settings

    def trainable(config):
        if config["x"] > 0.5:  # x0.2 (no best_val_miou) ends first: tables are drawn with it finished
            time.sleep(3)
        tune.report({"val_miou": config["x"], **({"best_val_miou": config["x"]} if config["x"] > 0.5 else {})})

    reporter = BestEpochReporter(metric_columns={"val_miou": "val_miou", "best_val_miou": "best"},
                                 parameter_columns=["x"], metric="best_val_miou", mode="max", sort_by_metric=True,
                                 max_report_frequency=1, results_path=str(tmp_path / "trainable"))
    with _ray_output_settings():  # the output engine that draws CLIReporter's table, as the sweep runs it
        results = tune.Tuner(trainable, param_space={"x": tune.grid_search([0.2, 0.9, 0.7])},
                             tune_config=tune.TuneConfig(metric="val_miou", mode="max",
                                                         trial_name_creator=lambda trial: f"x{trial.config['x']}"),
                             run_config=tune.RunConfig(storage_path=str(tmp_path), progress_reporter=reporter,
                                                       verbose=1)).fit()
    assert not results.errors and len(results) == 3
    out = capsys.readouterr().out
    # drawn with a trial finished (whether the final table with all three is drawn depends on timing: a CI
    # run under load once showed two)
    assert "TERMINATED" in out and "Current best trial" in out
    # the best trial by its name in the table, not by a Ray id shown nowhere else
    best_lines = [line for line in out.splitlines() if line.startswith("Current best trial: ")]
    assert all(re.fullmatch(r"Current best trial: x0\.([79]) with best_val_miou=0\.\1 \(x=0\.\1\)", line)
               for line in best_lines), best_lines
    # (whether Ray draws the table itself depends on its global verbosity, which other tests of a session move)
    assert reporter._restated("Result logdir: /tmp/ray/session_x/artifacts/driver_artifacts", []) == \
        f"Ray results: {tmp_path / 'trainable'}"


def test_a_live_table_reporter_pickled_by_an_older_lunartune_still_draws():
    """--resume unpickles the reporter saved with the sweep (Ray's tuner.pkl): one saved before results_path
    existed has no such attribute, and every table update raised AttributeError."""
    import pickle

    from tuner.sweep import BestEpochReporter

    reporter = BestEpochReporter(metric="best_val_miou", mode="max", results_path="/runs/ray/x")
    del reporter.__dict__["_results_path"]  # as an older lunartune pickled it
    old = pickle.loads(pickle.dumps(reporter))
    assert old._restated("Result logdir: /tmp/ray/session_x/driver_artifacts", []) == \
        "Result logdir: /tmp/ray/session_x/driver_artifacts"


def test_an_errored_trial_is_described_by_its_root_cause_on_one_line():
    full = OSError(28, "No space left on device")
    wrapped = RayTaskError("train", "Traceback (most recent call last):\n  ...", full).as_instanceof_cause()
    assert describe_error(wrapped) == "OSError: [Errno 28] No space left on device"
    error_txt = ("Failure # 1 (occurred at 2026-11-29_19-11-02)\nray::ImplicitFunc.train() (pid=9, ip=127.0.0.1)\n"
                 '  File "trainable.py", line 95, in train_trial\nOSError: [Errno 28] No space left on device\n')
    assert describe_error(TuneError(error_txt)) == "OSError: [Errno 28] No space left on device"
    assert describe_error(ValueError("first line\nsecond")) == "ValueError: first line"
    assert describe_error(None) == "unknown error (Ray saved none)"


# -- real sweeps --------------------------------------------------------------------------------------

def test_diverged_trial_ends_as_diverged_not_as_a_crash(local_ray, scenes, tmp_path):
    space = tmp_path / "diverge.yaml"  # SGD at lr ~1e37 overflows float32 logits on the 2nd batch
    space.write_text("params:\n  lr: {low: 1.0e+36, high: 1.0e+37, log: true}\n"
                     "fixed: {backbone: unet_scratch, optimizer: sgd, scratch_width: 4, scratch_depth: 3}\n")
    (tmp_path / "store").mkdir()  # and an SQLite store outside the run dir: its artifacts go beside it
    run_paths = RunPaths(root=tmp_path / "run", tracking_uri_override=f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    ray_output = {k: v for k, v in os.environ.items() if k.startswith(("RAY_AIR_", "TUNE_WARN_"))}
    result = run_sweep(_cfg(str(space), scenes, samples=1, concurrency=1, experiment="nan"), run_paths)
    # Ray's output settings are the sweep's only, not the rest of the process's
    assert {k: v for k, v in os.environ.items() if k.startswith(("RAY_AIR_", "TUNE_WARN_"))} == ray_output
    location = tracking.client(run_paths.tracking_uri).get_experiment(result.experiment_id).artifact_location
    assert location == (tmp_path / "store" / "mlartifacts").as_uri()  # not ./mlruns wherever tune ran
    assert result.statuses == {"diverged": 1} and not result.interrupted
    (run,) = _children(run_paths, result)
    assert run.data.tags[tracking.STATUS_TAG] == "diverged" and run.info.status == "FAILED"
    (trial,) = _study(run_paths, "nan").trials
    assert trial.state == TrialState.PRUNED and trial.user_attrs["lunartune_status"] == "diverged"


def test_asha_stops_a_trial_that_trails_the_rung(local_ray, scenes, tmp_path, run_paths):
    """One trial at a time: the second (lr 1e-9, learns nothing) reaches the first rung behind the first
    (lr 3e-2: val mIoU 0.34 vs 0.15 after one epoch; at 1e-3 the two were too close to call on some generated
    scenes), so ASHA (reduction factor 2, grace 1 epoch) stops it there; the first runs to max_epochs."""
    space = tmp_path / "asha.yaml"
    space.write_text("params:\n  lr: {low: 1.0e-9, high: 3.0e-2, log: true}\n"
                     "fixed: {backbone: unet_scratch, optimizer: adam, scratch_width: 8, scratch_depth: 3}\n"
                     "points_to_evaluate:\n  - {lr: 3.0e-2}\n  - {lr: 1.0e-9}\n")
    result = run_sweep(_cfg(str(space), scenes, samples=2, concurrency=1, experiment="asha"), run_paths)
    assert result.statuses == {"completed": 1, "pruned": 1}
    epochs = {}
    for run in _children(run_paths, result):
        history = tracking.client(run_paths.tracking_uri).get_metric_history(run.info.run_id, "val_miou")
        epochs[(float(run.data.params["lr"]), run.data.tags[tracking.STATUS_TAG])] = len(history)
    assert epochs == {(3e-2, "completed"): 2, (1e-9, "pruned"): 1}
    states = {t.params["lr"]: t.state for t in _study(run_paths, "asha").trials}
    assert states == {3e-2: TrialState.COMPLETE, 1e-9: TrialState.PRUNED}


@pytest.mark.slow
def test_a_second_sweep_with_the_same_seed_proposes_new_trials(local_ray, scenes, tmp_path, run_paths):
    """Seeded with --seed alone, a study's second sweep drew the same random start-up trials as its first
    and trained them again to the same scores; its sampler's seed now mixes in the study's trial count."""
    space = tmp_path / "two.yaml"
    space.write_text("params:\n  lr: {low: 1.0e-4, high: 3.0e-2, log: true}\n"
                     "fixed: {backbone: unet_scratch, optimizer: adam, scratch_width: 8, scratch_depth: 3}\n")
    cfg = _cfg(str(space), scenes, samples=2, max_epochs=1, grace_epochs=1, concurrency=1, experiment="again")
    first, second = run_sweep(cfg, run_paths), run_sweep(cfg, run_paths)
    lrs = [t.params["lr"] for t in _study(run_paths, "again").trials]
    assert len(lrs) == 4 and not set(lrs[:2]) & set(lrs[2:]), lrs
    seeds = [tracking.client(run_paths.tracking_uri).get_run(r.parent_run_id).data.params["sampler_seed"]
             for r in (first, second)]
    assert seeds == ["0", str(sampler_seed(0, 2))] and sampler_seed(0, 2) != 0
    assert sampler_seed(0, 6) != sampler_seed(6, 0) == 6  # (seed, trials) pairs do not collide


@pytest.mark.slow
def test_smoke_sweep_end_to_end(local_ray, scenes, tmp_path, run_paths):
    result = run_sweep(_cfg("smoke", scenes, experiment="e2e"), run_paths)
    assert not result.interrupted and sum(result.statuses.values()) == 6
    # which trials ASHA stops depends on the data and on which of two parallel trials reports first:
    # test_asha_stops_a_trial_that_trails_the_rung pins that down
    assert set(result.statuses) <= {"completed", "pruned"}, (result.statuses, result.errors)

    parent = tracking.client(run_paths.tracking_uri).get_run(result.parent_run_id)
    assert parent.data.params["space_file"].endswith("smoke.yaml") and parent.data.params["seed"] == "0"
    assert parent.data.params["startup_trials"] == "2"  # 6 samples: TPE models the study from the third trial
    assert parent.data.params["image_size"] == "64x64"  # as each trial logs it (was "(64, 64)")
    assert parent.data.params["manifest_hash"] and parent.data.tags[tracking.STATUS_TAG] == "finished"
    assert parent.data.tags["git_commit"] and parent.data.tags["space"] == "smoke.yaml"
    # MLflow's own source tags (the UI's User, Source and Version columns), on the parent and every trial
    source = {"mlflow.source.name": "lunartune tune", "mlflow.source.type": "LOCAL",
              "mlflow.source.git.commit": parent.data.tags["git_commit"], "mlflow.user": getpass.getuser()}
    assert [a.path for a in tracking.client(run_paths.tracking_uri).list_artifacts(parent.info.run_id, "space")] \
        == ["space/smoke.yaml"]
    assert {s: parent.data.metrics[f"trials_{s}"] for s in TRIAL_STATUSES} \
        == {s: result.statuses.get(s, 0) for s in TRIAL_STATUSES}  # statuses no trial has are 0, not absent
    trials = [p.parent for p in Path(result.results_path).glob("*/result.json")]
    assert len(trials) == 6
    for trial in trials:  # every epoch reports a checkpoint; with 2 epochs at most, Ray keeps all of them
        epochs = len((trial / "result.json").read_text().splitlines())
        assert len(list(trial.glob("checkpoint_*"))) == epochs >= 1, trial
    children = _children(run_paths, result)
    assert len(children) == 6
    assert all(run.data.tags.items() >= source.items() for run in (parent, *children))
    by_status = {}
    for run in children:
        history = tracking.client(run_paths.tracking_uri).get_metric_history(run.info.run_id, "val_miou")
        epochs = 2 if run.data.tags[tracking.STATUS_TAG] == "completed" else 1
        assert [m.step for m in history] == list(range(1, epochs + 1)), run.info.run_name
        assert {"train_loss", "val_loss", "val_rock_miou", "val_iou_small_rocks", "lr", "epoch_seconds"} \
            <= set(run.data.metrics)
        assert run.info.run_name.startswith(run.data.tags[tracking.BACKBONE_TAG] + "-t")
        assert run.data.tags["device"] == "cpu", "no GPU per trial: Ray hides every GPU from the trial"
        # best so far, each epoch: the UI sorts runs by it (val_miou's latest value may be below its best)
        best, best_epochs = (tracking.client(run_paths.tracking_uri).get_metric_history(run.info.run_id, name)
                             for name in ("best_val_miou", "best_epoch"))
        assert [m.step for m in best] == [m.step for m in history]
        assert [m.value for m in best] == pytest.approx([max(h.value for h in history[:i + 1])
                                                         for i in range(len(history))])
        assert [m.value for m in best_epochs] == [
            max(history[:i + 1], key=lambda h: (h.value, -h.step)).step for i in range(len(history))]
        ckpt = load_checkpoint(tracking.download_checkpoint(run_paths.tracking_uri, run.info.run_id, tmp_path / run.info.run_id))
        assert ckpt["model_config"]["backbone"] == run.data.tags[tracking.BACKBONE_TAG]
        assert ckpt["metrics"]["val_miou"] == pytest.approx(max(m.value for m in history))
        by_status[run.data.tags[tracking.STATUS_TAG]] = by_status.get(run.data.tags[tracking.STATUS_TAG], 0) + 1
    assert by_status == result.statuses
    # the summary names trials as Ray's live table and MLflow do, not by Ray's trial id
    assert result.top_trials and {row["trial"] for row in result.top_trials} <= {run.info.run_name for run in children}

    states = [t.state for t in _study(run_paths, "e2e").trials]
    assert states.count(TrialState.PRUNED) == by_status.get("pruned", 0)
    assert states.count(TrialState.COMPLETE) == by_status.get("completed", 0)
    # each Optuna trial names its Ray trial and MLflow run; each run its Optuna trial number
    study_trials = _study(run_paths, "e2e").trials
    assert sorted((t.number, t.user_attrs["ray_trial_id"], t.user_attrs["mlflow_run_id"]) for t in study_trials) \
        == sorted((int(run.data.tags["optuna_trial_number"]), run.data.tags[tracking.TRIAL_ID_TAG], run.info.run_id)
                  for run in children)
    # Optuna ranks finished trials by their best epoch, as promote and MLflow's best_val_miou do
    told = sorted(t.value for t in _study(run_paths, "e2e").trials if t.state == TrialState.COMPLETE)
    assert told == pytest.approx(sorted(run.data.metrics["best_val_miou"] for run in children
                                        if run.data.tags[tracking.STATUS_TAG] == "completed"))

    # the best trial is the same in Ray's results and in MLflow, by each trial's best epoch (as promote picks)
    client = tracking.client(run_paths.tracking_uri)
    best_in_mlflow = max(children, key=lambda run: best_of_history(client, run.info.run_id, "val_miou")[0])
    assert best_in_mlflow.info.run_id == result.best_run_id
    history = tracking.client(run_paths.tracking_uri).get_metric_history(result.best_run_id, "val_miou")
    assert max(m.value for m in history) == pytest.approx(result.best_metrics["val_miou"])
    assert math.isfinite(result.best_metrics["val_miou"]) and result.best_config["backbone"] in ("unet_scratch", "vgg11")

    # a new sweep of this experiment continues its study only for comparable scores: refused before a parent run
    parents = tracking.client(run_paths.tracking_uri).search_runs([result.experiment_id])
    with pytest.raises(CliError, match=r"another problem \(--image-size '64x64' then, '96x96' now\)"):
        run_sweep(_cfg("smoke", scenes, experiment="e2e", image_size=(96, 96)), run_paths)
    with pytest.raises(CliError, match="--max-epochs 2 then, 3 now"):
        run_sweep(_cfg("smoke", scenes, experiment="e2e", max_epochs=3), run_paths)
    with pytest.raises(CliError, match="different search space or objective"):
        run_sweep(_cfg("smoke", scenes, experiment="e2e", objective="val_rock_miou"), run_paths)
    assert len(tracking.client(run_paths.tracking_uri).search_runs([result.experiment_id])) == len(parents)


def test_a_new_sweep_ends_the_killed_sweep_whose_pointer_it_replaces(tmp_path, capsys):
    """A sweep SIGKILLed and never resumed, then a new sweep of the experiment: the new pointer made the old
    one unresumable, and its parent and unfinished trials stayed RUNNING in MLflow for good (promote then
    counts the sweep as running). The new sweep's driver ends them, keeping every logged epoch."""
    import json

    from tuner.sweep import _end_abandoned_sweep, _pointer_path

    paths = RunPaths(root=tmp_path / "run").ensure()
    uri = paths.tracking_uri
    experiment = tracking.get_or_create_experiment(uri, "e", None)
    parent = tracking.start_parent_run(uri, experiment, "e-killed", {}, {})
    target = tracking.TrackingTarget(uri, experiment, parent)
    done = tracking.open_child_run(target, "t1", "vgg11-t1", {}, {})
    tracking.finish_child_run(uri, done, tracking.COMPLETED)
    cut = tracking.open_child_run(target, "t2", "vgg11-t2", {}, {})
    tracking.log_metrics(uri, cut, {"val_miou": 0.4}, step=1)
    pointer = _pointer_path(paths, "e")
    pointer.parent.mkdir(parents=True, exist_ok=True)
    pointer.write_text(json.dumps({"parent_run_id": parent, "tracking_uri_override": None}))
    study = optuna.create_study(study_name="e", storage=f"sqlite:///{paths.optuna_db}")
    for trial_id in ("t0", "t2"):  # the killed driver had asked Optuna for both
        study.ask().set_user_attr(RAY_TRIAL_ATTR, trial_id)

    _end_abandoned_sweep(paths, pointer)
    client = tracking.client(uri)
    runs = {run_id: client.get_run(run_id) for run_id in (parent, done, cut)}
    assert (runs[parent].info.status, runs[parent].data.tags[tracking.STATUS_TAG]) == ("KILLED", "interrupted")
    assert (runs[done].info.status, runs[done].data.tags[tracking.STATUS_TAG]) == ("FINISHED", "completed")
    assert (runs[cut].info.status, runs[cut].data.tags[tracking.STATUS_TAG]) == ("KILLED", tracking.UNFINISHED)
    assert runs[cut].data.tags[tracking.OPTUNA_TRIAL_TAG] == "1"  # as a sweep that ended tags its trials
    assert [m.value for m in client.get_metric_history(cut, "val_miou")] == [0.4]
    assert "sweep e-killed of this experiment was killed and never resumed" in capsys.readouterr().err
    _end_abandoned_sweep(paths, pointer)  # nothing left running: left as it is, silently
    assert capsys.readouterr().err == ""


def test_a_new_sweep_ends_the_trials_of_an_interrupted_sweep_it_replaces(tmp_path, capsys):
    """Ctrl-C leaves the parent interrupted and its unfinished trials running, for --resume; a new sweep
    instead replaces the pointer, and those trials would show running for good."""
    import json

    from tuner.sweep import _end_abandoned_sweep, _pointer_path

    paths = RunPaths(root=tmp_path / "run").ensure()
    uri = paths.tracking_uri
    experiment = tracking.get_or_create_experiment(uri, "e", None)
    parent = tracking.start_parent_run(uri, experiment, "e-stopped", {}, {})
    cut = tracking.open_child_run(tracking.TrackingTarget(uri, experiment, parent), "t1", "vgg11-t1", {}, {})
    tracking.end_parent_run(uri, parent, interrupted=True, summary={})
    pointer = _pointer_path(paths, "e")
    pointer.parent.mkdir(parents=True, exist_ok=True)
    pointer.write_text(json.dumps({"parent_run_id": parent, "tracking_uri_override": None}))
    _end_abandoned_sweep(paths, pointer)
    assert tracking.client(uri).get_run(cut).data.tags[tracking.STATUS_TAG] == tracking.UNFINISHED
    assert "sweep e-stopped of this experiment was interrupted and never resumed" in capsys.readouterr().err
    finished = tracking.start_parent_run(uri, experiment, "e-done", {}, {})
    tracking.end_parent_run(uri, finished, interrupted=False, summary={})
    pointer.write_text(json.dumps({"parent_run_id": finished, "tracking_uri_override": None}))
    _end_abandoned_sweep(paths, pointer)  # a finished sweep: nothing to say
    assert capsys.readouterr().err == ""


def test_a_time_budget_ends_the_sweep_and_the_trial_then_running_ends_unfinished(local_ray, scenes, tiny_space,
                                                                                   run_paths):
    """--time-budget: Ray stops the sweep; the trial then running ends unfinished (in the summary and MLflow,
    with the epochs it trained), the samples not started never start, and the sweep is finished, not
    interrupted: nothing to resume, and --resume says so."""
    cfg = _cfg(tiny_space, scenes, samples=4, concurrency=1, max_epochs=1000, use_asha=False, time_budget_s=30.0,
               experiment="budget")
    result = run_sweep(cfg, run_paths)
    assert result.budget_spent and not result.interrupted
    assert result.statuses == {"unfinished": 1}  # one trial at a time, far from its 1000 epochs
    [run] = _children(run_paths, result)
    mlflow = tracking.client(run_paths.tracking_uri)
    assert (run.data.tags[tracking.STATUS_TAG], run.info.status) == ("unfinished", "KILLED")
    assert len(mlflow.get_metric_history(run.info.run_id, "val_miou")) >= 1  # it trained until the budget ran out
    parent = mlflow.get_run(result.parent_run_id)
    assert (parent.info.status, parent.data.tags[tracking.STATUS_TAG]) == ("FINISHED", "finished")
    assert parent.data.tags[tracking.STOPPED_BY_TAG] == "time_budget" and parent.data.params["time_budget_s"] == "30.0"
    [study_trial] = _study(run_paths, "budget").trials  # Optuna learns from it as from a trial ASHA stopped
    assert study_trial.state == TrialState.PRUNED and len(study_trial.intermediate_values) >= 1
    assert study_trial.user_attrs["lunartune_status"] == "unfinished"  # not one ASHA pruned
    summary = format_summary(result, cfg, run_paths)
    assert "time budget 30s spent: trials then running ended unfinished; 3 of 4 never started" in summary
    with pytest.raises(CliError, match="ended at its time budget .--time-budget 30s.: nothing is left to resume"):
        run_sweep(SweepConfig(experiment="budget", resume=True), run_paths)


def test_the_storage_warning_of_a_cluster_sweep_names_the_real_folder(tmp_path, capsys):
    from tuner.sweep import _warn_about_storage

    _warn_about_storage(SweepConfig(address="127.0.0.1:6379"), RunPaths(root=tmp_path / "run"))
    err = capsys.readouterr().err  # it printed the placeholder "<run-dir>/ray"
    assert f"but Ray results go to the local path {tmp_path / 'run' / 'ray'}. Every node must see" in err
    _warn_about_storage(SweepConfig(address="127.0.0.1:6379", storage="s3://bucket/x"), RunPaths(root=tmp_path))
    assert capsys.readouterr().err == ""
