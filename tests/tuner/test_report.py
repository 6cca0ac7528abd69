"""`lunartune report` on a real finished sweep: every figure written, report.md, logged to the parent run."""
# Tests marked slow share one real sweep per session (~1 min, sweep_fixture.py); each then takes < 15 s.
from __future__ import annotations

import json
import shutil

import optuna
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from sweep_fixture import finished_sweep
from tuner.cli import CliError
from tuner.promote import PromoteConfig, promote
from tuner.report import FIGURES, MIN_COMPLETE_FOR_IMPORTANCE, ReportConfig, importances, report
from tuner.settings import RunPaths


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, scenes, local_ray):
    return finished_sweep(tmp_path_factory, scenes, "report")


@pytest.fixture(scope="module")
def reported(sweep, tmp_path_factory):
    """One promotion (with stand-in real photos) and one report of the shared sweep."""
    real = tmp_path_factory.mktemp("real") / "real_moon_images"
    real.mkdir()
    test_frames = json.loads((sweep.scenes / "lunartune_split.json").read_text())["splits"]["test"]
    for i, frame in enumerate(test_frames[:2], 1):
        shutil.copy(sweep.scenes / "images" / "render" / f"render{frame}.png", real / f"PCAM{i}.png")
        shutil.copy(sweep.scenes / "images" / "clean" / f"clean{frame}.png", real / f"g_PCAM{i}.png")
    promote(PromoteConfig(experiment=sweep.experiment, backbone="unet_scratch", real_data=str(real.parent),
                          device="cpu"), sweep.paths)
    out = tmp_path_factory.mktemp("report") / "out"
    return report(ReportConfig(experiment=sweep.experiment, out=out, device="cpu"), sweep.paths)


@pytest.mark.slow
def test_every_figure_and_the_markdown_are_written(reported):
    assert sorted(reported.files) == sorted([*FIGURES, "report.md", "report.json"])
    for name in FIGURES:
        with Image.open(reported.out / name) as image:
            assert image.format == "PNG" and min(image.size) >= 250
    markdown = (reported.out / "report.md").read_text()
    for name in FIGURES:
        assert f"]({name})" in markdown


@pytest.mark.slow
def test_markdown_table_lists_every_trial_best_first(sweep, reported):
    client = MlflowClient(tracking_uri=sweep.paths.tracking_uri)
    trials = client.search_runs([sweep.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{sweep.parent_run_id}'")
    best = {r.info.run_name: max(m.value for m in client.get_metric_history(r.info.run_id, "val_miou")) for r in trials}
    assert len(best) == 4  # the shared sweep's samples: an empty lookup would pass the comparison below
    rows = [line for line in (reported.out / "report.md").read_text().splitlines() if line.startswith("| ") and
            line.split(" | ")[1] in best]
    assert [row.split(" | ")[1] for row in rows] == sorted(best, key=lambda n: -best[n])
    assert json.loads((reported.out / "report.json").read_text())["parent_run_id"] == sweep.parent_run_id


@pytest.mark.slow
def test_the_markdown_opens_with_the_winner_and_names_the_promoted_trials_sweep(sweep, reported):
    client = MlflowClient(tracking_uri=sweep.paths.tracking_uri)
    trials = client.search_runs([sweep.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{sweep.parent_run_id}'")
    best = max(trials, key=lambda r: max(m.value for m in client.get_metric_history(r.info.run_id, "val_miou")))
    lines = (reported.out / "report.md").read_text().splitlines()
    assert lines[2].startswith(f"**Best: `{best.info.run_name}` ({best.data.tags['backbone']}, ")
    assert "over the best" in lines[2] and "Promoted model (`promote-unet_scratch-t" in lines[2]
    promotion = next(line for line in lines if line.startswith("Latest promotion"))
    assert ": trial `unet_scratch-t" in promotion and " of this sweep, " in promotion


@pytest.mark.slow
def test_report_is_logged_to_the_sweeps_parent_run(sweep, reported):
    client = MlflowClient(tracking_uri=sweep.paths.tracking_uri)
    logged = sorted(a.path for a in client.list_artifacts(sweep.parent_run_id, "report"))
    assert logged == sorted(f"report/{name}" for name in reported.files)


def _study(paths: RunPaths, name: str = "s"):
    return optuna.create_study(study_name=name, storage=f"sqlite:///{paths.optuna_db}", direction="maximize")


def _objective(trial, prune_after: int | None = None) -> float:
    lr, dropout = trial.suggest_float("lr", 1e-3, 1e-1, log=True), trial.suggest_float("dropout", 0, 0.2)
    for epoch in (1, 2):  # like the sweep: a value per epoch, some trials stopped after the first
        trial.report(lr * epoch + 0.01 * dropout, epoch)
        if prune_after == epoch:
            raise optuna.TrialPruned()
    return 2 * lr + 0.01 * dropout


def test_importances_from_complete_trials(tmp_path):
    paths = RunPaths(root=tmp_path)
    _study(paths).optimize(_objective, n_trials=MIN_COMPLETE_FOR_IMPORTANCE + 4)
    result = importances(paths, "s")
    assert result.reason is None and set(result.values) == {"lr", "dropout"}
    assert sum(result.values.values()) == pytest.approx(1) and "COMPLETE" in result.basis


def test_a_parameter_with_one_value_in_the_trials_is_not_ranked_but_named(tmp_path):
    """The whole study's backbone bar read 0.00 when every complete trial had the same backbone."""
    paths = RunPaths(root=tmp_path)

    def objective(trial):
        trial.suggest_categorical("backbone", ["vgg11"])
        return _objective(trial)
    _study(paths).optimize(objective, n_trials=MIN_COMPLETE_FOR_IMPORTANCE + 4)
    result = importances(paths, "s")
    assert set(result.values) == {"lr", "dropout"} and result.values["lr"] > 0
    assert result.basis.endswith("not ranked, one value in these trials: backbone")
    assert "whole study" in result.basis


def test_a_value_only_pruned_trials_tried_does_not_make_a_parameter_ranked(tmp_path):
    """Optuna ranks COMPLETE trials only: an optimizer every one of them shared got a bar (0.003) because a
    pruned trial had tried another."""
    paths = RunPaths(root=tmp_path)
    study = _study(paths)

    def objective(trial, optimizer):
        trial.suggest_categorical("optimizer", ["adamw", "sgd"])
        return _objective(trial, prune_after=1 if optimizer == "sgd" else None)
    study.enqueue_trial({"optimizer": "sgd"})
    study.optimize(lambda t: objective(t, "sgd"), n_trials=1)
    for _ in range(MIN_COMPLETE_FOR_IMPORTANCE + 2):
        study.enqueue_trial({"optimizer": "adamw"})
    study.optimize(lambda t: objective(t, "adamw"), n_trials=MIN_COMPLETE_FOR_IMPORTANCE + 2)
    result = importances(paths, "s")
    assert "optimizer" not in result.values and result.basis.endswith("one value in these trials: optimizer")


def test_nothing_to_rank_is_a_reason_not_a_crash(tmp_path):
    """Every searched parameter with one value: the figure's max() over no bars raised ValueError."""
    paths = RunPaths(root=tmp_path)
    _study(paths).optimize(lambda t: t.suggest_categorical("backbone", ["vgg11"]) and 0.5,
                           n_trials=MIN_COMPLETE_FOR_IMPORTANCE + 1)
    result = importances(paths, "s")
    assert result.values == {} and "every parameter took one value" in result.reason and "backbone" in result.reason


def test_with_few_complete_trials_every_trial_is_compared_at_the_first_epoch(tmp_path):
    paths = RunPaths(root=tmp_path)
    study = _study(paths)
    study.optimize(_objective, n_trials=2)
    study.optimize(lambda t: _objective(t, prune_after=1), n_trials=MIN_COMPLETE_FOR_IMPORTANCE)
    result = importances(paths, "s")
    assert result.reason is None and result.trials == MIN_COMPLETE_FOR_IMPORTANCE + 2
    assert "at epoch 1 of all 6 trials of the whole study (only 2 ran to the end" in result.basis


def test_too_few_trials_or_no_study_gives_a_reason_not_a_crash(tmp_path):
    paths = RunPaths(root=tmp_path)
    assert "no Optuna study store" in importances(paths, "s").reason
    _study(paths).optimize(_objective, n_trials=MIN_COMPLETE_FOR_IMPORTANCE - 1)
    result = importances(paths, "s")
    assert result.values == {} and "only 3 COMPLETE trial(s) and 3 with a first-epoch value" in result.reason
    assert "no Optuna study 'other'" in importances(paths, "other").reason


@pytest.mark.slow
def test_without_a_promotion_or_study_the_report_says_so(sweep, tmp_path):
    paths = RunPaths(root=tmp_path / "run")  # a copy without promotions and without the Optuna study
    paths.root.mkdir()
    shutil.copy2(sweep.template / "mlflow.db", paths.mlflow_db)
    result = report(ReportConfig(experiment=sweep.experiment, out=tmp_path / "out", device="cpu"), paths)
    assert "test_vs_real.png" not in result.files and "importance.png" in result.files
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "No promotion yet" in markdown and "no Optuna study store" in markdown


@pytest.mark.slow
def test_a_best_trial_without_its_checkpoint_leaves_the_rest_of_the_report(sweep, tmp_path, capsys):
    """The prediction figure's error (no checkpoint uploaded yet, no scored trial) threw the whole report
    away, curves and table included."""
    from tuner import tracking
    from tuner.cli import main

    paths = RunPaths(root=tmp_path / "run")
    paths.root.mkdir()
    shutil.copy2(sweep.template / "mlflow.db", paths.mlflow_db)
    client = MlflowClient(paths.tracking_uri)
    parent = client.get_run(sweep.parent_run_id)
    run = client.create_run(parent.info.experiment_id, run_name="vgg11-t999", tags={
        tracking.PARENT_TAG: parent.info.run_id, tracking.ROLE_TAG: "trial", tracking.BACKBONE_TAG: "vgg11",
        tracking.STATUS_TAG: "completed"})  # the best trial, whose checkpoint upload failed
    client.log_metric(run.info.run_id, "val_miou", 0.99, step=1)
    client.set_terminated(run.info.run_id)
    assert main(["--run-dir", str(paths.root), "report", "--experiment", sweep.experiment,
                 "--out", str(tmp_path / "out")]) == 0
    assert "has no checkpoint artifact" in capsys.readouterr().err
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "**Best: `vgg11-t999`" in markdown and "No example predictions: " in markdown
    assert set(FIGURES) - {"test_vs_real.png"} <= {p.name for p in (tmp_path / "out").iterdir()}


@pytest.mark.slow
def test_unknown_experiment_is_a_clear_error(sweep, tmp_path):
    with pytest.raises(CliError, match="no MLflow experiment 'nope'"):
        report(ReportConfig(experiment="nope", out=tmp_path / "out"), sweep.paths)
    assert not (tmp_path / "out").exists()
