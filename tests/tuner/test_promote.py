"""`lunartune promote` against a real finished sweep: real SQLite MLflow store, real Model Registry,
real checkpoints (see sweep_fixture.py)."""
# Tests marked slow share one real sweep per session (~1 min, sweep_fixture.py); each then takes < 15 s.
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from _procs import without_lunartune
from sweep_fixture import finished_sweep
from tuner import tracking
from tuner.cli import CliError
from tuner.cli import main as cli_main
from tuner.promote import (CHALLENGER, CHAMPION, ROLE_PROMOTION, PromoteConfig, promote, sha256_of,
                           version_by_alias)

MODEL = "lunar-unet"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, scenes, local_ray):
    return finished_sweep(tmp_path_factory, scenes, "promote")


@pytest.fixture
def fresh(sweep, tmp_path):
    """A private copy of the sweep's stores for a test that changes the registry or adds runs."""
    from dataclasses import replace

    from tuner.settings import RunPaths

    root = tmp_path / "run"
    root.mkdir()
    for name in ("mlflow.db", "optuna.db"):
        shutil.copy2(sweep.paths.root / name, root / name)
    return replace(sweep, paths=RunPaths(root=root))


def _client(s) -> MlflowClient:
    return MlflowClient(tracking_uri=s.paths.tracking_uri)


def _best_by_history(s, backbone: str, metric: str = "val_miou") -> tuple[str, float]:
    """The expected winner, computed independently of tuner.promote."""
    client = _client(s)
    runs = client.search_runs([s.experiment_id], filter_string=f"tags.backbone = '{backbone}'")
    scored = [(max(m.value for m in client.get_metric_history(r.info.run_id, metric)), r.info.run_id)
              for r in runs if r.data.tags.get("lunartune.role") == "trial"]
    value, run_id = max(scored)
    return run_id, value


def _promotion_runs(s) -> list:
    return _client(s).search_runs([s.experiment_id], filter_string=f"tags.`lunartune.role` = '{ROLE_PROMOTION}'")


def _test_frames(s) -> list[str]:
    import json

    return json.loads((s.scenes / "lunartune_split.json").read_text())["splits"]["test"]


@pytest.mark.slow
def test_promotes_the_best_vgg11_trial_and_sets_both_aliases(fresh, tmp_path, monkeypatch):
    from mlflow.tracking import is_tracking_uri_set

    monkeypatch.chdir(tmp_path)
    result = promote(PromoteConfig(experiment=fresh.experiment, device="cpu"), fresh.paths)
    # log_model needs MLflow's process-wide URI: it is restored to unset, no ./mlflow.db appears
    assert not is_tracking_uri_set() and not (tmp_path / "mlflow.db").exists()
    client = _client(fresh)
    trial_run, best = _best_by_history(fresh, "vgg11")
    version = client.get_model_version(MODEL, result.version)
    assert (result.registered, result.trial_run_id, version.tags["trial_run_id"]) == (True, trial_run, trial_run)
    assert float(version.tags["val_miou"]) == pytest.approx(best, abs=1e-6)
    assert version.tags["backbone"] == "vgg11" and '"backbone": "vgg11"' in version.tags["config"]
    assert 0 <= float(version.tags["test_miou"]) <= 1 and "test_iou_large_rocks" in version.tags
    assert {a for a, v in client.get_registered_model(MODEL).aliases.items() if str(v) == result.version} == {CHALLENGER, CHAMPION}
    # the promotion run holds the checkpoint the trial logged (byte for byte) and the MLflow model
    run = client.get_run(version.run_id)
    assert run.data.tags["lunartune.role"] == ROLE_PROMOTION and run.info.status == "FINISHED"
    assert [a.path for a in client.list_artifacts(version.run_id, "checkpoint")] == ["checkpoint/best.pt"]
    mine = client.download_artifacts(version.run_id, "checkpoint/best.pt", str(fresh.paths.root / "a"))
    trials = client.download_artifacts(trial_run, "checkpoint/best.pt", str(fresh.paths.root / "b"))
    assert sha256_of(mine) == sha256_of(trials) == version.tags["checkpoint_sha256"]


@pytest.mark.slow
def test_the_registered_model_resolves_and_loads_at_any_input_size(fresh):
    import mlflow.pytorch
    import torch

    from tuner.model_spec import load_model

    result = promote(PromoteConfig(experiment=fresh.experiment, device="cpu"), fresh.paths)
    _, info, resolved = load_model(f"models:/{MODEL}@{CHAMPION}", fresh.paths)
    assert resolved.run_id == result.promotion_run_id and info["model_config"].backbone == "vgg11"
    from tuner.promote import _fluent_uri

    with _fluent_uri(fresh.paths.tracking_uri):
        logged = mlflow.pytorch.load_model(f"models:/{MODEL}/{result.version}")
    with torch.no_grad():  # pickled, not torch.export'ed: another size than the 64x64 it was trained at
        assert tuple(logged.eval()(torch.zeros(2, 3, 32, 96)).shape) == (2, 4, 32, 96)


# a registered version loaded as a user without lunartune loads it
_LOAD = """
import mlflow.pytorch, torch
mlflow.set_tracking_uri({uri!r})
model = mlflow.pytorch.load_model({model_uri!r})
with torch.no_grad():
    print(tuple(model.eval()(torch.zeros(1, 3, 64, 96)).shape))
"""


@pytest.mark.slow
def test_a_promoted_hand_built_unet_loads_where_lunartune_is_not_installed(fresh, tmp_path):
    """Its pickle names lunartune's own class (models.unet_scratch.UNetScratch): the version carries that
    code, and a description that says what goes in and comes out."""
    import subprocess
    import sys

    result = promote(PromoteConfig(experiment=fresh.experiment, backbone="unet_scratch", model_name="scratch",
                                   device="cpu"), fresh.paths)
    script = without_lunartune(_LOAD.format(uri=fresh.paths.tracking_uri, model_uri=f"models:/scratch/{result.version}"))
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().splitlines()[-1] == "(1, 4, 64, 96)", out.stderr[-2000:]
    description = _client(fresh).get_model_version("scratch", result.version).description
    assert description.startswith(f"unet_scratch U-Net from trial {result.trial}") and "best epoch" in description
    assert "scaled to [0, 1]" in description and "0 ground, 1 sky, 2 small_rocks, 3 large_rocks" in description
    assert _client(fresh).get_run(result.promotion_run_id).data.tags["mlflow.source.name"] == "lunartune promote"


@pytest.mark.slow
def test_scores_are_the_test_split_of_the_sweep_not_val(fresh):
    from data_pipeline import load_eval_set
    from models.checkpoint import model_from_checkpoint
    from tuner.evaluate import evaluate_model

    result = promote(PromoteConfig(experiment=fresh.experiment, device="cpu"), fresh.paths)
    version = _client(fresh).get_model_version(MODEL, result.version)
    path = _client(fresh).download_artifacts(version.run_id, "checkpoint/best.pt", str(fresh.paths.root / "c"))
    model, info = model_from_checkpoint(path)
    frames = _test_frames(fresh)
    expected = evaluate_model(model, info, {"t": load_eval_set(fresh.scenes, frames=frames)}, "cpu")["t"].metrics
    assert float(version.tags["test_miou"]) == pytest.approx(expected["miou"], abs=1e-6)
    assert version.tags["split_test_images"] == str(len(frames))
    assert result.metrics["test_miou"] == pytest.approx(expected["miou"], abs=1e-6)


@pytest.mark.slow
def test_running_it_twice_registers_nothing_new(fresh):
    first = promote(PromoteConfig(experiment=fresh.experiment, device="cpu"), fresh.paths)
    second = promote(PromoteConfig(experiment=fresh.experiment, device="cpu"), fresh.paths)
    assert (second.registered, second.version, second.promotion_run_id) == (False, first.version, first.promotion_run_id)
    assert len(_client(fresh).search_model_versions(f"name = '{MODEL}'")) == 1
    assert len(_promotion_runs(fresh)) == 1


@pytest.mark.slow
def test_two_promotes_at_once_register_one_version(fresh):
    """Both used to find no version of the trial, both registered one (same checkpoint bytes) and the aliases
    split between them; the registry lock makes the second wait and reuse the first's version."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        runs = [pool.submit(promote, PromoteConfig(experiment=fresh.experiment, device="cpu"), fresh.paths)
                for _ in range(2)]
        results = [run.result(timeout=600) for run in runs]
    assert sorted(r.registered for r in results) == [False, True]
    assert results[0].version == results[1].version
    assert len(_client(fresh).search_model_versions(f"name = '{MODEL}'")) == 1
    assert len(_promotion_runs(fresh)) == 1


@pytest.mark.slow
def test_champion_moves_only_when_beaten_or_forced(fresh):
    client = _client(fresh)
    first = promote(PromoteConfig(experiment=fresh.experiment, device="cpu"), fresh.paths)
    client.set_model_version_tag(MODEL, first.version, "test_miou", "1.0")  # an unbeatable champion
    other = promote(PromoteConfig(experiment=fresh.experiment, backbone="unet_scratch", device="cpu"), fresh.paths)
    assert other.registered and other.version != first.version and not other.champion_moved
    assert "<=" in other.reason
    assert str(version_by_alias(client, MODEL, CHAMPION).version) == first.version
    assert str(version_by_alias(client, MODEL, CHALLENGER).version) == other.version
    forced = promote(PromoteConfig(experiment=fresh.experiment, backbone="unet_scratch", force=True, device="cpu"),
                     fresh.paths)
    assert (forced.registered, forced.champion_moved) == (False, True)
    assert str(version_by_alias(client, MODEL, CHAMPION).version) == other.version
    client.set_model_version_tag(MODEL, other.version, "test_miou", "-1.0")  # now the champion is beaten
    again = promote(PromoteConfig(experiment=fresh.experiment, device="cpu"), fresh.paths)
    assert again.champion_moved and str(version_by_alias(client, MODEL, CHAMPION).version) == first.version


@pytest.mark.slow
def test_a_champion_scored_on_another_split_is_rescored_on_this_one(fresh):
    client = _client(fresh)
    first = promote(PromoteConfig(experiment=fresh.experiment, device="cpu"), fresh.paths)
    client.set_model_version_tag(MODEL, first.version, "test_miou", "1.0")
    client.set_model_version_tag(MODEL, first.version, "manifest_hash", "another-split")  # so 1.0 is not used
    other = promote(PromoteConfig(experiment=fresh.experiment, backbone="unet_scratch", device="cpu"), fresh.paths)
    true_first = first.metrics["test_miou"]
    assert other.champion_moved == (other.test_score > true_first)
    assert f"{true_first:.4f}" in other.reason


@pytest.mark.slow
def test_a_champion_that_cannot_be_rescored_moves_no_alias(fresh):
    """`challenger` moved before the champion was re-scored: a champion whose checkpoint went bad failed the
    promote with `challenger` already on the new version."""
    from urllib.parse import urlparse

    client = _client(fresh)
    first = promote(PromoteConfig(experiment=fresh.experiment, device="cpu"), fresh.paths)
    client.set_model_version_tag(MODEL, first.version, "manifest_hash", "another-split")  # so it is re-scored
    artifacts = urlparse(client.get_run(client.get_model_version(MODEL, first.version).run_id).info.artifact_uri).path
    (Path(artifacts) / tracking.CHECKPOINT_ARTIFACT).write_bytes(b"gone bad")
    with pytest.raises(CliError, match="not a readable checkpoint"):
        promote(PromoteConfig(experiment=fresh.experiment, backbone="unet_scratch", device="cpu"), fresh.paths)
    assert str(version_by_alias(client, MODEL, CHALLENGER).version) == first.version
    assert str(version_by_alias(client, MODEL, CHAMPION).version) == first.version


@pytest.mark.slow
def test_real_photos_are_scored_when_given(fresh, tmp_path):
    real = tmp_path / "real" / "real_moon_images"
    real.mkdir(parents=True)
    for i, frame in enumerate(_test_frames(fresh)[:2], 1):  # renders + exact masks stand in for photos
        shutil.copy(fresh.scenes / "images" / "render" / f"render{frame}.png", real / f"PCAM{i}.png")
        shutil.copy(fresh.scenes / "images" / "clean" / f"clean{frame}.png", real / f"g_PCAM{i}.png")
    result = promote(PromoteConfig(experiment=fresh.experiment, real_data=str(real.parent), device="cpu"), fresh.paths)
    version = _client(fresh).get_model_version(MODEL, result.version)
    logged = _client(fresh).get_run(version.run_id).data.metrics["real_miou"]
    # the same photos scored by `lunartune evaluate` on the registered version: promote scored these, not others
    out = tmp_path / "scores.json"
    assert cli_main(["--run-dir", str(fresh.paths.root), "evaluate", "--model", f"models:/{MODEL}/{result.version}",
                     "--data", str(real.parent), "--json", str(out), "--device", "cpu"]) == 0
    photos = json.loads(out.read_text())["groups"]["photos"]["metrics"]
    assert float(version.tags["real_miou"]) == pytest.approx(photos["miou"], rel=1e-5)  # tags keep 6 digits
    assert logged == pytest.approx(photos["miou"], rel=1e-9)


@pytest.mark.slow
def test_real_photos_given_at_a_later_promote_are_scored_too(fresh, tmp_path):
    first = promote(PromoteConfig(experiment=fresh.experiment, device="cpu"), fresh.paths)
    assert not any(k.startswith("real_") for k in first.metrics)
    with pytest.raises(CliError, match="--real-data .*missing: no such folder"):
        promote(PromoteConfig(experiment=fresh.experiment, real_data=str(tmp_path / "missing"), device="cpu"),
                fresh.paths)
    real = tmp_path / "real" / "real_moon_images"
    real.mkdir(parents=True)
    frame = _test_frames(fresh)[0]
    shutil.copy(fresh.scenes / "images" / "render" / f"render{frame}.png", real / "PCAM1.png")
    shutil.copy(fresh.scenes / "images" / "clean" / f"clean{frame}.png", real / "g_PCAM1.png")
    again = promote(PromoteConfig(experiment=fresh.experiment, real_data=str(real.parent), device="cpu"), fresh.paths)
    assert (again.registered, again.version) == (False, first.version)
    version = _client(fresh).get_model_version(MODEL, again.version)
    assert math.isfinite(float(version.tags["real_miou"])) and again.metrics["real_miou"] == float(version.tags["real_miou"])
    assert "real_miou" in _client(fresh).get_run(version.run_id).data.metrics


@pytest.mark.slow
def test_another_objective_ranks_trials_at_the_epoch_their_checkpoint_holds(fresh):
    # the sweep kept each trial's best.pt by val_miou: ranking by val_rock_miou's own best epoch would
    # register the weights of one epoch with the scores of another
    client = _client(fresh)
    expected = []
    for run in client.search_runs([fresh.experiment_id], filter_string="tags.backbone = 'vgg11'"):
        if run.data.tags.get("lunartune.role") != "trial":
            continue
        miou = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val_miou")}
        rock = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val_rock_miou")}
        kept = min(step for step, value in miou.items() if value == max(miou.values()))
        expected.append((rock[kept], kept, run.info.run_id))
    value, epoch, run_id = max(expected)
    result = promote(PromoteConfig(experiment=fresh.experiment, objective="val_rock_miou", device="cpu"), fresh.paths)
    version = client.get_model_version(MODEL, result.version)
    assert result.trial_run_id == run_id and version.tags["best_epoch"] == str(epoch)
    assert float(version.tags["val_rock_miou"]) == pytest.approx(value, abs=1e-6)
    assert tracking.best_checkpoint_epoch(fresh.paths.tracking_uri, run_id) == epoch


# -- bad input: a clear error, exit 1, nothing registered -------------------------------------------------

def _nothing_registered(s) -> bool:
    return not _client(s).search_registered_models() and not _promotion_runs(s)


@pytest.mark.slow
def test_unknown_experiment_is_a_clear_error(fresh, capsys):
    code = cli_main(["--run-dir", str(fresh.paths.root), "promote", "--experiment", "nope"])
    assert code == 1
    err = capsys.readouterr().err
    assert "no MLflow experiment 'nope'" in err and fresh.experiment in err
    assert _nothing_registered(fresh)


@pytest.mark.slow
def test_no_trial_of_the_backbone_is_a_clear_error(fresh):
    with pytest.raises(CliError, match=r"no finished resnet18 trial.*backbones with trials there: unet_scratch, vgg11"):
        promote(PromoteConfig(experiment=fresh.experiment, backbone="resnet18"), fresh.paths)
    with pytest.raises(CliError, match="--backbone"):
        promote(PromoteConfig(experiment=fresh.experiment, backbone="vgg12"), fresh.paths)
    for name in ("", "a/b@c"):  # before: MLflow refused it after the scoring, leaving a failed run of 140 MB
        with pytest.raises(CliError, match=f"--model-name {name!r}: expected a name of letters"):
            promote(PromoteConfig(experiment=fresh.experiment, model_name=name), fresh.paths)
    assert _nothing_registered(fresh)
    promotions = _client(fresh).search_runs([_client(fresh).get_experiment_by_name(fresh.experiment).experiment_id],
                                            filter_string="tags.`lunartune.role` = 'promotion' and attributes.status = 'FAILED'")
    assert promotions == []


def test_missing_store_is_a_clear_error(tmp_path):
    from tuner.settings import RunPaths

    with pytest.raises(CliError, match="no MLflow store"):
        promote(PromoteConfig(experiment="x"), RunPaths(root=tmp_path / "empty"))
    assert not (tmp_path / "empty" / "mlflow.db").exists()
    mistyped = tmp_path / "mlfow.db"  # a --tracking-uri sqlite:/// store that does not exist is not created either
    with pytest.raises(CliError, match=f"no MLflow store at {mistyped}"):
        promote(PromoteConfig(experiment="x"), RunPaths(root=tmp_path, tracking_uri_override=f"sqlite:///{mistyped}"))
    assert not mistyped.exists()


def _best_fake_trial(s, content: bytes | None) -> str:
    """A vgg11 trial that beats every real one, whose checkpoint is `content` (None: no file at all)."""
    client = _client(s)
    run = client.create_run(s.experiment_id, run_name="vgg11-t999", tags={
        tracking.PARENT_TAG: s.parent_run_id, tracking.ROLE_TAG: "trial", tracking.BACKBONE_TAG: "vgg11",
        tracking.STATUS_TAG: "completed", tracking.CHECKPOINT_TAG: tracking.CHECKPOINT_ARTIFACT})
    client.log_metric(run.info.run_id, "val_miou", 0.99, step=1)
    if content is not None:
        bad = s.paths.root / "best.pt"
        bad.write_bytes(content)
        client.log_artifact(run.info.run_id, str(bad), "checkpoint")
    client.set_terminated(run.info.run_id)
    return run.info.run_id


@pytest.mark.parametrize("content, says", [(None, "has no checkpoint artifact"),
                                           (b"not a torch file", "not a readable checkpoint")])
@pytest.mark.slow
def test_missing_or_corrupt_checkpoint_is_a_clear_error(fresh, content, says):
    run_id = _best_fake_trial(fresh, content)
    with pytest.raises(CliError, match=f"vgg11-t999.*{says}|{run_id}.*{says}"):
        promote(PromoteConfig(experiment=fresh.experiment), fresh.paths)
    assert _nothing_registered(fresh)


def test_checkpoint_score_reads_the_objective_at_the_epoch_the_sweep_kept(tmp_path):
    from tuner.promote import checkpoint_score

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    run_id = client.create_run(client.create_experiment("e")).info.run_id
    for epoch, (miou, rock) in enumerate([(0.50, 0.30), (0.60, 0.10), (0.60, 0.20), (0.55, float("nan"))], 1):
        tracking.log_metrics(uri, run_id, {"val_miou": miou, "val_rock_miou": rock}, step=epoch)
    assert checkpoint_score(client, run_id, "val_miou", "val_miou") == (0.60, 2)  # the first epoch at the top
    assert checkpoint_score(client, run_id, "val_rock_miou", "val_miou") == (0.10, 2)  # not its own best (0.30, 1)
    assert checkpoint_score(client, run_id, "val_rock_miou", "val_rock_miou") == (0.30, 1)


def test_promote_ranks_by_the_objective_the_sweep_optimised_unless_told_otherwise(tmp_path):
    """--objective defaulted to val_miou even for a sweep that optimised val_rock_miou."""
    from tuner.promote import sweep_objective
    from tuner.settings import RunPaths

    paths = RunPaths(root=tmp_path)
    uri = paths.tracking_uri
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment(client.create_experiment("rocks"))
    assert sweep_objective(paths, experiment) == "val_miou"  # no sweep yet
    tracking.start_parent_run(uri, experiment.experiment_id, "s1", {"objective": "val_rock_miou"}, {})
    assert sweep_objective(paths, experiment) == "val_rock_miou"


def test_a_sweeps_image_size_is_read_as_logged_now_and_before():
    from tuner.promote import _logged_size

    assert _logged_size("64x96") == _logged_size("(64, 96)") == (64, 96)


def test_a_trial_is_ranked_at_the_epoch_its_checkpoint_holds(tmp_path):
    """A trial stopped between logging epoch 2 and uploading its checkpoint (Ctrl-C, a crash, or still running)
    has epoch 2 as its history's best but epoch 1's weights in best.pt: promote used to rank (and tag) it at
    epoch 2 and register epoch 1's weights."""
    from tuner.promote import Trial, check_ranked_epoch, checkpoint_score

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    run_id = client.create_run(client.create_experiment("e")).info.run_id
    for epoch, (miou, rock) in enumerate([(0.50, 0.30), (0.70, 0.10)], 1):
        tracking.log_metrics(uri, run_id, {"val_miou": miou, "val_rock_miou": rock}, step=epoch)
    assert checkpoint_score(client, run_id, "val_miou", "val_miou") == (0.70, 2)  # no model_config.json: history
    client.log_dict(run_id, {"epoch": 1, "val_miou": 0.5}, tracking.MODEL_CONFIG_ARTIFACT)
    assert checkpoint_score(client, run_id, "val_miou", "val_miou") == (0.50, 1)
    assert checkpoint_score(client, run_id, "val_rock_miou", "val_miou") == (0.30, 1)
    trial = Trial(client.get_run(run_id), None, 0.70, 2)
    with pytest.raises(CliError, match=r"best.pt holds epoch 1, but it was ranked at epoch 2; nothing was registered"):
        check_ranked_epoch(trial, {"epoch": 1})
    check_ranked_epoch(trial, {"epoch": 2})


def test_the_trials_of_a_sweep_still_running_are_not_candidates(fresh, capsys):
    """promote during a sweep registered a trial mid-training (and moved champion to it)."""
    from tuner.promote import trials_of

    client = _client(fresh)
    assert trials_of(fresh.paths, fresh.experiment_id, "val_miou")
    client.set_tag(fresh.parent_run_id, tracking.STATUS_TAG, tracking.RUNNING)
    assert trials_of(fresh.paths, fresh.experiment_id, "val_miou") == []
    with pytest.raises(CliError, match="has no finished vgg11 trial"):
        promote(PromoteConfig(experiment=fresh.experiment), fresh.paths)
    sweep_name = client.get_run(fresh.parent_run_id).info.run_name
    assert f"sweep {sweep_name} of experiment {fresh.experiment!r} is still running" in capsys.readouterr().err
    assert _nothing_registered(fresh)


def test_an_undefined_first_score_ranks_as_the_trial_ranked_it(tmp_path):
    """val_rock_miou NaN at epoch 1 (no rock in val, none predicted), 0.0 after: the trial scored epoch 1 as
    0.0 and kept its best.pt from it; promote used to skip the NaN and score epoch 2's weights."""
    from tuner.promote import checkpoint_score

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    run_id = client.create_run(client.create_experiment("e")).info.run_id
    for epoch, rock in enumerate([float("nan"), 0.0, 0.0], 1):
        tracking.log_metrics(uri, run_id, {"val_miou": 0.4 + epoch / 10, "val_rock_miou": rock}, step=epoch)
    assert checkpoint_score(client, run_id, "val_rock_miou", "val_rock_miou") == (0.0, 1)
    assert checkpoint_score(client, run_id, "val_miou", "val_rock_miou") == (0.5, 1)
    never = client.create_run(client.get_experiment_by_name("e").experiment_id).info.run_id
    tracking.log_metrics(uri, never, {"val_rock_miou": float("nan")}, step=1)
    assert checkpoint_score(client, never, "val_rock_miou", "val_rock_miou") is None  # never defined: unranked


@pytest.mark.timeout(90)  # MLflow's own retries (~250 s) would fail it
@pytest.mark.parametrize("command", [["promote", "--experiment", "x"], ["report", "--experiment", "x"]])
def test_a_store_that_cannot_be_used_is_one_line_in_seconds(command, tmp_path, capsys):
    """Before: a server away took MLflow's retries (~250 s), then a traceback; a file that is not a
    database gave SQLAlchemy's traceback."""
    from _procs import free_port

    not_a_db = tmp_path / "notes.db"
    not_a_db.write_text("not a database")
    for uri, says in ((f"sqlite:///{not_a_db}", f"{not_a_db} is not an SQLite database"),
                      (f"http://127.0.0.1:{free_port()}", "is not reachable")):
        assert cli_main(["--run-dir", str(tmp_path / "run"), "--tracking-uri", uri, *command]) == 1
        err = capsys.readouterr().err
        assert says in err and len(err.strip().splitlines()) == 1, err
