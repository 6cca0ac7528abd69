"""`lunartune demo` end to end on a tiny DemoConfig, twice on the same run dir (slow: ~3-5 min on 2 cores)."""
from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from tuner.demo import DemoConfig, run_demo, where_to_look
from tuner.export import CARD, FORMATS
from tuner.report import FIGURES
from tuner.settings import RunPaths

TINY = DemoConfig(experiment="demo-test", samples=2, scenes=24, scene_size=(64, 64), image_size=(64, 64),
                  max_epochs=1, grace_epochs=1, device="cpu")


def _artifacts_exist(result, paths: RunPaths) -> None:
    for name in [*FIGURES, "report.md"]:
        assert (paths.root / "report" / TINY.experiment / name).is_file(), name
    for name in [*FORMATS.values(), CARD]:
        assert (paths.root / "export" / TINY.experiment / name).is_file(), name
    card = json.loads((paths.root / "export" / TINY.experiment / CARD).read_text())
    assert card["config"]["model"]["backbone"] == "vgg11" and card["source"]["spec"] == "models:/lunar-unet-demo@champion"
    client = MlflowClient(tracking_uri=paths.tracking_uri)
    assert str(client.get_registered_model("lunar-unet-demo").aliases["champion"]) == result.promotion.champion_version
    assert any(a.path == "report/report.md" for a in client.list_artifacts(result.sweep.parent_run_id, "report"))


@pytest.mark.slow
def test_demo_runs_end_to_end_and_again_on_the_same_run_dir(local_ray, tmp_path):
    paths = RunPaths(root=tmp_path / "run")
    first = run_demo(TINY, paths)
    assert first is not None and first.promotion.registered
    _artifacts_exist(first, paths)
    text = where_to_look(first, paths)
    assert str(paths.root / "report" / TINY.experiment / "report.md") in text and "ui --experiment demo-test" in text
    # the production name stays untouched: a demo model never competes with a real sweep's champion
    assert [m.name for m in MlflowClient(tracking_uri=paths.tracking_uri).search_registered_models()] == ["lunar-unet-demo"]
    from dataclasses import replace
    elsewhere = where_to_look(first, replace(paths, tracking_uri_override="http://ann:s3cret@127.0.0.1:5999"))
    assert f"--run-dir {paths.root} --tracking-uri http://ann:***@127.0.0.1:5999 ui --experiment" in elsewhere

    scenes = {p: p.stat().st_mtime_ns for p in paths.data.glob("demo-*/images/*/*.png")}
    assert len(scenes) == 2 * TINY.scenes
    second = run_demo(TINY, paths)  # a new sweep in the same experiment and Optuna study; never a crash
    assert {p: p.stat().st_mtime_ns for p in paths.data.glob("demo-*/images/*/*.png")} == scenes  # reused
    assert second is not None and second.sweep.parent_run_id != first.sweep.parent_run_id
    _artifacts_exist(second, paths)  # the first run's files would pass that: the report must be the new sweep's
    report = json.loads((paths.root / "report" / TINY.experiment / "report.json").read_text())
    assert report["parent_run_id"] == second.sweep.parent_run_id
    sweeps = MlflowClient(tracking_uri=paths.tracking_uri).search_runs(
        [first.sweep.experiment_id], filter_string="tags.`lunartune.role` = 'sweep'")
    assert len(sweeps) == 2


def test_a_bad_experiment_name_is_refused_before_any_scene_is_made(tmp_path):
    from dataclasses import replace

    from tuner.cli import CliError

    paths = RunPaths(root=tmp_path / "run")
    with pytest.raises(CliError, match="--experiment='bad name': expected a name of letters"):
        run_demo(replace(TINY, experiment="bad name"), paths)
    assert not paths.root.exists()  # no scenes, not even the run dir


def test_the_demo_space_evaluates_a_point_of_the_promoted_backbone_first():
    from tuner.cli import CliError
    from tuner.demo import demo_space

    assert demo_space("vgg11").name == "smoke.yaml"
    with pytest.raises(CliError, match="smoke.yaml: points_to_evaluate has no resnet18 point"):
        demo_space("resnet18")
