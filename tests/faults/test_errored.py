"""A trial that fails every try ends `errored` and says why: in the sweep's summary, in its MLflow run (which
the driver opens if the trial never could), and in Ray's error.txt; `--resume` retries it once fixed."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState
from ray import tune

from data_pipeline import DataConfig
from models import ModelConfig, TrainConfig, build
from tuner import sweep, tracking
from tuner.searcher import RETRY_ATTR
from tuner.space import SpaceError, check_against_models
from tuner.sweep import SweepConfig, format_summary, run_sweep, sync_to_mlflow
from tuner.trainable import train_trial


def _children(paths, result) -> list:
    return tracking.child_runs(paths.tracking_uri, result.experiment_id, result.parent_run_id)


@pytest.mark.slow
def test_a_trial_that_cannot_build_its_model_errors_and_says_why(local_ray, scenes, tmp_path, run_paths, monkeypatch):
    """An encoder weights file that goes bad after the sweep checked it (another job overwrote it, a disk
    went bad): every try of the trial fails building its model, before it opens its MLflow run. The sweep
    ends and says why; MLflow lists the trial, tagged errored with the error."""
    broken = tmp_path / "broken.pt"
    good_weights = build(ModelConfig(backbone="vgg11")).encoder.state_dict()
    broken.write_bytes(b"not a torch file")
    space = tmp_path / "broken.yaml"
    space.write_text("params:\n  lr: {low: 1.0e-3, high: 1.0e-2, log: true}\n"
                     f"fixed: {{backbone: vgg11, encoder_weights: '{broken}'}}\n")
    cfg = SweepConfig(space=str(space), data=str(scenes), samples=1, max_epochs=2, concurrency=1, device="cpu",
                      experiment="broken")
    with pytest.raises(SpaceError, match=f"fixed.encoder_weights: '{broken}' is refused: {broken}: cannot read"):
        run_sweep(cfg, run_paths)  # as it is, the file is refused before anything starts

    def check_then_break(space, image_size):
        torch.save(good_weights, broken)
        check_against_models(space, image_size)
        broken.write_bytes(b"not a torch file")

    monkeypatch.setattr(sweep, "check_against_models", check_then_break)
    result = run_sweep(cfg, run_paths)
    assert result.statuses == {"errored": 1} and not result.interrupted
    ((folder, error),) = result.errors.items()
    assert error.startswith(f"WeightsError: {broken}: cannot read encoder weights"), error
    assert "\n" not in error and folder.startswith("vgg11-t001_")
    assert "WeightsError" in (Path(result.results_path) / folder / "error.txt").read_text()
    assert f"{folder}: {error}" in format_summary(result, cfg, run_paths)
    assert result.best_config == {} and "best config" not in format_summary(result, cfg, run_paths)
    (run,) = _children(run_paths, result)
    assert (run.info.run_name, run.info.status, run.data.params["backbone"]) == ("vgg11-t001", "FAILED", "vgg11")
    assert run.data.tags[tracking.STATUS_TAG] == "errored" and run.data.tags[tracking.ERROR_TAG] == error

    # MLflow away while the trial failed (here: its run gone): filling MLflow in from Ray's results lists it
    tracking.client(run_paths.tracking_uri).delete_run(run.info.run_id)
    results = tune.Tuner.restore(result.results_path, trainable=train_trial).get_results()
    target = tracking.TrackingTarget(run_paths.tracking_uri, result.experiment_id, result.parent_run_id)
    setup = sweep._trial_setup(cfg, DataConfig(root=str(run_paths.data), image_size=cfg.image_size), target)
    assert sync_to_mlflow(results, setup, resumable=set()) == []
    (again,) = _children(run_paths, result)
    assert again.info.run_id != run.info.run_id and again.info.run_name == "vgg11-t001"
    assert again.data.tags[tracking.STATUS_TAG] == "errored" and again.data.tags[tracking.ERROR_TAG] == error
    # as the trial would have opened it: backbone tag (promote selects by it) and the full resolved params
    assert again.data.tags[tracking.BACKBONE_TAG] == "vgg11"
    assert {k: again.data.params[k] for k in ("optimizer", "epochs", "image_size", "augment")} == {
        "optimizer": TrainConfig().optimizer, "epochs": str(cfg.max_epochs),
        "image_size": "x".join(map(str, cfg.image_size)), "augment": "True"}

    # the cause fixed, --resume retries the errored trial in the same run, which no longer says "error"
    monkeypatch.undo()
    torch.save(good_weights, broken)
    resumed = run_sweep(replace(cfg, resume=True), run_paths)
    assert resumed.statuses == {"completed": 1} and not resumed.errors
    (done,) = _children(run_paths, resumed)
    assert done.info.run_id == again.info.run_id and done.data.tags[tracking.STATUS_TAG] == "completed"
    assert tracking.ERROR_TAG not in done.data.tags
    parent = tracking.client(run_paths.tracking_uri).get_run(resumed.parent_run_id).data.metrics
    assert (parent["trials_completed"], parent["trials_errored"]) == (1, 0)  # not the first run's errored 1
    # Optuna was told FAIL when the trial errored and cannot reopen it: the retry is a new trial, same params
    failed, retry = optuna.load_study(study_name="broken", storage=f"sqlite:///{run_paths.optuna_db}").trials
    assert (failed.state, retry.state, retry.params) == (TrialState.FAIL, TrialState.COMPLETE, failed.params)
    assert retry.user_attrs[RETRY_ATTR] == failed.number and sorted(retry.intermediate_values) == [1, 2]
    # Optuna gets the last epoch's value, as OptunaSearch tells it for any trial (not the best epoch's)
    history = tracking.client(run_paths.tracking_uri).get_metric_history(done.info.run_id, "val_miou")
    last = max(history, key=lambda m: m.step)
    assert last.step == 2 and retry.value == pytest.approx(last.value)
    assert retry.intermediate_values == pytest.approx({m.step: m.value for m in history})
