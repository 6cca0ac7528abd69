"""The thin Ray trainable: Ray's flat trial dict -> frozen configs (in `configs_from_trial`, the only place),
resume from `tune.get_checkpoint()`, loop epochs over models.training's pure functions, log each epoch to
the trial's MLflow child run (step = epoch) and `tune.report(metrics, checkpoint=...)`.

Why log from here rather than with MLflowLoggerCallback: the trial knows its child run id, stores it in
its checkpoint (a resumed or retried trial continues the same run) and uploads its own best checkpoint;
the callback would give neither a parent run nor checkpoints. Final status tags (pruned vs completed) are
only known on the driver: `tuner.sweep.TrialStatusCallback` sets them.
"""
from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, fields, replace
from pathlib import Path

import ray
from ray import tune

import data_pipeline
from data_pipeline import DataConfig
from models import ModelConfig, TrainConfig, build, validate, validate_train
from models.checkpoint import load_checkpoint, save_checkpoint
from models.losses import make_loss, median_frequency_weights
from models.training import (DivergedError, evaluate, make_optimizer, make_scheduler, prepare_model,
                             resolve_device, seed_everything, train_one_epoch)
from tuner import tracking
from tuner.searcher import DIVERGED

EPOCH = "epoch"  # reported every epoch; ASHA's time attribute (survives restores, unlike a counter)
RUN_ID = "mlflow_run_id"  # reported so the driver's callback finds the child run without a search
STATE_FILE = "trial.pt"  # inside each Ray checkpoint: weights + optimizer/scheduler + trial state
BEST_FILE = "best.pt"  # uploaded to MLflow as checkpoint/best.pt: weights only (no optimizer: 1/3 the size)
_MODEL_FIELDS = frozenset(f.name for f in fields(ModelConfig))
_TRAIN_FIELDS = frozenset(f.name for f in fields(TrainConfig))


@dataclass(frozen=True)
class TrialSetup:
    """What every trial of a sweep shares; handed over with tune.with_parameters (reaches every node)."""

    data: DataConfig  # split and cache already built on the driver: trials only read them
    model: ModelConfig  # defaults under the searched/fixed values
    train: TrainConfig  # epochs = the sweep's max epochs, seed, device
    objective: str  # val_miou | val_rock_miou: what "best" means for checkpoints
    tracking: tracking.TrackingTarget  # MLflow URI, experiment and parent run


def configs_from_trial(config: dict, setup: TrialSetup) -> tuple[DataConfig, ModelConfig, TrainConfig]:
    """The one place Ray's flat dict becomes frozen configs (ConfigError names a bad field)."""
    model = validate(replace(setup.model, **{k: v for k, v in config.items() if k in _MODEL_FIELDS}))
    train = validate_train(replace(setup.train, **{k: v for k, v in config.items() if k in _TRAIN_FIELDS}))
    data = replace(setup.data, batch_size=train.batch_size, augment=config.get("augment", setup.data.augment),
                   seed=train.seed, progress=False)
    return data, model, train


def train_trial(config: dict, setup: TrialSetup) -> None:
    """Ray Tune function trainable (wrap with tune.with_parameters(train_trial, setup=...))."""
    data_cfg, model_cfg, train_cfg = configs_from_trial(config, setup)
    seed_everything(train_cfg.seed)
    loaders = data_pipeline.make_loaders(data_cfg)
    device = resolve_device(train_cfg.device)
    model = prepare_model(build(model_cfg), device, train_cfg)
    weights = median_frequency_weights(loaders.class_frequencies) if train_cfg.loss == "weighted_ce" else None
    loss_fn = make_loss(train_cfg, weights).to(device)
    optimizer = make_optimizer(model, train_cfg)
    scheduler = make_scheduler(optimizer, train_cfg, steps_per_epoch=len(loaders.train))
    epoch, best, run_id = _restore(tune.get_checkpoint(), model, optimizer, scheduler)
    run_id = run_id or _open_child_run(model_cfg, train_cfg, setup)
    names, extras = list(data_pipeline.CLASS_NAMES), dict(amp=train_cfg.amp, channels_last=train_cfg.channels_last)
    for epoch in range(epoch + 1, train_cfg.epochs + 1):
        loaders.train.sampler.set_epoch(epoch - 1)  # a resumed trial sees the batches it would have seen
        try:
            train = train_one_epoch(model, loaders.train, optimizer, loss_fn, device, scheduler, epoch=epoch, **extras)
        except DivergedError:
            # the worst score, flagged: the searcher tells Optuna PRUNED, the callback tags "diverged"
            tune.report({setup.objective: 0.0, DIVERGED: True, EPOCH: epoch, RUN_ID: run_id})
            return
        val = evaluate(model, loaders.val, device, loss_fn, names, data_pipeline.ROCK_CLASS_IDS, **extras)
        metrics = epoch_metrics(train, val, epoch)
        tracking.log_metrics(setup.tracking.uri, run_id, metrics, step=epoch)
        score = _objective(metrics, setup.objective)
        improved = best is None or score > best
        best = score if improved else best
        with tempfile.TemporaryDirectory() as folder:
            state = dict(run_id=run_id, best=best, manifest_hash=loaders.manifest_hash)
            _save(Path(folder) / STATE_FILE, model, model_cfg, train_cfg, data_cfg, epoch, metrics,
                  optimizer, scheduler, state)
            if improved:
                _upload_best(Path(folder), model, model_cfg, train_cfg, data_cfg, epoch, metrics, state, setup)
            tune.report({**metrics, setup.objective: score, RUN_ID: run_id, DIVERGED: False},
                        checkpoint=tune.Checkpoint.from_directory(folder))


def epoch_metrics(train: dict, val: dict, epoch: int) -> dict:
    """The per-epoch metric names MLflow and Ray both see."""
    return {"train_loss": train["loss"], "lr": train["lr"], "epoch_seconds": train["seconds"], EPOCH: epoch,
            **{f"val_{k}": v for k, v in val.items()}}


def _objective(metrics: dict, name: str) -> float:
    """NaN (a class absent from val in truth and prediction) ranks as 0 so ASHA/Optuna can compare it."""
    value = metrics[name]
    return value if math.isfinite(value) else 0.0


def _restore(checkpoint, model, optimizer, scheduler) -> tuple[int, float | None, str | None]:
    """(last finished epoch, best objective so far, child run id) from Ray's checkpoint, or a fresh start."""
    if checkpoint is None:
        return 0, None, None
    with checkpoint.as_directory() as folder:
        saved = load_checkpoint(Path(folder) / STATE_FILE)
    model.load_state_dict(saved["state_dict"])
    optimizer.load_state_dict(saved["optimizer"])
    if scheduler is not None and saved["scheduler"] is not None:
        scheduler.load_state_dict(saved["scheduler"])
    return saved["epoch"], saved["extra"]["best"], saved["extra"]["run_id"]


def _open_child_run(model_cfg: ModelConfig, train_cfg: TrainConfig, setup: TrialSetup) -> str:
    context = tune.get_context()
    params = {**model_cfg.to_dict(), **train_cfg.to_dict(), "image_size": "x".join(map(str, setup.data.image_size))}
    tags = {tracking.BACKBONE_TAG: model_cfg.backbone, "ray_node_id": ray.get_runtime_context().get_node_id()}
    # the run is named like the Ray trial (sweep.trial_name: "vgg11-t007"), so the two are easy to match
    return tracking.open_child_run(setup.tracking, context.get_trial_id(), context.get_trial_name(), params, tags)


def _save(path: Path, model, model_cfg, train_cfg, data_cfg, epoch, metrics, optimizer, scheduler, state) -> None:
    save_checkpoint(path, model, model_cfg, train_cfg, classes=data_pipeline.class_table(),
                    image_size=data_cfg.image_size, epoch=epoch, metrics=metrics, optimizer=optimizer,
                    scheduler=scheduler, extra=state,
                    normalization={"mean": data_pipeline.IMAGENET_MEAN, "std": data_pipeline.IMAGENET_STD})


def _upload_best(folder: Path, model, model_cfg, train_cfg, data_cfg, epoch, metrics, state, setup) -> None:
    best_dir = folder / "mlflow"  # not part of Ray's checkpoint contents once removed below
    _save(best_dir / BEST_FILE, model, model_cfg, train_cfg, data_cfg, epoch, metrics, None, None, state)
    described = {"model_config": model_cfg.to_dict(), "train_config": train_cfg.to_dict(),
                 "image_size": list(data_cfg.image_size), "epoch": epoch, "classes": data_pipeline.class_table(),
                 setup.objective: _objective(metrics, setup.objective), "manifest_hash": state["manifest_hash"]}
    tracking.log_best_checkpoint(setup.tracking.uri, state["run_id"], best_dir / BEST_FILE, described)
    (best_dir / BEST_FILE).unlink()
    best_dir.rmdir()
