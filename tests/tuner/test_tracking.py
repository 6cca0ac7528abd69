"""MLflow tracking against a real SQLite store: experiment, parent/child runs, lookups, checkpoints."""
from __future__ import annotations

import json
import os
import socket
import time

import pytest

from tuner import tracking
from tuner.tracking import TrackingError, TrackingTarget
from tuner.sweep import TRIAL_STATUSES


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment_id = tracking.get_or_create_experiment(uri, "exp", (tmp_path / "artifacts").as_uri())
    return uri, experiment_id, tmp_path


def _sweep(uri, experiment_id, name="sweep-1"):
    parent = tracking.start_parent_run(uri, experiment_id, name, {"seed": 0, "space": "smoke.yaml"}, {"git": "abc"})
    return parent, TrackingTarget(uri, experiment_id, parent)


def _trial(target, trial_id, backbone, miou, tmp_path):
    run_id = tracking.open_child_run(target, trial_id, f"{backbone}-t{trial_id[-3:]}",
                                     {"lr": 0.01, "backbone": backbone}, {tracking.BACKBONE_TAG: backbone})
    for epoch, value in enumerate([miou / 2, miou], start=1):
        tracking.log_metrics(target.uri, run_id, {"val_miou": value, "train_loss": 1.0 / epoch}, step=epoch)
    best = tmp_path / trial_id / "best.pt"
    best.parent.mkdir()
    best.write_bytes(trial_id.encode())
    tracking.log_best_checkpoint(target.uri, run_id, best, {"backbone": backbone})
    return run_id


def test_experiment_is_created_once_with_the_artifact_location(store):
    uri, experiment_id, tmp_path = store
    assert tracking.get_or_create_experiment(uri, "exp", None) == experiment_id
    experiment = tracking.find_experiment(uri, "exp")
    assert experiment.artifact_location == (tmp_path / "artifacts").as_uri()
    with pytest.raises(TrackingError, match="no MLflow experiment 'nope'.*exp"):
        tracking.find_experiment(uri, "nope")


def test_children_nest_under_the_parent_and_lookups_rank_them(store):
    uri, experiment_id, tmp_path = store
    parent, target = _sweep(uri, experiment_id)
    ids = {tid: _trial(target, tid, bb, m, tmp_path) for tid, bb, m in
           [("a_00001", "vgg11", 0.5), ("a_00002", "unet_scratch", 0.9), ("a_00003", "vgg11", 0.7)]}
    run = tracking.client(uri).get_run(ids["a_00001"])
    assert run.data.tags[tracking.PARENT_TAG] == parent and run.info.run_name == "vgg11-t001"
    history = tracking.client(uri).get_metric_history(ids["a_00001"], "val_miou")
    assert [(m.step, m.value) for m in history] == [(1, 0.25), (2, 0.5)]
    assert tracking.latest_parent_run(uri, experiment_id).info.run_id == parent
    best_vgg = tracking.child_runs(uri, experiment_id, parent, backbone="vgg11", order_by_metric="val_miou")
    assert [r.info.run_id for r in best_vgg] == [ids["a_00003"], ids["a_00001"]]
    assert len(tracking.child_runs(uri, experiment_id, parent)) == 3


def test_a_retried_trial_reuses_its_child_run(store):
    uri, experiment_id, tmp_path = store
    _, target = _sweep(uri, experiment_id)
    # the driver opened it for a trial that failed first, with Ray's flat config only
    first = tracking.open_child_run(target, "b_00004", "vgg11-t004", {"backbone": "vgg", "lr": 0.01}, {})
    tracking.finish_child_run(uri, first, tracking.ERRORED, "WeightsError: bad file")
    again = tracking.open_child_run(target, "b_00004", "vgg11-t004",
                                    {"backbone": "vgg11", "lr": 0.01, "optimizer": "adamw"}, {})
    run = tracking.client(uri).get_run(first)
    assert again == first and run.info.status == "RUNNING" and tracking.ERROR_TAG not in run.data.tags
    assert len(tracking.child_runs(uri, experiment_id, target.parent_run_id)) == 1
    # the params it lacked are logged; one already there keeps its value (MLflow never changes a param)
    assert run.data.params == {"backbone": "vgg", "lr": "0.01", "optimizer": "adamw"}


def test_latest_parent_is_the_newest_sweep(store):
    uri, experiment_id, _ = store
    # none yet: the experiment is named (report/promote said "experiment 1", its id)
    with pytest.raises(TrackingError, match=rf"experiment 'exp' \(id {experiment_id}\) in .* has no sweep .*; run "
                                            r"`lunartune tune --experiment exp` first"):
        tracking.latest_parent_run(uri, experiment_id)
    _sweep(uri, experiment_id, "old")
    time.sleep(0.01)  # start_time has millisecond resolution
    newest, _ = _sweep(uri, experiment_id, "new")
    assert tracking.latest_parent_run(uri, experiment_id).info.run_id == newest


def test_checkpoint_download_and_status_tags(store):
    uri, experiment_id, tmp_path = store
    parent, target = _sweep(uri, experiment_id)
    run_id = _trial(target, "c_00001", "vgg11", 0.6, tmp_path)
    tracking.finish_child_run(uri, run_id, tracking.PRUNED)
    run = tracking.client(uri).get_run(run_id)
    assert run.data.tags[tracking.STATUS_TAG] == "pruned" and run.info.status == "KILLED"
    assert run.data.tags[tracking.CHECKPOINT_TAG] == "checkpoint/best.pt"
    local = tracking.download_checkpoint(uri, run_id, tmp_path / "dl")
    assert local.read_bytes() == b"c_00001"
    config = json.loads((tracking.client(uri).download_artifacts(run_id, "model_config.json", str(tmp_path))
                         and (tmp_path / "model_config.json").read_text()))
    assert config == {"backbone": "vgg11"}
    tracking.end_parent_run(uri, parent, interrupted=True, summary={"trials": 1, "note": "x"})
    assert tracking.client(uri).get_run(parent).data.tags[tracking.STATUS_TAG] == "interrupted"
    lonely = tracking.open_child_run(target, "c_00002", "vgg11-t002", {}, {})
    with pytest.raises(TrackingError, match=f"run {lonely} .* no checkpoint artifact"):
        tracking.download_checkpoint(uri, lonely, tmp_path / "dl2")


def test_the_best_checkpoints_epoch_is_read_without_a_progress_bar(store, capfd, monkeypatch):
    """The end of a sweep and promote read every trial's model_config.json: MLflow drew a download progress
    bar for each (one line per trial on the terminal)."""
    uri, experiment_id, tmp_path = store
    _, target = _sweep(uri, experiment_id)
    run_id = tracking.open_child_run(target, "e_00001", "vgg11-t001", {}, {})
    assert tracking.best_checkpoint_epoch(uri, run_id) is None  # nothing uploaded yet
    best = tmp_path / "best.pt"
    best.write_bytes(b"weights")
    tracking.log_best_checkpoint(uri, run_id, best, {"backbone": "vgg11", "epoch": 4})
    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", raising=False)
    capfd.readouterr()
    assert tracking.best_checkpoint_epoch(uri, run_id) == 4
    assert tracking.described_epoch(tracking.client(uri), run_id) == 4
    assert "Downloading artifacts" not in capfd.readouterr().err
    assert "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR" not in os.environ  # the user's setting is left as it was
    tracking.client(uri).download_artifacts(run_id, "model_config.json", str(tmp_path))
    assert "Downloading artifacts" in capfd.readouterr().err  # MLflow's bar, as the test expects it


@pytest.mark.parametrize("status", TRIAL_STATUSES)
def test_every_final_trial_status_ends_its_run(store, status):
    """The driver tags whatever sweep.trial_status says (a trial Ray ended before its first result is
    `unfinished`: that one raised KeyError and the run stayed RUNNING)."""
    uri, experiment_id, _ = store
    run_id = tracking.open_child_run(_sweep(uri, experiment_id)[1], "d_00001", "vgg11-t001", {}, {})
    tracking.finish_child_run(uri, run_id, status)
    run = tracking.client(uri).get_run(run_id)
    expected = {"completed": "FINISHED", "pruned": "KILLED", "diverged": "FAILED", "errored": "FAILED",
                "unfinished": "KILLED"}[status]  # the UI's icon: a pruned trial is no failure, a diverged one is
    assert run.data.tags[tracking.STATUS_TAG] == status and run.info.status == expected


@pytest.mark.timeout(60)  # the default timeout's path too: MLflow's own retries would take minutes
def test_unreachable_server_fails_fast_with_a_clear_message():
    for kwargs in ({"timeout_s": 2}, {}):
        with pytest.raises(TrackingError, match=r"http://127.0.0.1:9 is not reachable.*embedded SQLite"):
            tracking.check_reachable("http://127.0.0.1:9", **kwargs)


@pytest.mark.timeout(60)  # MLflow alone retries an unreachable database for ~100 s
@pytest.mark.parametrize("uri, shown", [
    ("postgresql://lunar:secret@127.0.0.1:{port}/mlflow", "postgresql://lunar:***@127.0.0.1:{port}/mlflow"),
    ("mysql+pymysql://127.0.0.1:{port}/mlflow", "mysql+pymysql://127.0.0.1:{port}/mlflow"),
])
def test_a_database_where_nothing_answers_is_refused_at_once_without_showing_its_password(uri, shown):
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(TrackingError) as refused:
        tracking.check_reachable(uri.format(port=port), timeout_s=2)
    message = str(refused.value)
    assert message.startswith(f"MLflow tracking URI {shown.format(port=port)!r}: nothing answers at 127.0.0.1:{port}")
    assert "secret" not in message


def test_a_store_that_cannot_be_used_is_one_clear_line(tmp_path):
    """A folder where the SQLite file should be, MLflow's read-only file store (./mlruns) and an unknown scheme
    were tracebacks from deep inside the first command's work."""
    (tmp_path / "mlflow.db").mkdir()
    with pytest.raises(TrackingError, match=r"mlflow.db is a folder, not an SQLite database file"):
        tracking.check_reachable(f"sqlite:///{tmp_path / 'mlflow.db'}")
    for uri, says in [(str(tmp_path / "mlruns"), "filesystem tracking backend"), ("foo://bar", "unsupported URI")]:
        with pytest.raises(TrackingError, match=f"MLflow tracking URI '{uri}' cannot be used \\(.*{says}.*\\); "
                                                f"expected http"):
            tracking.check_reachable(uri)
    assert not (tmp_path / "mlruns").exists()
