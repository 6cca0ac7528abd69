"""The thin Ray trainable: Ray's flat trial dict -> frozen configs (in `configs_from_trial`, the only place),
resume from its newest checkpoint, loop epochs over models.training's pure functions, log each epoch to
the trial's MLflow child run (step = epoch) and `tune.report(metrics, checkpoint=...)`.

Why log from here rather than with MLflowLoggerCallback: the trial knows its child run id, stores it in
its checkpoint (a resumed or retried trial continues the same run) and uploads its own best checkpoint;
the callback would give neither a parent run nor checkpoints. Final status tags (pruned vs completed) are
only known on the driver: `tuner.sweep.TrialStatusCallback` sets them.
"""
from __future__ import annotations

import atexit
import json
import logging
import shutil
import sys
import tempfile
from dataclasses import dataclass, fields, replace
from pathlib import Path

import pyarrow.fs
import ray
import torch
from ray import tune
from ray.tune.result import EXPR_RESULT_FILE

import data_pipeline
from data_pipeline import DataConfig
from models import ModelConfig, TrainConfig, build, validate, validate_train
from models.checkpoint import CheckpointError, load_checkpoint, restore_training_state, save_checkpoint
from models.losses import make_loss
from models.training import (DivergedError, describe_device, evaluate, make_grad_scaler, make_optimizer,
                             make_scheduler, prepare_model, resolve_device, seed_everything, train_one_epoch,
                             uses_cuda_extras)
from tuner import tracking
from tuner.objective import BEST_EPOCH, best_name
from tuner.objective import score as objective_score
from tuner.searcher import DIVERGED, RUN_ID  # RUN_ID: the driver's callback finds the child run without a search
from tuner.settings import shown_uri

EPOCH = "epoch"  # reported every epoch; ASHA's time attribute (survives restores, unlike a counter)
STATE_FILE = "trial.pt"  # inside each Ray checkpoint: weights + optimizer/scheduler + trial state
BEST_FILE = "best.pt"  # uploaded to MLflow as checkpoint/best.pt: weights only (no optimizer: 1/3 the size)
_EPOCH_METRICS = frozenset({"train_loss", "lr", "epoch_seconds", EPOCH})  # + every "val_*" and "best_*"
NOT_APPLICABLE = "n/a"  # the param value of a config field the trial's other choices make irrelevant
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
    # Ray logs "Checkpoint successfully created at: ..." once per trial per epoch: thousands of lines a sweep
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    data_cfg, model_cfg, train_cfg = configs_from_trial(config, setup)
    seed_everything(train_cfg.seed)
    loaders = data_pipeline.make_loaders(data_cfg)
    device = resolve_device(train_cfg.device)
    model = prepare_model(build(model_cfg), device, train_cfg)
    loss_fn = make_loss(train_cfg, loaders.class_frequencies).to(device)
    optimizer = make_optimizer(model, train_cfg)
    scheduler = make_scheduler(optimizer, train_cfg, steps_per_epoch=len(loaders.train))
    grad_scaler = make_grad_scaler(device, train_cfg.amp)
    tracking.bound_http_retries()
    epoch, best, best_at, run_id, saved_metrics = _restore(tune.get_checkpoint(), model, optimizer, scheduler,
                                                           grad_scaler)
    placement = _placement_tags(device, train_cfg)
    run = ChildRun(setup, run_id, lambda: _open_child_run(config, setup, placement), placement)
    run.attempt("child run", lambda: run.log_epoch({}, 0))  # opened now if MLflow is there, else later
    names, extras = list(data_pipeline.CLASS_NAMES), dict(amp=train_cfg.amp, channels_last=train_cfg.channels_last)
    context = tune.get_context()
    staging = CheckpointStaging.for_trial(context.get_experiment_name(), context.get_trial_id())
    staging.remove()  # what a killed attempt of this trial left here (it may have no epoch left to save)

    def save_and_report(epoch: int, metrics: dict, improved: bool) -> None:
        run.log(metrics, epoch)  # before the report: a kill in between retrains the epoch, never logs it twice
        folder = staging.empty()
        state = dict(run_id=run.run_id, best=best, best_epoch=best_at, manifest_hash=loaders.manifest_hash)
        _save(folder / STATE_FILE, model, model_cfg, train_cfg, data_cfg, epoch, metrics,
              (optimizer, scheduler, grad_scaler), state)
        if improved and run.run_id is not None:
            run.attempt("best checkpoint upload", lambda: _upload_best(
                folder, model, model_cfg, train_cfg, data_cfg, epoch, metrics, state, setup))
        tune.report({**metrics, setup.objective: objective_score(metrics[setup.objective]), RUN_ID: run.run_id or "",
                     DIVERGED: False}, checkpoint=tune.Checkpoint.from_directory(folder))
        staging.remove()  # tune.report has copied it into Ray's storage

    try:
        if epoch >= train_cfg.epochs and saved_metrics and not _ray_took_epoch(context.get_storage(), epoch):
            # its last epoch was saved, then the trial stopped before Ray took the report (Ctrl-C stops the
            # driver first; a kill): told again, else Ray, Optuna and the summary keep the epoch before, and a
            # trial that ran every epoch ends "pruned" with an older score
            ints = {k: int(saved_metrics[k]) for k in (EPOCH, BEST_EPOCH) if k in saved_metrics}  # saved as floats
            save_and_report(epoch, {**saved_metrics, **ints}, improved=best_at == epoch)
        for epoch in range(epoch + 1, train_cfg.epochs + 1):
            loaders.train.sampler.set_epoch(epoch - 1)  # a resumed trial sees the batches it would have seen
            try:
                train = train_one_epoch(model, loaders.train, optimizer, loss_fn, device, scheduler, epoch=epoch,
                                        bn_batches=train_cfg.bn_recalibration_batches, grad_scaler=grad_scaler,
                                        **extras)
            except DivergedError:
                # the worst score, flagged: the searcher tells Optuna PRUNED, the callback tags "diverged"
                run.log({}, epoch)  # opens the run if MLflow was away until now
                # best_<objective> in every result: Ray's live table sorts finished trials by it (None breaks it)
                tune.report({setup.objective: 0.0, best_name(setup.objective): 0.0 if best is None else best,
                             DIVERGED: True, EPOCH: epoch, RUN_ID: run.run_id or ""})
                return
            val = evaluate(model, loaders.val, device, loss_fn, names, data_pipeline.ROCK_CLASS_IDS, **extras)
            metrics = epoch_metrics(train, val, epoch)
            score = objective_score(metrics[setup.objective])
            improved = best is None or score > best
            best, best_at = (score, epoch) if improved else (best, best_at)
            metrics[best_name(setup.objective)] = best
            if best_at is not None:  # None: resumed from a checkpoint that predates best_epoch, until it improves
                metrics[BEST_EPOCH] = best_at
            save_and_report(epoch, metrics, improved)
    finally:  # the worker may run other trials (reuse_actors): its exit must not remove this folder later,
        staging.close()  # when a retry of this trial on the node may be writing into it


class CheckpointStaging:
    """The local folder a trial writes a checkpoint into before tune.report copies it to Ray's storage.

    Why not a TemporaryDirectory per epoch: a worker SIGKILLed while one exists (a crash, an OOM kill, the
    fault tests) leaves weights and optimizer state (~220 MB for VGG11) in the temp folder, a new one per
    kill, forever. This folder is named after the sweep and the trial, so the trial's next attempt on the
    node (Ray's retry, a resumed sweep) clears it when it starts, and the driver clears its sweep's at the
    end (a trial the killed driver had started but Ray never saved is rerun under another id); it is
    removed after each report, and at exit when Ray stops the worker while it waits inside tune.report
    (ASHA, the stop criterion, Ctrl-C).
    """

    PREFIX = "lunartune-checkpoint-"

    def __init__(self, folder: Path):
        self.folder = folder
        atexit.register(self.remove)

    @classmethod
    def for_trial(cls, sweep: str, trial_id: str, root: Path | None = None) -> "CheckpointStaging":
        return cls(Path(root or tempfile.gettempdir()) / f"{cls.PREFIX}{sweep}-{trial_id}")

    @classmethod
    def remove_sweep(cls, sweep: str, root: Path | None = None) -> list[Path]:
        """Remove every staged checkpoint of `sweep` on this machine (call once its trials have stopped)."""
        found = sorted(Path(root or tempfile.gettempdir()).glob(f"{cls.PREFIX}{sweep}-*"))
        for folder in found:
            shutil.rmtree(folder, ignore_errors=True)
        return found

    def empty(self) -> Path:
        """The folder, empty: a killed attempt of the trial may have left a checkpoint in it."""
        self.remove()
        self.folder.mkdir(mode=0o700)
        return self.folder

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def close(self) -> None:
        """The trial ended in this worker: remove the folder now, and not again at the worker's exit."""
        self.remove()
        atexit.unregister(self.remove)


def epoch_metrics(train: dict, val: dict, epoch: int) -> dict:
    """The per-epoch metric names MLflow and Ray both see."""
    return {"train_loss": train["loss"], "lr": train["lr"], "epoch_seconds": train["seconds"], EPOCH: epoch,
            **{f"val_{k}": v for k, v in val.items()}}


def is_epoch_metric(name: str) -> bool:
    """Is `name` one of epoch_metrics' keys (what the child run logs per epoch)?"""
    return name in _EPOCH_METRICS or name.startswith(("val_", "best_"))


class ChildRun:
    """The trial's MLflow child run, written so that MLflow being away never stops training.

    Each epoch is logged once: the steps already in MLflow are read once per process (a retried trial
    may retrain an epoch it had logged). A failed call (after MLflow's bounded HTTP retries) is a warning;
    the epoch stays in Ray's results, from which the driver fills MLflow in (tuner.sweep.sync_to_mlflow).
    A run resumed from a checkpoint is reopened at first contact (running again; an errored trial's retry
    loses its `error` tag) and gets this process's placement tags (node, device).
    """

    def __init__(self, setup: TrialSetup, run_id: str | None, open_run, placement: dict):
        self.setup, self.run_id, self._open_run, self._logged = setup, run_id, open_run, None
        self._placement = placement if run_id is not None else None  # a new run is opened with them
        self.backoff = tracking.Backoff.for_store(setup.tracking.uri)

    def log(self, metrics: dict, epoch: int) -> bool:
        return self.attempt(f"epoch {epoch} metrics", lambda: self.log_epoch(metrics, epoch))

    def log_epoch(self, metrics: dict, epoch: int) -> None:
        if self.run_id is None:
            self.run_id = self._open_run()
        if self._placement is not None:  # a run restored from the checkpoint: running again, here
            tracking.reopen_run(self.setup.tracking.uri, self.run_id)
            tracking.set_tags(self.setup.tracking.uri, self.run_id, self._placement)
            self._placement = None
        if self._logged is None:
            self._logged = tracking.logged_steps(self.setup.tracking.uri, self.run_id, EPOCH)
        if metrics and epoch not in self._logged:
            tracking.log_metrics(self.setup.tracking.uri, self.run_id, metrics, step=epoch)
            self._logged.add(epoch)

    def attempt(self, what: str, action) -> bool:
        if self.backoff.skipping():  # it failed moments ago: another try would cost the epoch seconds again
            print(f"lunartune trial: MLflow: {what} skipped (it did not answer less than "
                  f"{self.backoff.seconds:.0f} s ago); the driver logs it later from Ray's results", file=sys.stderr)
            return False
        try:
            action()
            return True
        except Exception as err:  # MlflowException, requests' ConnectionError, sqlite's OperationalError, ...
            self.backoff.failed()
            print(f"lunartune trial: warning: MLflow {shown_uri(self.setup.tracking.uri)}: {what} not logged "
                  f"({type(err).__name__}: {str(err)[:200]}); training goes on, the driver logs it later "
                  f"from Ray's results" + (f"; no MLflow call for {self.backoff.seconds:.0f} s"
                                           if self.backoff.seconds else ""), file=sys.stderr)
            return False


def _restore(checkpoint, model, optimizer, scheduler, grad_scaler) -> tuple:
    """(last finished epoch, best objective so far, its epoch, child run id, that epoch's metrics) from the
    trial's newest checkpoint, or a fresh start (0 and Nones)."""
    saved = _newest_readable(_kept_checkpoints(checkpoint, tune.get_context().get_storage()))
    if saved is None:
        return 0, None, None, None, None
    model.load_state_dict(saved["state_dict"])
    # optimizer, scheduler, loss scale and torch's RNG: dropout goes on as if the trial had never stopped
    epoch = restore_training_state(saved, optimizer, scheduler, grad_scaler)
    extra = saved["extra"]
    return epoch, extra["best"], extra.get("best_epoch"), extra["run_id"], saved["metrics"]


def _ray_took_epoch(storage, epoch: int) -> bool:
    """Whether the trial's result.json (Ray's driver appends each report it takes) holds `epoch`. A driver
    SIGKILLed after taking the last report may have saved the trial as running: restored, it must not report
    that epoch twice."""
    try:
        with storage.storage_filesystem.open_input_stream(f"{storage.trial_fs_path}/{EXPR_RESULT_FILE}") as f:
            lines = f.read().decode().splitlines()
    except OSError:  # none yet (FileNotFoundError is an OSError)
        return False
    for line in lines:
        try:
            if json.loads(line).get(EPOCH, 0) >= epoch:
                return True
        except json.JSONDecodeError:  # the line being written
            continue
    return False


def _newest_readable(candidates: list) -> dict | None:
    """The first checkpoint of `candidates` whose state file loads; each one that does not is a warning
    naming the file. None (the trial starts at epoch 1) if there is none."""
    for candidate in candidates:
        try:
            with candidate.as_directory() as folder:
                return load_checkpoint(Path(folder) / STATE_FILE)
        except (CheckpointError, OSError) as err:
            print(f"lunartune trial: warning: cannot resume from {candidate.path}: {err}; "
                  f"falling back to an older checkpoint", file=sys.stderr)
    if candidates:
        print("lunartune trial: warning: no readable checkpoint left: the trial restarts from epoch 1",
              file=sys.stderr)
    return None


def _kept_checkpoints(checkpoint, storage) -> list:
    """Every checkpoint_* folder in the trial's folder, newest state file first (Ray's `checkpoint` among them).

    Why not just Ray's: Ray registers a reported checkpoint only after a second call to the trial's actor
    (train, then save); a node that dies between the two leaves the epoch in result.json and its checkpoint
    on storage, but Ray hands back the one before, and the epoch would be trained twice. Newest by the state
    file's mtime, not by folder name: a restored trial numbers its next checkpoint from Ray's, so an older
    name can hold a newer epoch.
    """
    fs, trial_dir = storage.storage_filesystem, storage.trial_fs_path
    try:
        listing = fs.get_file_info(pyarrow.fs.FileSelector(trial_dir, allow_not_found=True))
        folders = [i.path.rstrip("/") for i in listing
                   if i.type == pyarrow.fs.FileType.Directory and i.base_name.startswith("checkpoint_")]
        states = fs.get_file_info([f"{folder}/{STATE_FILE}" for folder in folders])
    except OSError as err:
        print(f"lunartune trial: warning: cannot list the checkpoints in {trial_dir}: {err}", file=sys.stderr)
        return [] if checkpoint is None else [checkpoint]
    written = {folder: state.mtime_ns or 0 for folder, state in zip(folders, states)
               if state.type == pyarrow.fs.FileType.File}
    if checkpoint is not None:
        written.setdefault(checkpoint.path.rstrip("/"), 0)
    newest_first = sorted(written, key=lambda folder: (written[folder], folder), reverse=True)
    return [tune.Checkpoint(folder, filesystem=fs) for folder in newest_first]


def _placement_tags(device, train_cfg: TrainConfig) -> dict:
    """Where this process trains the trial: a resumed trial may run on another node or GPU than before."""
    return {"ray_node_id": ray.get_runtime_context().get_node_id(),
            "device": describe_device(device, uses_cuda_extras(device, train_cfg.amp))}


def run_params_and_tags(config: dict, setup: TrialSetup) -> tuple[dict, dict]:
    """The child run's params (the trial's full resolved configs, searched and fixed) and backbone tag.
    The driver logs the same for a trial that never opened its run (tuner.sweep._open_run_for)."""
    data_cfg, model_cfg, train_cfg = configs_from_trial(config, setup)
    params = {**model_cfg.to_dict(), **train_cfg.to_dict(), "image_size": "x".join(map(str, data_cfg.image_size)),
              "augment": data_cfg.augment}
    # every run has every name (the UI's compare view lines up); an ignored one says so (adam's momentum)
    params.update(dict.fromkeys(model_cfg.unused_fields() | train_cfg.unused_fields(), NOT_APPLICABLE))
    return params, {tracking.BACKBONE_TAG: model_cfg.backbone}


def _open_child_run(config: dict, setup: TrialSetup, placement: dict) -> str:
    context = tune.get_context()
    params, tags = run_params_and_tags(config, setup)
    # the run is named like the Ray trial (sweep.trial_name: "vgg11-t007"), so the two are easy to match
    return tracking.open_child_run(setup.tracking, context.get_trial_id(), context.get_trial_name(), params,
                                   {**tags, **placement})


def _save(path: Path, model, model_cfg, train_cfg, data_cfg, epoch, metrics, training_state, state) -> None:
    """`training_state`: (optimizer, scheduler, grad_scaler) to resume from, or (None, None, None): weights only."""
    optimizer, scheduler, grad_scaler = training_state
    save_checkpoint(path, model, model_cfg, train_cfg, classes=data_pipeline.class_table(),
                    image_size=data_cfg.image_size, epoch=epoch, metrics=metrics, optimizer=optimizer,
                    scheduler=scheduler, grad_scaler=grad_scaler, extra=state,
                    normalization={"mean": data_pipeline.IMAGENET_MEAN, "std": data_pipeline.IMAGENET_STD})


def _upload_best(folder: Path, model, model_cfg, train_cfg, data_cfg, epoch, metrics, state, setup) -> None:
    best_file = folder / "mlflow" / BEST_FILE  # not part of Ray's checkpoint contents once removed below
    _save(best_file, model, model_cfg, train_cfg, data_cfg, epoch, metrics, (None, None, None), state)
    described = best_description(model_cfg.to_dict(), train_cfg.to_dict(), data_cfg.image_size, epoch,
                                 data_pipeline.class_table(), metrics, setup.objective, state["manifest_hash"])
    try:
        tracking.log_best_checkpoint(setup.tracking.uri, state["run_id"], best_file, described)
    finally:  # uploaded or not, it is no part of Ray's checkpoint
        best_file.unlink()
        best_file.parent.rmdir()


def best_description(model_config: dict, train_config: dict, image_size, epoch: int, classes, metrics: dict,
                     objective: str, manifest_hash) -> dict:
    """model_config.json beside checkpoint/best.pt: what promote and model_spec read without the weights."""
    return {"model_config": model_config, "train_config": train_config, "image_size": list(image_size),
            "epoch": epoch, "classes": classes, objective: objective_score(metrics[objective]),
            "manifest_hash": manifest_hash}


def upload_best_from_ray(uri: str, run_id: str, state_file: Path, objective: str) -> None:
    """Upload the weights of a Ray checkpoint's trial.pt as checkpoint/best.pt (the driver does this when
    the trial's own upload failed while MLflow was away)."""
    payload = load_checkpoint(state_file)
    described = best_description(payload["model_config"], payload["train_config"], payload["image_size"],
                                 payload["epoch"], payload["classes"], payload["metrics"], objective,
                                 payload["extra"].get("manifest_hash"))
    with tempfile.TemporaryDirectory() as folder:
        best_file = Path(folder) / BEST_FILE
        torch.save({**payload, "optimizer": None, "scheduler": None}, best_file)
        tracking.log_best_checkpoint(uri, run_id, best_file, described)
