"""The trainable's edges: Ray's flat dict -> frozen configs, in one function; which checkpoint a trial resumes from;
where it stages a checkpoint before Ray copies it."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pyarrow.fs
import pytest

import data_pipeline
from data_pipeline import DataConfig
from models import ConfigError, ModelConfig, TrainConfig
from models import build
from models.checkpoint import save_checkpoint
from tuner import tracking
from tuner.trainable import (STATE_FILE, CheckpointStaging, ChildRun, TrialSetup, _kept_checkpoints, _newest_readable,
                             configs_from_trial, epoch_metrics)
from tuner.tracking import TrackingTarget

SETUP = TrialSetup(data=DataConfig(root="/data", batch_size=8, augment=True), model=ModelConfig(),
                   train=TrainConfig(epochs=3, seed=7), objective="val_miou",
                   tracking=TrackingTarget("sqlite:///x.db", "1", "parent"))


def test_searched_and_fixed_values_land_in_the_right_configs():
    data, model, train = configs_from_trial(
        {"backbone": "mobilenetv3-large", "dropout": 0.2, "lr": 0.01, "optimizer": "sgd", "momentum": 0.85,
         "batch_size": 4, "augment": False}, SETUP)
    assert (model.backbone, model.dropout) == ("tu-mobilenetv3_large_100", 0.2)  # alias resolved
    assert (train.lr, train.optimizer, train.momentum, train.batch_size, train.epochs, train.seed) == \
        (0.01, "sgd", 0.85, 4, 3, 7)
    assert (data.batch_size, data.augment, data.seed, data.root, data.progress) == (4, False, 7, "/data", False)


def test_absent_conditional_params_keep_the_config_defaults():
    _, _, train = configs_from_trial({"optimizer": "adam"}, SETUP)
    assert train.momentum == TrainConfig().momentum and train.nesterov is False


def test_a_bad_value_names_the_field():
    with pytest.raises(ConfigError, match="TrainConfig.optimizer"):
        configs_from_trial({"optimizer": "lion"}, SETUP)
    with pytest.raises(ConfigError, match="ModelConfig.dropout"):
        configs_from_trial({"dropout": 1.5}, SETUP)


@pytest.mark.parametrize("config, not_applicable", [
    ({"backbone": "vgg11", "optimizer": "adam", "loss": "ce"},
     {"momentum", "nesterov", "focal_gamma", "scratch_width", "scratch_depth"}),
    ({"backbone": "unet_scratch", "optimizer": "sgd", "momentum": 0.85, "loss": "focal"}, {"arch"}),
])
def test_every_run_logs_every_param_name_and_those_its_choices_ignore_as_not_applicable(config, not_applicable):
    """Adam trials logged momentum 0.9 and CE trials focal_gamma 2.0, as if those had been tried."""
    from tuner.trainable import run_params_and_tags

    params, tags = run_params_and_tags(config, SETUP)
    assert set(params) == {*ModelConfig().to_dict(), *TrainConfig().to_dict(), "image_size", "augment"}
    assert {name for name, value in params.items() if value == "n/a"} == not_applicable
    assert params["backbone"] == tags["backbone"] == config["backbone"]
    if config["optimizer"] == "sgd":
        assert params["momentum"] == 0.85 and params["focal_gamma"] == 2.0


def test_epoch_metrics_names():
    metrics = epoch_metrics({"loss": 1.0, "lr": 0.1, "seconds": 2.0},
                            {"loss": 0.5, "miou": 0.4, "rock_miou": 0.2, "iou_sky": 0.9}, epoch=2)
    assert metrics == {"train_loss": 1.0, "lr": 0.1, "epoch_seconds": 2.0, "epoch": 2, "val_loss": 0.5,
                       "val_miou": 0.4, "val_rock_miou": 0.2, "val_iou_sky": 0.9}


NORMALIZATION = {"mean": data_pipeline.IMAGENET_MEAN, "std": data_pipeline.IMAGENET_STD}


def _trial_folder(tmp_path: Path, written: dict[str, int | None]) -> Path:
    """checkpoint_* folders whose state file holds `epoch` = the folder's order of writing (None: no file,
    as a copy cut short), each state file's mtime = that order."""
    cfg = ModelConfig(backbone="unet_scratch", scratch_width=4, scratch_depth=2)
    model = build(cfg)
    for name, order in written.items():
        (tmp_path / name).mkdir()
        if order is not None:
            path = save_checkpoint(tmp_path / name / STATE_FILE, model, cfg, TrainConfig(),
                                   classes=data_pipeline.class_table(), image_size=(32, 32),
                                   normalization=NORMALIZATION, epoch=order, metrics={},
                                   extra={"best": 0.0, "run_id": "r"})
            os.utime(path, ns=(order * 10**9, order * 10**9))
    return tmp_path


def _storage(trial_dir: Path):
    return SimpleNamespace(storage_filesystem=pyarrow.fs.LocalFileSystem(), trial_fs_path=str(trial_dir))


def test_a_trial_resumes_from_its_newest_state_not_only_from_the_checkpoint_ray_registered(tmp_path):
    # Ray registered checkpoint_000000; checkpoint_000001 was persisted by a node that died before Ray's
    # save step; a restored trial later wrote a newer epoch into checkpoint_000000 again; 3 is a cut copy
    from ray import tune

    trial = _trial_folder(tmp_path, {"checkpoint_000000": 3, "checkpoint_000001": 2, "checkpoint_000002": 1,
                                     "checkpoint_000003": None, "other": 5})
    registered = tune.Checkpoint(str(trial / "checkpoint_000002"))
    order = [Path(c.path).name for c in _kept_checkpoints(registered, _storage(trial))]
    assert order == ["checkpoint_000000", "checkpoint_000001", "checkpoint_000002"]
    assert _newest_readable(_kept_checkpoints(None, _storage(trial)))["epoch"] == 3  # also when Ray has none


def test_an_unreadable_newest_state_falls_back_with_a_warning_and_none_is_a_quiet_fresh_start(tmp_path, capsys):
    trial = _trial_folder(tmp_path, {"checkpoint_000000": 1, "checkpoint_000001": 2})
    (trial / "checkpoint_000001" / STATE_FILE).write_bytes(b"cut short")
    os.utime(trial / "checkpoint_000001" / STATE_FILE, ns=(9 * 10**9, 9 * 10**9))
    assert _newest_readable(_kept_checkpoints(None, _storage(trial)))["epoch"] == 1
    assert f"cannot resume from {trial / 'checkpoint_000001'}" in capsys.readouterr().err

    fresh = tmp_path / "fresh"  # a trial's first start: its folder may not even exist on storage yet
    assert _kept_checkpoints(None, _storage(fresh)) == [] and _newest_readable([]) is None
    assert capsys.readouterr().err == ""


def test_a_staged_checkpoint_left_by_a_killed_attempt_is_cleared_by_the_next_attempt(tmp_path):
    killed = CheckpointStaging.for_trial("sweep-1", "abc12_00001", tmp_path).empty()
    (killed / STATE_FILE).write_bytes(b"weights of the killed attempt")
    retry = CheckpointStaging.for_trial("sweep-1", "abc12_00001", tmp_path)
    assert list(retry.empty().iterdir()) == []
    assert retry.folder == killed and oct(killed.stat().st_mode & 0o777) == "0o700"
    other = CheckpointStaging.for_trial("sweep-1", "abc12_00002", tmp_path).empty()
    retry.remove()
    assert not killed.exists() and other.exists()
    # the driver, once its sweep's trials have stopped, removes what is left of that sweep's only
    another_sweep = CheckpointStaging.for_trial("sweep-10", "abc12_00001", tmp_path).empty()
    assert CheckpointStaging.remove_sweep("sweep-1", tmp_path) == [other]
    assert not other.exists() and another_sweep.exists()


def test_a_worker_stopped_while_it_waits_inside_a_report_removes_its_staged_checkpoint(tmp_path):
    # Ray stops a worker blocked inside tune.report (ASHA, the stop criterion) by ending its process, so the
    # training thread never gets past the report: the staged folder goes at interpreter exit
    script = (
        "import threading\n"
        "from pathlib import Path\n"
        "from tuner.trainable import CheckpointStaging\n"
        f"staging = CheckpointStaging.for_trial('s', 't1', Path({str(tmp_path)!r}))\n"
        "staged = threading.Event()\n"
        "def train():\n"
        "    (staging.empty() / 'trial.pt').write_bytes(b'x')\n"
        "    staged.set()\n"
        "    threading.Event().wait()  # blocked in tune.report for good\n"
        "threading.Thread(target=train, daemon=True).start()\n"
        "staged.wait()\n"
        "print(sorted(p.name for p in staging.folder.iterdir()))\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout == "['trial.pt']\n", proc.stderr
    assert not (tmp_path / "lunartune-checkpoint-s-t1").exists()


def test_a_worker_that_ran_a_trial_leaves_that_trials_folder_alone_at_exit(tmp_path):
    # reuse_actors: one worker runs trial after trial; a trial that ended in it (say, with an error) may be
    # retried by another worker on the node, into the same folder, which this worker's exit must not remove
    script = (
        "from pathlib import Path\n"
        "from tuner.trainable import CheckpointStaging\n"
        f"ended = CheckpointStaging.for_trial('s', 't1', Path({str(tmp_path)!r}))\n"
        "ended.empty()\n"
        "ended.close()\n"
        f"retry = Path({str(tmp_path)!r}) / 'lunartune-checkpoint-s-t1'\n"
        "retry.mkdir()\n"
        "(retry / 'trial.pt').write_bytes(b'the retry writes here')\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "lunartune-checkpoint-s-t1" / "trial.pt").is_file()


def test_a_run_restored_from_a_checkpoint_is_running_again_at_first_contact(tmp_path):
    # an errored trial that had checkpoints: --resume retries it from one, in its run, which must lose the error
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment_id = tracking.get_or_create_experiment(uri, "exp", (tmp_path / "artifacts").as_uri())
    parent = tracking.start_parent_run(uri, experiment_id, "sweep", {}, {})
    target = TrackingTarget(uri, experiment_id, parent)
    run_id = tracking.open_child_run(target, "abc12_00000", "vgg11-t001", {}, {"ray_node_id": "first-node"})
    tracking.finish_child_run(uri, run_id, tracking.ERRORED, "RuntimeError: out of memory")
    run = ChildRun(replace(SETUP, tracking=target), run_id, open_run=None, placement={"ray_node_id": "other-node"})
    run.log_epoch({"train_loss": 0.5}, 3)
    after = tracking.client(uri).get_run(run_id)
    assert after.info.status == "RUNNING" and after.data.tags[tracking.STATUS_TAG] == tracking.RUNNING
    assert tracking.ERROR_TAG not in after.data.tags and after.data.tags["ray_node_id"] == "other-node"


def test_after_mlflow_fails_the_trial_leaves_it_alone_for_a_while(tmp_path, capsys, monkeypatch):
    """A server that stopped answering cost every call up to ~17 s: a trial paid it at every epoch (twice when
    it improved). After one failure the calls are skipped for a minute; the driver logs them later."""
    import pickle
    import socket

    with socket.socket() as closed:  # a port nothing listens on: refused at once
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    for name, value in tracking.HTTP_RETRY_ENV.items():  # as a trial bounds them (MLflow's own: minutes)
        monkeypatch.setenv(name, value)
    target = TrackingTarget(f"http://127.0.0.1:{port}", "1", "parent")
    run = ChildRun(replace(SETUP, tracking=target), "run-id", open_run=None, placement={})
    calls = []
    assert not run.attempt("epoch 1 metrics", lambda: calls.append(1) or run.log_epoch({"val_miou": 0.3}, 1))
    assert calls == [1] and "no MLflow call for 60 s" in capsys.readouterr().err
    assert not run.attempt("epoch 2 metrics", lambda: calls.append(2))  # not even tried
    assert calls == [1] and "epoch 2 metrics skipped" in capsys.readouterr().err
    assert not pickle.loads(pickle.dumps(run.backoff)).skipping()  # another process's clock: no carry-over
    run.backoff = tracking.Backoff(seconds=0.0)  # the minute has passed
    assert run.attempt("epoch 3 metrics", lambda: calls.append(3)) and calls == [1, 3]
    # a SQLite store fails fast ("database is locked"): no minute without MLflow for that
    assert not tracking.Backoff.for_store("sqlite:////tmp/mlflow.db").seconds


@pytest.mark.slow
def test_a_trial_restarted_on_its_saved_last_epoch_reports_that_epoch(local_ray, scenes, tmp_path):
    """A trial's last epoch was saved, then the trial was stopped before Ray took its report (Ctrl-C stops the
    driver first; a worker killed at that moment): on --resume it restored that epoch, had nothing left to
    train, and reported nothing, so Ray, Optuna and the summary kept the epoch before (a trial that ran
    every epoch ended "pruned"). Now it reports the saved epoch again."""
    from ray import tune

    from tuner.trainable import train_trial

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment = tracking.get_or_create_experiment(uri, "replay", None)
    parent = tracking.start_parent_run(uri, experiment, "sweep", {}, {})
    setup = TrialSetup(data=DataConfig(root=str(scenes), batch_size=4, image_size=(64, 64)),
                       model=ModelConfig(backbone="unet_scratch", encoder_weights="none", scratch_width=4,
                                         scratch_depth=3),
                       train=TrainConfig(epochs=2, seed=0, device="cpu"), objective="val_miou",
                       tracking=TrackingTarget(uri, experiment, parent))

    def fit(trainable, name: str):
        tuner = tune.Tuner(tune.with_resources(tune.with_parameters(trainable, setup=setup), {"cpu": 1}),
                           run_config=tune.RunConfig(name=name, storage_path=str(tmp_path / "ray"), verbose=0))
        (result,) = tuner.fit()
        assert result.error is None, result.error
        return result

    first = fit(train_trial, "first")
    last_epoch = Path(first.checkpoint.path)

    def restarted(config, setup):  # finds the last epoch's checkpoint on storage, as a resumed trial does
        trial_dir = Path(tune.get_context().get_storage().trial_fs_path)
        trial_dir.mkdir(parents=True, exist_ok=True)
        shutil.copytree(last_epoch, trial_dir / "checkpoint_000007")
        train_trial(config, setup)

    second = fit(restarted, "second")
    assert list(second.metrics_dataframe["epoch"]) == [2], "one report: the saved last epoch, nothing retrained"
    for key in ("epoch", "val_miou", "best_val_miou", "best_epoch", "train_loss"):
        assert second.metrics[key] == first.metrics[key], key
    assert isinstance(second.metrics["epoch"], int) and second.checkpoint is not None


def test_the_last_epoch_is_reported_again_only_if_ray_never_took_it(tmp_path):
    """A driver SIGKILLed after taking a trial's last report may have saved the trial as running: restored
    onto that epoch, the trial must not report it twice (result.json would hold it twice)."""
    from tuner.trainable import _ray_took_epoch

    storage = _storage(tmp_path)
    assert not _ray_took_epoch(storage, 2)  # no result.json: Ray took nothing
    (tmp_path / "result.json").write_text('{"epoch": 1, "val_miou": 0.3}\n')
    assert not _ray_took_epoch(storage, 2)
    (tmp_path / "result.json").write_text('{"epoch": 1, "val_miou": 0.3}\n{"epoch": 2, "val_miou": 0.4}\n{"epo')
    assert _ray_took_epoch(storage, 2)  # a line being written is skipped
