"""`--model SPEC` resolution against a real SQLite MLflow store: files, runs, registry versions and aliases."""
from __future__ import annotations

import hashlib

import pytest

from tuner.cli import CliError
from tuner.model_spec import load_model, resolve_model
from tuner.settings import RunPaths

MODEL_NAME = "lunar-unet"


def make_checkpoint(path, image_size=(64, 96), seed=0):
    """A real, tiny checkpoint (scratch U-Net, 4 channels, 2 levels): 25 kB, builds in milliseconds."""
    import torch

    import data_pipeline as dp
    from models import ModelConfig, TrainConfig, build
    from models.checkpoint import save_checkpoint

    cfg = ModelConfig(backbone="unet_scratch", scratch_width=4, scratch_depth=2)
    torch.manual_seed(seed)
    return save_checkpoint(path, build(cfg), cfg, TrainConfig(), classes=dp.class_table(), image_size=image_size,
                           normalization={"mean": dp.IMAGENET_MEAN, "std": dp.IMAGENET_STD}, epoch=1,
                           metrics={"val_miou": 0.5})


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A run dir whose SQLite store holds: a trial run with checkpoint/best.pt (tagged), a run whose
    checkpoint/ holds another name (promote's layout), a run without checkpoint, and MODEL_NAME v1 (alias
    champion) -> the trial run."""
    from mlflow.tracking import MlflowClient

    from tuner import tracking

    root = tmp_path_factory.mktemp("run-dir")
    paths = RunPaths(root=root).ensure()
    client = MlflowClient(paths.tracking_uri)
    experiment = client.create_experiment("exp", artifact_location=paths.mlflow_artifacts.as_uri())
    ckpt_dir = root / "src"
    trial = client.create_run(experiment, tags={tracking.CHECKPOINT_TAG: "checkpoint/best.pt"}).info.run_id
    client.log_artifact(trial, str(make_checkpoint(ckpt_dir / "best.pt")), "checkpoint")
    promoted = client.create_run(experiment).info.run_id
    client.log_artifact(promoted, str(make_checkpoint(ckpt_dir / "lunar-unet-v1.pt", seed=1)), "checkpoint")
    empty = client.create_run(experiment).info.run_id
    client.log_text(empty, "no weights here", "notes/readme.txt")
    client.create_registered_model(MODEL_NAME)
    client.create_model_version(MODEL_NAME, f"runs:/{trial}/checkpoint", run_id=trial)
    client.set_registered_model_alias(MODEL_NAME, "champion", "1")
    return {"paths": paths, "trial": trial, "promoted": promoted, "empty": empty,
            "best": ckpt_dir / "best.pt", "other": ckpt_dir / "lunar-unet-v1.pt"}


@pytest.mark.parametrize("form", ["models:/{name}@champion", "models:/{name}/1", "runs:/{run}",
                                  "runs:/{run}/checkpoint", "runs:/{run}/checkpoint/best.pt", "{run}"])
def test_every_mlflow_form_resolves_to_the_logged_checkpoint(store, form):
    spec = form.format(name=MODEL_NAME, run=store["trial"])
    resolved = resolve_model(spec, store["paths"])
    assert resolved.run_id == store["trial"]
    assert resolved.checkpoint_path.is_file() and resolved.checkpoint_path.name == "best.pt"
    assert digest(resolved.checkpoint_path) == digest(store["best"])
    assert resolved.model_uri == (None if form == "{run}" else spec)
    assert store["trial"] in resolved.description


def test_a_checkpoint_under_another_name_is_found_by_the_one_rule(store):
    resolved = resolve_model(store["promoted"], store["paths"])
    assert digest(resolved.checkpoint_path) == digest(store["other"])


def test_a_file_resolves_to_itself_and_loads(store):
    model, info, resolved = load_model(str(store["best"]), store["paths"])
    assert resolved.run_id is None and resolved.checkpoint_path == store["best"].resolve()
    assert tuple(info["image_size"]) == (64, 96) and not model.training


@pytest.mark.parametrize("spec, expected", [
    ("models:/nope@champion", r"no registered model 'nope'.*registered models: lunar-unet"),
    (f"models:/{MODEL_NAME}@staging", r"no alias 'staging' \(aliases: champion; versions: \[1\]\)"),
    (f"models:/{MODEL_NAME}/7", r"no version 7 \(versions: \[1\]\)"),
    (f"models:/{MODEL_NAME}", r"expected models:/NAME@ALIAS or models:/NAME/VERSION"),
    ("runs:/" + "0" * 32, r"no MLflow run '0{32}'"),
    ("f" * 32, r"no MLflow run 'f{32}'"),
    ("no/such/best.pt", r"no/such/best.pt: no such checkpoint file, and not a run id or model URI"),
])
def test_unknown_specs_are_clear_errors(store, spec, expected):
    with pytest.raises(CliError, match=expected):
        resolve_model(spec, store["paths"])


def test_a_run_without_checkpoint_artifact_is_a_clear_error(store):
    with pytest.raises(CliError, match=rf"run {store['empty']} has no checkpoint artifact under checkpoint/"):
        resolve_model(store["empty"], store["paths"])


def test_a_corrupt_checkpoint_names_the_file(tmp_path, store):
    bad = tmp_path / "best.pt"
    bad.write_bytes(b"not a zip archive")
    with pytest.raises(CliError, match=rf"{bad}: not a readable checkpoint"):
        load_model(str(bad), store["paths"])
    with pytest.raises(CliError, match="is a folder, expected a checkpoint file"):
        resolve_model(str(tmp_path), store["paths"])


def test_a_missing_store_is_not_created_as_a_side_effect(tmp_path):
    paths = RunPaths(root=tmp_path / "empty-run-dir")
    with pytest.raises(CliError, match=r"no MLflow store at .*mlflow.db"):
        resolve_model(f"models:/{MODEL_NAME}@champion", paths)
    assert not paths.mlflow_db.exists()


@pytest.mark.timeout(90)  # MLflow's own retries (~4 minutes) would fail it
def test_a_tracking_server_that_is_away_or_refuses_is_one_line_in_seconds(tmp_path):
    # before: MLflow's own retries for ~4 minutes, then a traceback (a 401 server: a traceback at once)
    import http.server
    import threading

    from _procs import free_port

    class Refusing(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(401)
            self.end_headers()

        def log_message(self, *args):
            pass

    away = RunPaths(root=tmp_path, tracking_uri_override=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(CliError, match=r"MLflow tracking server http://127\.0\.0\.1:\d+ is not reachable") as away_err:
        resolve_model("models:/lunar-unet@champion", away)
    assert "\n" not in str(away_err.value)
    server = http.server.HTTPServer(("127.0.0.1", 0), Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        refusing = RunPaths(root=tmp_path, tracking_uri_override=f"http://127.0.0.1:{server.server_port}")
        with pytest.raises(CliError, match=r"is not reachable \(HTTP 401") as refused:
            resolve_model("runs:/0123456789abcdef0123456789abcdef", refusing)
        assert "\n" not in str(refused.value)
    finally:
        server.shutdown()
