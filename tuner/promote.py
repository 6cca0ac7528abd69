"""`lunartune promote`: register the best trial of a backbone in the MLflow Model Registry; move aliases.

What it does, in an order that fails before anything is written:

1. finds the experiment and, over every sweep (parent run) in it, the trial (child run) of `--backbone`
   with the best value of `--objective` at the epoch its checkpoint/best.pt holds (errored and diverged
   trials excluded); that epoch is the best by the objective the sweep ran with, which may be another;
2. downloads that trial's best checkpoint and rebuilds the model from it (a missing or corrupt file is a
   clear error);
3. re-scores it on the sweep's held-out TEST split (never val: val chose it), found from the parameters
   the sweep logged on its parent run, and on real photos with g_* masks when `--real-data` is given;
4. logs a "promotion" run in the same experiment: the model (`mlflow.pytorch.log_model`, pickled so any
   input size works), the checkpoint file under `checkpoint/` (so `models:/NAME@ALIAS` resolves to it),
   the test metrics; registers it as a new version tagged with the trial, its config and test metrics;
5. points alias `challenger` at the version and moves `champion` only if the version's test score beats
   the champion's on the same split (or with --force).

Idempotent: a version registered from the same trial run and the same checkpoint bytes (sha256) is
reused; nothing new is logged or registered, only the aliases are re-applied.
"""
from __future__ import annotations

import ast
import contextlib
import fcntl
import hashlib
import json
import math
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from tuner.cli import CliError
from tuner.objective import best_epoch
from tuner.objective import score as objective_score
from tuner.settings import RunPaths

ROLE_PROMOTION = "promotion"  # lunartune.role of promotion runs (sweeps are "sweep", trials "trial")
CHALLENGER, CHAMPION = "challenger", "champion"
TEST_GROUP, REAL_GROUP = "test", "real"  # metric prefixes: test_miou, real_iou_sky, ...
TEST_SCORE = {"val_miou": "test_miou", "val_rock_miou": "test_rock_miou"}  # what the champion is judged on
EXCLUDED_STATUSES = ("errored", "diverged")  # their checkpoints are not trustworthy candidates
MODEL_ARTIFACT = "model"  # name of the logged MLflow model inside the promotion run
# version tags (also read back for idempotency and the champion comparison)
TAG_TRIAL_RUN, TAG_SHA, TAG_MANIFEST = "trial_run_id", "checkpoint_sha256", "manifest_hash"


@dataclass(frozen=True)
class PromoteConfig:
    experiment: str  # MLflow experiment holding the sweep(s)
    backbone: str = "vgg11"  # registry name (or alias) of the backbone whose best trial is promoted
    objective: str | None = None  # val_miou | val_rock_miou: ranks the trials; None = the sweep's (else val_miou)
    model_name: str = "lunar-unet"  # registered model name
    real_data: str | None = None  # Kaggle-layout folder with real_moon_images + g_* masks; None = skip
    force: bool = False  # move `champion` even when the new version does not beat it
    device: str = "auto"  # where the test split is scored


@dataclass(frozen=True)
class Trial:
    run: object  # mlflow Run of the trial (child run)
    parent: object  # mlflow Run of its sweep (parent run)
    best_value: float  # the objective's value at best_epoch
    best_epoch: int  # the epoch of the trial's checkpoint/best.pt

    @property
    def run_id(self) -> str:
        return self.run.info.run_id

    @property
    def name(self) -> str:
        return self.run.info.run_name or self.run_id


@dataclass(frozen=True)
class SweepData:
    """The data set and split a sweep trained on, as it is on disk now."""
    root: Path  # Kaggle-layout folder
    mask_source: str  # clean | ground
    allow_missing: bool
    exclude_mismatches: bool
    manifest: object  # data_pipeline.SplitManifest as it is now (its hash was compared to the logged one)

    def test_set(self):
        from data_pipeline import load_eval_set
        return load_eval_set(self.root, "render", self.mask_source, frames=self.manifest.splits["test"],
                             allow_missing=self.allow_missing, exclude_mismatches=self.exclude_mismatches)


@dataclass(frozen=True)
class PromoteResult:
    model_name: str
    version: str  # registered version number
    registered: bool  # False: an identical version existed (idempotent re-run)
    trial: str  # trial run name
    trial_run_id: str
    promotion_run_id: str  # run that holds the logged model and checkpoint/
    test_score: float  # TEST_SCORE[objective] of the version on the current test split
    champion_moved: bool
    champion_version: str | None  # after this call
    reason: str  # one line: why champion moved or not
    metrics: dict  # test_* / real_* metrics of the version


# ----------------------------------------------------------------------------- MLflow store and lookups

def open_client(paths: RunPaths):
    """MlflowClient of the run dir's store; refuses to create an empty SQLite file as a side effect, and an
    unusable store (a server away, a file that is not a database) is one line in seconds."""
    from mlflow.tracking import MlflowClient

    from tuner import tracking

    missing = paths.missing_store()
    if missing is not None:
        raise CliError(f"no MLflow store at {missing}; run `lunartune tune` first, or pass the "
                       f"--run-dir / --tracking-uri of the sweep")
    tracking.bound_http_retries()  # MLflow's own retries of a server that went away take minutes
    try:
        tracking.check_reachable(paths.tracking_uri)
    except tracking.TrackingError as err:
        raise CliError(str(err)) from None
    return MlflowClient(tracking_uri=paths.tracking_uri)


def sweep_objective(paths: RunPaths, experiment) -> str:
    """The objective the experiment's sweeps optimised (one per experiment: a sweep with another is refused),
    as its latest parent run logged it; val_miou if it has none or logged something promote cannot rank by."""
    from tuner import tracking

    try:
        logged = tracking.latest_parent_run(paths.tracking_uri, experiment.experiment_id).data.params.get("objective")
    except tracking.TrackingError:
        return "val_miou"  # no sweep: best_trial says so, naming the experiment
    return logged if logged in TEST_SCORE else "val_miou"


def find_experiment(paths: RunPaths, name: str):
    from tuner import tracking

    open_client(paths)
    try:
        return tracking.find_experiment(paths.tracking_uri, name)
    except tracking.TrackingError as err:
        raise CliError(str(err)) from None


def sweep_runs(paths: RunPaths, experiment_id: str) -> list:
    """Every sweep (parent run) of the experiment, newest first."""
    from tuner import tracking

    return open_client(paths).search_runs([experiment_id], filter_string=f"tags.`{tracking.ROLE_TAG}` = 'sweep'",
                                          order_by=["attributes.start_time DESC"], max_results=1000)


def best_of_history(client, run_id: str, metric: str) -> tuple[float, int] | None:
    """(score, epoch) of the best epoch in a metric's history by the trial's own rule (tuner.objective:
    NaN scores 0, the first epoch with the top score wins; its checkpoint/best.pt is that epoch's); None if
    no epoch has a finite value."""
    return best_epoch([(m.step, m.value) for m in client.get_metric_history(run_id, metric)])


def checkpoint_score(client, run_id: str, objective: str, kept_by: str) -> tuple[float, int] | None:
    """(objective's value, epoch) at the epoch the trial's checkpoint/best.pt holds, which the trial kept by
    the sweep's objective `kept_by`. The epoch comes from the checkpoint's model_config.json, not from the
    metric history: a trial stopped between logging an epoch and uploading its checkpoint (Ctrl-C, a crash)
    logged a best epoch whose weights were never saved; ranking by another objective's best epoch would
    register another epoch's weights too. The history's rule (best_of_history) stands in for a trial whose
    model_config.json is missing (fetch_checkpoint then says what is wrong). None if there is no finite
    value there."""
    from tuner import tracking

    epoch = tracking.described_epoch(client, run_id)
    if epoch is None:
        kept = best_of_history(client, run_id, kept_by)
        if kept is None or objective == kept_by:
            return kept
        epoch = kept[1]
    history = {m.step: m.value for m in client.get_metric_history(run_id, objective)}
    value = history.get(epoch, math.nan)
    if objective == kept_by and epoch in history and any(math.isfinite(v) for v in history.values()):
        value = objective_score(value)  # as the trial ranked it: an undefined score is 0
    return (value, epoch) if math.isfinite(value) else None


def trials_of(paths: RunPaths, experiment_id: str, objective: str, backbone: str | None = None) -> list[Trial]:
    """Scored trials of every finished or interrupted sweep of the experiment (optionally one backbone), best
    first. A sweep still running is left out: its trials' checkpoints may still change (running_sweeps)."""
    from tuner import tracking

    client = open_client(paths)
    found = []
    for parent in sweep_runs(paths, experiment_id):
        if parent.data.tags.get(tracking.STATUS_TAG) == tracking.RUNNING:
            continue
        kept_by = parent.data.params.get("objective", objective)  # what the sweep's trials kept best.pt by
        for run in tracking.child_runs(paths.tracking_uri, experiment_id, parent.info.run_id, backbone=backbone):
            if run.data.tags.get(tracking.STATUS_TAG) in EXCLUDED_STATUSES:
                continue
            best = checkpoint_score(client, run.info.run_id, objective, kept_by)
            if best is not None:
                found.append(Trial(run, parent, best[0], best[1]))
    # ties: the earlier trial wins, so a re-run of promote picks the same one
    return sorted(found, key=lambda t: (-t.best_value, t.run.info.start_time))


def running_sweeps(paths: RunPaths, experiment_id: str) -> list[str]:
    """Names of the experiment's sweeps whose parent run says running: in flight, or killed and not resumed."""
    from tuner import tracking

    return [p.info.run_name or p.info.run_id for p in sweep_runs(paths, experiment_id)
            if p.data.tags.get(tracking.STATUS_TAG) == tracking.RUNNING]


def best_trial(paths: RunPaths, experiment, backbone: str, objective: str) -> Trial:
    from tuner import tracking

    running = running_sweeps(paths, experiment.experiment_id)
    if running:
        print(f"lunartune promote: warning: sweep {', '.join(running)} of experiment {experiment.name!r} is still "
              f"running, or was killed (`lunartune tune --resume` ends it): its trials are not candidates",
              file=sys.stderr)
    trials = trials_of(paths, experiment.experiment_id, objective, backbone)
    if trials:
        return trials[0]
    others = sorted({t.run.data.tags.get(tracking.BACKBONE_TAG, "?")
                     for t in trials_of(paths, experiment.experiment_id, objective)})
    raise CliError(f"experiment {experiment.name!r} has no finished {backbone} trial with a {objective} "
                   f"(backbones with trials there: {', '.join(others) or 'none'}); run a sweep whose space "
                   f"includes {backbone}")


# ----------------------------------------------------------------------------- the sweep's data and split

def _flag(value: str | None) -> bool:
    return str(value).lower() == "true"


def sweep_data_root(paths: RunPaths, params: dict) -> Path:
    """The data folder a sweep trained on: the logged data_root, else rebuilt from its `data` param."""
    from tuner.sweep import SYNTHETIC
    from tuner.train import synthetic_root

    if params.get("data_root"):
        return Path(params["data_root"])
    if params.get("data") == SYNTHETIC:
        return synthetic_root(paths, int(params["synthetic_count"]), int(params["seed"]))
    if not params.get("data"):
        raise CliError("the sweep's parent run logs no `data` parameter: cannot find its test split")
    return Path(params["data"]).expanduser()


def sweep_data(paths: RunPaths, parent) -> SweepData:
    """The data set + split manifest of a sweep, read through the same code path the sweep used."""
    import data_pipeline

    params = parent.data.params
    root = sweep_data_root(paths, params)
    if not root.is_dir():
        raise CliError(f"the data folder of sweep {parent.info.run_name} ({root}) no longer exists: "
                       f"cannot score on its test split")
    cfg = data_pipeline.DataConfig(
        root=str(root.resolve()), image_size=_logged_size(params.get("image_size", "64x64")),
        mask_source=params.get("mask_source", "clean"), allow_missing=_flag(params.get("allow_missing")),
        # a sweep of an older lunartune may have asked for it where the file is missing (then a silent no-op)
        exclude_mismatches=_flag(params.get("exclude_mismatches")) and (root / data_pipeline.MISMATCH_FILE).is_file(),
        progress=False)
    try:
        manifest = data_pipeline.prepare_dataset(cfg)
    except data_pipeline.DataError as err:
        raise CliError(f"the data of sweep {parent.info.run_name}: {err}") from None
    if not manifest.splits["test"]:
        raise CliError(f"the split of {root} ({manifest.path}) has an empty test split: nothing to score on")
    logged = params.get("manifest_hash")
    if logged and logged != manifest.hash:
        # the split keeps its frames when only file contents changed; the score is then on today's files
        print(f"lunartune: warning: the data of sweep {parent.info.run_name} changed since it ran (split "
              f"manifest {logged} -> {manifest.hash}); scoring on {manifest.path} as it is now", file=sys.stderr)
    return SweepData(Path(cfg.root), cfg.mask_source, cfg.allow_missing, cfg.exclude_mismatches, manifest)


def _logged_size(text: str) -> tuple[int, int]:
    """A sweep's image_size param: "64x96" (as the trials log it), or "(64, 96)" from sweeps before that."""
    if "x" in text:
        height, width = text.split("x")
        return int(height), int(width)
    return tuple(ast.literal_eval(text))


def _real_set(real_data: str):
    from data_pipeline import DataError, load_eval_set

    root = Path(real_data).expanduser()
    if not root.is_dir():
        raise CliError(f"--real-data {root}: no such folder")
    try:
        photos = load_eval_set(root, "real")
    except DataError as err:
        raise CliError(f"--real-data {root}: {err}") from None
    if not len(photos):
        raise CliError(f"--real-data {root}: no real photos with g_* masks under real_moon_images/")
    return photos


# ----------------------------------------------------------------------------- checkpoint and scoring

def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_checkpoint(paths: RunPaths, trial: Trial, folder: Path):
    """(local checkpoint file, model, info) of a trial; CliError if missing or unreadable."""
    from models.checkpoint import CheckpointError, model_from_checkpoint
    from models.config import ConfigError
    from tuner import tracking

    try:
        local = tracking.download_checkpoint(paths.tracking_uri, trial.run_id, folder)
    except tracking.TrackingError as err:
        raise CliError(f"trial {trial.name}: {err}") from None
    try:
        model, info = model_from_checkpoint(local)
    except (CheckpointError, ConfigError) as err:
        raise CliError(f"trial {trial.name} (run {trial.run_id}): {err}") from None
    return local, model, info


@contextlib.contextmanager
def registry_lock(paths: RunPaths, model_name: str):
    """One promote of a model name at a time in a run dir (an flock; a second one waits, then finds the
    version the first registered). Without it, two at once both found no version of the trial, registered
    it twice and split the aliases. Promotes from other run dirs sharing an MLflow server are not ordered."""
    path = paths.root / "promote" / f"{model_name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"lunartune promote: waiting for another promote of {model_name!r} ({path})", file=sys.stderr,
                  flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def check_ranked_epoch(trial: Trial, info: dict) -> None:
    """The downloaded weights are of the epoch the trial was ranked at; else its upload was cut between
    checkpoint/best.pt and model_config.json, and registering them would attach another epoch's score."""
    from tuner import tracking

    if info.get("epoch") != trial.best_epoch:
        raise CliError(f"trial {trial.name} (run {trial.run_id}): {tracking.CHECKPOINT_ARTIFACT} holds epoch "
                       f"{info.get('epoch')}, but it was ranked at epoch {trial.best_epoch}; nothing was "
                       f"registered (`lunartune tune --resume` of its sweep uploads the checkpoint again)")


def score(model, info, eval_sets: dict, device) -> dict[str, float]:
    """{test_miou, test_iou_sky, ..., real_miou, ...}: finite metrics of each group."""
    from data_pipeline import DataError
    from tuner.evaluate import evaluate_model, flat_metrics

    try:
        return flat_metrics(evaluate_model(model, info, eval_sets, device), prefix="")
    except DataError as err:
        raise CliError(f"scoring failed, nothing was registered: {err}") from None


# ----------------------------------------------------------------------------- registry

def existing_version(client, name: str, trial_run_id: str, sha: str):
    """The version already registered from this trial run with these checkpoint bytes, or None."""
    for version in client.search_model_versions(f"name = '{name}'"):
        tags = version.tags or {}
        if tags.get(TAG_TRIAL_RUN) == trial_run_id and tags.get(TAG_SHA) == sha:
            return version
    return None


def version_by_alias(client, name: str, alias: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:  # no such model or alias
        return None


@contextlib.contextmanager
def _fluent_uri(uri: str):
    """mlflow.pytorch.log_model, and the registry's check of a models:/m-... source, only use the process-wide
    tracking URI: point it at `uri` for this block, then restore it (the rest of lunartune passes URIs
    explicitly; without this the registry would look in ./mlflow.db)."""
    import mlflow
    from mlflow.tracking import is_tracking_uri_set

    # None restores "unset"; get_tracking_uri() would give the default ./mlflow.db, which a later fluent
    # call in this process would then create in the current directory
    previous = mlflow.get_tracking_uri() if is_tracking_uri_set() else None
    mlflow.set_tracking_uri(uri)
    try:
        yield mlflow
    finally:
        mlflow.set_tracking_uri(previous)


@contextlib.contextmanager
def _quiet_pickle_warning():
    """Pickle is chosen on purpose (pt2 would fix the input size); MLflow's warning about it is noise here."""
    import logging

    logger = logging.getLogger("mlflow.pytorch")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _signature(model, info):
    """Batch and spatial axes are free (the pickled model takes any size), channels fixed."""
    import numpy as np
    import torch
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    height, width = info["image_size"]
    example = np.random.default_rng(0).standard_normal((1, 3, height, width)).astype(np.float32)
    with torch.no_grad():
        classes = model(torch.from_numpy(example)).shape[1]
    signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3, -1, -1))]),
                               outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, classes, -1, -1))]))
    return signature, example


def _pip_requirements() -> list[str]:
    # given explicitly: inferring them loads the model again and costs seconds per call
    import numpy
    import segmentation_models_pytorch
    import torch

    return [f"torch=={torch.__version__.split('+')[0]}", f"numpy=={numpy.__version__}",
            f"segmentation-models-pytorch=={segmentation_models_pytorch.__version__}"]


def publish(paths: RunPaths, cfg: PromoteConfig, experiment_id: str, trial: Trial, checkpoint: Path, model,
            info, metrics: dict, tags: dict):
    """A "promotion" run holding the model, checkpoint/best.pt and the test metrics, registered as a new
    version. The run ends FAILED if anything fails (no version is registered then)."""
    from tuner import tracking

    client = open_client(paths)
    model = model.cpu()  # scoring may have moved it to the GPU: the registered model must load on any machine
    run = client.create_run(experiment_id, run_name=f"promote-{trial.name}", tags={
        **tracking.source_tags("promote"), tracking.ROLE_TAG: ROLE_PROMOTION, tracking.BACKBONE_TAG: info["model_config"].backbone,
        "source_trial_run_id": trial.run_id, "source_sweep_run_id": trial.parent.info.run_id,
        tracking.CHECKPOINT_TAG: tracking.CHECKPOINT_ARTIFACT})
    run_id = run.info.run_id
    try:
        tracking.log_params(paths.tracking_uri, run_id, {**info["model_config"].to_dict(),
                                                        **info["train_config"].to_dict()})
        tracking.log_metrics(paths.tracking_uri, run_id, {**metrics, cfg.objective: trial.best_value}, step=0)
        client.log_artifact(run_id, str(checkpoint), str(Path(tracking.CHECKPOINT_ARTIFACT).parent))
        signature, example = _signature(model, info)
        with _fluent_uri(paths.tracking_uri) as mlflow, mlflow.start_run(run_id=run_id), _quiet_pickle_warning(), \
                tempfile.TemporaryDirectory(prefix="lunartune-code-") as code:
            model_info = mlflow.pytorch.log_model(
                model, name=MODEL_ARTIFACT, signature=signature, input_example=example,
                serialization_format="pickle", pip_requirements=_pip_requirements(),
                code_paths=[_models_package(Path(code))])
            version = register(client, cfg.model_name, run_id, model_info, tags,
                               version_description(trial, info, metrics, cfg.objective))
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    return version


def _models_package(folder: Path) -> str:
    """A copy of the `models` package (no bytecode) to log beside the pickled model: the hand-built U-Net
    pickles lunartune's own class (models.unet_scratch.UNetScratch), which mlflow.pytorch.load_model
    outside this checkout could not import; MLflow puts the copy on sys.path when it loads the model."""
    import models

    target = folder / "models"
    shutil.copytree(Path(models.__file__).parent, target, ignore=shutil.ignore_patterns("__pycache__"))
    return str(target)


def version_description(trial: Trial, info, metrics: dict, objective: str) -> str:
    """What a user of the registry needs without reading lunartune: where the version comes from, how it
    scored, and the input and output it expects."""
    from models.registry import size_multiple

    norm, height_width = info["normalization"], "x".join(str(v) for v in info["image_size"])
    classes = ", ".join(f"{c['index']} {c['name']}" for c in sorted(info["classes"], key=lambda c: c["index"]))
    scores = ", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items()) if k.endswith(("miou", "pixel_acc")))
    return (f"{info['model_config'].backbone} U-Net from trial {trial.name} (run {trial.run_id}) of sweep "
            f"{trial.parent.info.run_name}, best epoch {trial.best_epoch} by {objective} "
            f"({trial.best_value:.4f}). Scores: {scores or 'none'}.\n"
            f"Input: float32 NCHW RGB, pixel values scaled to [0, 1], then normalised per channel with mean "
            f"{[round(v, 4) for v in norm['mean']]} and std {[round(v, 4) for v in norm['std']]}; trained at "
            f"{height_width} (HxW), any size whose sides divide by {size_multiple(info['model_config'])} works. Output: float32 logits "
            f"(N, {len(info['classes'])}, H, W); argmax over dim 1 gives the class: {classes}.")


def version_tags(trial: Trial, sha: str, info, metrics: dict, data: SweepData, objective: str) -> dict:
    from tuner import tracking

    config = {"model_config": info["model_config"].to_dict(), "train_config": info["train_config"].to_dict(),
              "image_size": list(info["image_size"])}
    return {TAG_TRIAL_RUN: trial.run_id, "trial_name": trial.name, TAG_SHA: sha,
            "sweep_run_id": trial.parent.info.run_id, "ray_trial_id": trial.run.data.tags.get(tracking.TRIAL_ID_TAG, ""),
            tracking.BACKBONE_TAG: info["model_config"].backbone, "objective": objective,
            objective: f"{trial.best_value:.6f}", "best_epoch": str(trial.best_epoch),
            TAG_MANIFEST: data.manifest.hash, "split_test_images": str(len(data.manifest.splits["test"])),
            "config": json.dumps(config, sort_keys=True), **{k: f"{v:.6f}" for k, v in metrics.items()}}


def add_scores(paths: RunPaths, version, metrics: dict):
    """Scores of an already registered version (real photos given at a later promote): they replace its tags'
    and go to its promotion run as metrics, like the scores it was registered with."""
    from tuner import tracking

    client = open_client(paths)
    for key, value in metrics.items():
        client.set_model_version_tag(version.name, version.version, key, f"{value:.6f}")
    tracking.log_metrics(paths.tracking_uri, version.run_id, metrics, step=0)
    return client.get_model_version(version.name, version.version)


def register(client, name: str, run_id: str, model_info, tags: dict, description: str):
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name, description="lunartune: U-Net for lunar-surface segmentation")
    except MlflowException as err:
        if getattr(err, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
            raise
    return client.create_model_version(name, source=model_info.model_uri, run_id=run_id, tags=tags,
                                       model_id=model_info.model_id, description=description)


# ----------------------------------------------------------------------------- the champion decision

def score_on_split(paths: RunPaths, name: str, version, data: SweepData, metric: str, device) -> float:
    """The version's `metric` on this split: from its tags when scored on the same manifest, else re-scored."""
    tags = version.tags or {}
    if tags.get(TAG_MANIFEST) == data.manifest.hash and metric in tags:
        return float(tags[metric])
    from tuner.model_spec import load_model

    model, info, _ = load_model(f"models:/{name}/{version.version}", paths)
    return score(model, info, {TEST_GROUP: data.test_set()}, device).get(metric, 0.0)


def decide_champion(paths: RunPaths, cfg: PromoteConfig, version, data: SweepData, device) -> tuple[bool, str, float]:
    """Point `challenger` at `version`; move `champion` if it wins. (moved, reason, version's score). Both
    scores come first: a champion whose checkpoint cannot be loaded fails the promote with no alias moved."""
    client = open_client(paths)
    metric = TEST_SCORE[cfg.objective]
    mine = score_on_split(paths, cfg.model_name, version, data, metric, device)
    champion = version_by_alias(client, cfg.model_name, CHAMPION)
    if champion is not None and str(champion.version) == str(version.version):
        client.set_registered_model_alias(cfg.model_name, CHALLENGER, version.version)
        return False, f"version {version.version} is already the champion", mine
    if champion is None:
        moved, reason = True, "there was no champion"
    else:
        theirs = score_on_split(paths, cfg.model_name, champion, data, metric, device)
        beats = mine > theirs
        moved = beats or cfg.force
        reason = (f"{metric} {mine:.4f} {'>' if beats else '<='} champion v{champion.version}'s {theirs:.4f} "
                  f"on the same test split" + (" (--force)" if cfg.force and not beats else ""))
    client.set_registered_model_alias(cfg.model_name, CHALLENGER, version.version)
    if moved:
        client.set_registered_model_alias(cfg.model_name, CHAMPION, version.version)
    return moved, reason, mine


# ----------------------------------------------------------------------------- the command

def promote(cfg: PromoteConfig, paths: RunPaths) -> PromoteResult:
    from models import ConfigError, canonical_backbone
    from models.training import resolve_device

    try:
        backbone = canonical_backbone(cfg.backbone)
    except ConfigError as err:
        raise CliError(f"--backbone: {err}") from None
    if cfg.objective is not None and cfg.objective not in TEST_SCORE:
        raise CliError(f"--objective {cfg.objective!r}: expected one of {', '.join(TEST_SCORE)}")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", cfg.model_name):  # it goes into models:/NAME@alias URIs
        raise CliError(f"--model-name {cfg.model_name!r}: expected a name of letters, digits, '.', '_' or '-'")
    real = _real_set(cfg.real_data) if cfg.real_data else None  # a bad folder fails before anything is done
    experiment = find_experiment(paths, cfg.experiment)
    cfg = replace(cfg, objective=cfg.objective or sweep_objective(paths, experiment))
    trial = best_trial(paths, experiment, backbone, cfg.objective)
    device = resolve_device(cfg.device)
    client = open_client(paths)
    with tempfile.TemporaryDirectory(prefix="lunartune-promote-") as folder:
        checkpoint, model, info = fetch_checkpoint(paths, trial, Path(folder))
        check_ranked_epoch(trial, info)
        sha = sha256_of(checkpoint)
        data = sweep_data(paths, trial.parent)
        with registry_lock(paths, cfg.model_name):
            version = existing_version(client, cfg.model_name, trial.run_id, sha)
            registered = version is None
            if registered:
                eval_sets = {TEST_GROUP: data.test_set(), **({REAL_GROUP: real} if real is not None else {})}
                metrics = score(model, info, eval_sets, device)
                tags = version_tags(trial, sha, info, metrics, data, cfg.objective)
                version = publish(paths, cfg, experiment.experiment_id, trial, checkpoint, model, info, metrics, tags)
            elif real is not None:  # scored on the real photos now: on the version and its promotion run
                version = add_scores(paths, version, score(model, info, {REAL_GROUP: real}, device))
            moved, reason, mine = decide_champion(paths, cfg, version, data, device)
    champion = version_by_alias(client, cfg.model_name, CHAMPION)
    tags = version.tags or {}
    return PromoteResult(cfg.model_name, str(version.version), registered, trial.name, trial.run_id, version.run_id,
                         mine, moved, str(champion.version) if champion else None, reason,
                         {k: float(v) for k, v in tags.items() if k.startswith((TEST_GROUP + "_", REAL_GROUP + "_"))})


def config_from_args(args) -> PromoteConfig:
    return PromoteConfig(experiment=args.experiment, backbone=args.backbone, objective=args.objective,
                         model_name=args.model_name, real_data=args.real_data, force=args.force)


def format_result(result: PromoteResult) -> str:
    what = "registered" if result.registered else "already registered (same trial, same checkpoint bytes)"
    lines = [f"{result.model_name} version {result.version}: {what}",
             f"  from trial {result.trial} (run {result.trial_run_id}); promotion run {result.promotion_run_id}",
             f"  test score {result.test_score:.4f}; alias {CHALLENGER} -> v{result.version}",
             f"  {CHAMPION}: {'moved to v' + result.version if result.champion_moved else 'unchanged (v' + str(result.champion_version) + ')'}"
             f" - {result.reason}"]
    lines += [f"  {k:<24} {v:.4f}" for k, v in sorted(result.metrics.items())]
    lines.append(f"  load it: models:/{result.model_name}@{CHAMPION}")
    return "\n".join(lines)


def main(args, paths: RunPaths) -> int:
    result = promote(config_from_args(args), paths)
    print(format_result(result))
    return 0

