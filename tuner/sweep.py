"""`lunartune tune`: the sweep driver. Ray Tune runs trials, Optuna (TPE) proposes them, ASHA stops the
weak ones early, MLflow records a parent run per sweep and a child run per trial.

`run_sweep(cfg, paths)` is the whole driver (the demo calls it directly); `main(args, paths)` only turns
flags into a SweepConfig, calls it and prints where to look. Order of work, so a mistake costs seconds:
space + models checks, tracking server reachable, data split and decode cache built once, MLflow
experiment + parent run, then Ray.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import re
import signal
import socket
import textwrap
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import ray
from mlflow.exceptions import MlflowException
from optuna.trial import TrialState
from ray import tune
from ray.tune import Callback, CLIReporter, TuneError
from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler
from ray.tune.stopper import Stopper, TimeoutStopper

import data_pipeline
import search_spaces
from data_pipeline import DataError
from data_pipeline.synth import already_generated, generate
from data_pipeline.split import write_json_atomic
from models import ConfigError, ModelConfig, TrainConfig, WeightsError, canonical_backbone
from tuner import disk, leftovers, tracking
from tuner.cli import EXIT_INCOMPLETE, EXIT_INTERRUPTED, CliError, shown_duration
from tuner.objective import best_epoch, best_name
from tuner.scheduler import ResumableASHA
from tuner.searcher import DIVERGED, RAY_TRIAL_ATTR, STATUS_ATTR, PruningAwareOptunaSearch, RetryPassingLimiter
from tuner.settings import RunPaths, environment, shown_uri
from tuner.space import SpaceError, check_against_models, define_by_run, load_space
from tuner.trainable import (EPOCH, RUN_ID, STATE_FILE, CheckpointStaging, TrialSetup, is_epoch_metric,
                             run_params_and_tags, train_trial, upload_best_from_ray)
from tuner.tracking import TrackingError
from tuner.train import (DEFAULT_SYNTHETIC_COUNT, SYNTHETIC, synthetic_count_from_args, synthetic_root,
                         without_generator_version)

TRIAL_STATUSES = (tracking.COMPLETED, tracking.PRUNED, tracking.DIVERGED, tracking.ERRORED, tracking.UNFINISHED)
MAX_FAILURES = 2  # a crashed trial is retried this often, from its last checkpoint
CHECKPOINTS_KEPT = 2  # per trial, best by the objective (Ray also keeps the latest, for resuming)
TOP_TRIALS_SHOWN = 5
LOCAL_RAY = "local"  # --address local: a private local Ray (a new sweep's default; resumes a cluster sweep here)
ERROR_CHARS = 500  # of an errored trial's error, in the summary and in MLflow's error tag
_EXPERIMENT_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


@dataclass(frozen=True)
class SweepConfig:
    """One sweep, as `lunartune tune` flags describe it."""
    space: str = "default"  # search space: name in search_spaces/ or a YAML path
    data: str = SYNTHETIC  # Kaggle-layout folder, or "synthetic" to generate scenes into the run dir
    synthetic_count: int = DEFAULT_SYNTHETIC_COUNT  # scenes generated for data=synthetic
    image_size: tuple[int, int] = (64, 64)  # (height, width) trials train at
    mask_source: str = "clean"  # clean | ground
    allow_missing: bool = False  # skip renders without masks
    exclude_mismatches: bool = False  # drop frames in mismatch_IDs.txt
    device: str = "auto"  # per trial: auto | cpu | cuda | cuda:N
    num_workers: int = 0  # DataLoader worker processes per trial
    samples: int = 8  # number of trials
    max_epochs: int = 4  # epochs of a trial that is never stopped (ASHA's max_t)
    grace_epochs: int = 1  # ASHA: epochs before a trial may be stopped
    reduction_factor: int = 2  # ASHA: keep 1/reduction_factor at each rung
    use_asha: bool = True  # False: every trial runs max_epochs (FIFO), for comparisons
    concurrency: int = 2  # trials running at once
    cpus_per_trial: float = 1.0  # Ray resources per trial
    gpus_per_trial: float = 0.0  # fractions allowed (0.5 = two trials per GPU)
    objective: str = "val_miou"  # val_miou | val_rock_miou, maximised
    seed: int = 0  # seeds Optuna's sampler and every trial
    startup_trials: int | None = None  # random trials before TPE models the study; None: startup_trials(samples)
    time_budget_s: float | None = None  # the sweep ends after this long (Ray's time_budget_s); None: no limit
    address: str | None = None  # None: a private local Ray; "auto" or HOST:PORT joins a cluster
    storage: str | None = None  # Ray results: PATH or s3://...; None = <run-dir>/ray
    experiment: str = "lunartune"  # MLflow experiment, Optuna study, prefix of the Ray run name
    resume: bool = False  # continue the interrupted sweep of `experiment`


@dataclass(frozen=True)
class SweepResult:
    experiment: str  # MLflow experiment name
    experiment_id: str
    parent_run_id: str  # the sweep's MLflow parent run
    tracking_uri: str
    results_path: str  # Ray's run folder (storage/run name): trials, checkpoints, restore state
    interrupted: bool  # Ctrl-C (or SIGUSR1) stopped it before every trial finished
    best_config: dict  # hyperparameters of the best trial (empty if no trial reported)
    best_metrics: dict  # its best epoch's metrics (objective, per-class IoU, epoch, mlflow_run_id, ...)
    best_run_id: str | None  # MLflow child run of the best trial
    statuses: dict[str, int]  # trials per final status (completed / pruned / diverged / errored / unfinished)
    top_trials: list[dict] = field(default_factory=list)  # best first: trial, backbone, objective, epochs, status
    mlflow_incomplete: list[str] = field(default_factory=list)  # what MLflow still lacks (it was away); --resume fills it
    errors: dict[str, str] = field(default_factory=dict)  # errored trial's folder in results_path -> its error
    budget_spent: bool = False  # --time-budget ended the sweep (then not `interrupted`: nothing to resume)
    config: SweepConfig | None = None  # the sweep's own (with --resume: as it was started, not the flags given)


def sweep_config_from_args(args) -> SweepConfig:
    """The one place `lunartune tune` flags become a SweepConfig (checked: CliError names the flag)."""
    cfg = SweepConfig(
        space=args.space, data=args.data, synthetic_count=synthetic_count_from_args(args), image_size=tuple(args.image_size),
        mask_source=args.mask_source, allow_missing=args.allow_missing, exclude_mismatches=args.exclude_mismatches,
        device=args.device, num_workers=args.num_workers, samples=args.samples, max_epochs=args.max_epochs,
        grace_epochs=args.grace_epochs, reduction_factor=args.reduction_factor, use_asha=not args.no_asha,
        concurrency=args.concurrency, cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
        objective=args.objective, seed=args.seed, startup_trials=args.startup_trials,
        time_budget_s=args.time_budget, address=args.address, storage=args.storage,
        experiment=args.experiment, resume=args.resume)
    check_sweep_config(cfg)
    return cfg


def check_sweep_config(cfg: SweepConfig) -> None:
    gpus = cfg.gpus_per_trial if math.isfinite(cfg.gpus_per_trial) else 0.0  # nan/inf: refused by its own check
    checks = [
        ("--samples", cfg.samples >= 1, "an integer >= 1"),
        ("--max-epochs", cfg.max_epochs >= 1, "an integer >= 1"),
        ("--grace-epochs", 1 <= cfg.grace_epochs <= cfg.max_epochs, f"an integer in [1, --max-epochs={cfg.max_epochs}]"),
        ("--reduction-factor", cfg.reduction_factor >= 2, "an integer >= 2"),
        ("--concurrency", cfg.concurrency >= 1, "an integer >= 1"),
        ("--cpus-per-trial", math.isfinite(cfg.cpus_per_trial) and cfg.cpus_per_trial > 0, "a number > 0"),
        ("--gpus-per-trial", math.isfinite(cfg.gpus_per_trial) and cfg.gpus_per_trial >= 0, "a number >= 0"),
        ("--device", re.fullmatch(r"auto|cpu|cuda(:\d+)?", cfg.device) is not None, "auto, cpu, cuda or cuda:N"),
        ("--device", gpus > 0 or not cfg.device.startswith("cuda"),
         "auto or cpu when --gpus-per-trial is 0 (a trial may use only the GPUs Ray gives it)"),
        ("--device", _gpu_index(cfg.device) < max(1, math.ceil(gpus)),
         f"auto, cpu, cuda or cuda:N with N < {max(1, math.ceil(gpus))}: a trial sees only the "
         f"GPUs Ray gives it, numbered from 0"),
        ("--synthetic-count", cfg.synthetic_count >= 1, "an integer >= 1"),
        ("--num-workers", cfg.num_workers >= 0, "an integer >= 0"),
        ("--seed", 0 <= cfg.seed < 2**32, "an integer in [0, 2**32)"),  # Optuna's and numpy's range
        ("--startup-trials", cfg.startup_trials is None or cfg.startup_trials >= 1, "an integer >= 1"),
        ("--experiment", bool(cfg.experiment) and set(cfg.experiment) <= _EXPERIMENT_CHARS,
         "a name of letters, digits, '.', '_' or '-'"),
    ]
    for flag, ok, expected in checks:
        if not ok:
            value = getattr(cfg, flag[2:].replace("-", "_"))
            raise CliError(f"{flag}={value!r}: expected {expected}")


# ---------------------------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------------------------

def run_sweep(cfg: SweepConfig, paths: RunPaths) -> SweepResult:
    """Run (or with cfg.resume, continue) a sweep; returns where everything is and the best trial.

    One sweep per (run dir, experiment) at a time: a second one is refused (CliError naming the lock)."""
    space = None  # a resumed sweep's space is the one it started with, read from its pointer file
    if cfg.address == LOCAL_RAY and not cfg.resume:
        cfg = replace(cfg, address=None)
    if not cfg.resume:  # a bad --space, --image-size, --data or store fails before the run dir is made
        space = _load_space(cfg)
        _check_data_exists(cfg)
        _check_where_trials_run(cfg)
        tracking.check_reachable(paths.tracking_uri)  # an unreachable store fails in <= 10 s
        address, saved = cfg.address, False
    else:  # no sweep to resume, or a cluster that does not answer: refused before the run dir is touched
        resumed = _resumed_config(cfg, _pointer_path(paths, cfg.experiment))
        saved = not cfg.address  # the sweep rejoins the address it was started with: the user typed none
        _check_where_trials_run(resumed, address_saved=saved)
        address = resumed.address
    with _joined_cluster(address, address_saved=saved):  # a cluster that refuses us: refused before anything is written
        paths.ensure()
        with sweep_lock(paths, cfg.experiment) as lock:
            _stop_leftovers(lock)
            return _run_locked(cfg, paths, space)


@contextmanager
def _joined_cluster(address: str | None, address_saved: bool = False):
    """Join the Ray cluster at `address` (None: nothing to join; the sweep starts a private Ray later) and
    leave it at the end. ray.init failing (a port that answers but is no Ray head; a head with token
    authentication this process has no token for) was a traceback after the sweep's parent run was made."""
    if not address or ray.is_initialized():
        yield
        return
    try:
        ray.init(address=address)
    except Exception as err:
        ray.shutdown()  # whatever part of the connection was made
        reason = (str(err).strip().splitlines() or [""])[0][:300]
        raise CliError(f"{_address_named(address, address_saved)}: could not join a Ray cluster there "
                       f"({type(err).__name__}: {reason}); is it a Ray head's GCS port (ray start --head prints "
                       f"it)? A head with token authentication needs RAY_AUTH_MODE=token and its token here "
                       f"too{_resume_elsewhere(address_saved)}") from None
    try:
        yield
    finally:
        ray.shutdown()


def _check_where_trials_run(cfg: SweepConfig, address_saved: bool = False) -> None:
    """What Ray would wait on forever: a cluster address nobody answers at (ray.init retries for minutes), or
    on this machine's own Ray, GPUs it does not have (every trial PENDING). And a --storage folder that is a
    file (Ray failed on it after the parent run was made)."""
    if cfg.address:
        _check_address_answers(cfg.address, address_saved=address_saved)
    elif cfg.gpus_per_trial > 0:
        import torch

        have, need = torch.cuda.device_count(), math.ceil(cfg.gpus_per_trial)
        if have < need:
            raise CliError(f"--gpus-per-trial {cfg.gpus_per_trial:g}: this machine has {have} GPU(s) and a trial "
                           f"needs {need}: it would wait for one forever; use --gpus-per-trial 0, or --address to "
                           f"join a Ray cluster with GPUs")
    if cfg.storage and not _is_uri(cfg.storage):
        storage = Path(cfg.storage).expanduser()
        above = next((p for p in (storage, *storage.parents) if p.exists()), None)
        if above is not None and not above.is_dir():
            raise CliError(f"--storage {cfg.storage}: {above} is a file, not a folder")


def _check_address_answers(address: str, timeout_s: float = 5.0, address_saved: bool = False) -> None:
    """A host:port (or ray://host:port) must accept a connection; "auto" and other forms are Ray's to read."""
    found = re.fullmatch(r"(?:ray://)?([\w.-]+):(\d+)", address)
    if found is None:
        return
    try:
        socket.create_connection((found[1], int(found[2])), timeout=timeout_s).close()
    except OSError as err:
        raise CliError(f"{_address_named(address, address_saved)}: nothing answers there ({err.strerror or err}); "
                       f"start the head node (ray start --head) or give its address (host:6379)"
                       f"{_resume_elsewhere(address_saved)}") from None


def _address_named(address: str, saved: bool) -> str:
    """How an error names the cluster address: the flag the user typed, or the one --resume read back."""
    if saved:
        return f"--resume: the sweep's cluster at {address} (its --address when started)"
    return f"--address {address}"


def _resume_elsewhere(saved: bool) -> str:
    return "; or resume the sweep elsewhere: --address host:port, or --address local for a private local Ray" \
        if saved else ""


def _check_data_exists(cfg: SweepConfig) -> None:
    if cfg.data != SYNTHETIC and not Path(cfg.data).expanduser().is_dir():
        what = "not a folder" if Path(cfg.data).expanduser().exists() else "no such folder"
        raise CliError(f"--data {cfg.data}: {what} (expected a data set in the Kaggle layout, or "
                       f"'{SYNTHETIC}' for generated scenes)")


def _stop_leftovers(lock: Path) -> None:
    """Stop Ray processes a killed sweep of this experiment left running (we hold its lock now)."""
    found = leftovers.stop(lock)
    if found:
        drivers = ", ".join(str(pid) for pid in sorted(set(found.values())))
        print(f"lunartune tune: stopped {len(found)} Ray processes left running by the killed sweep "
              f"(driver pid {drivers}) of this experiment", file=sys.stderr)


def _run_locked(cfg: SweepConfig, paths: RunPaths, space=None) -> SweepResult:
    tracking.bound_http_retries()  # the driver's MLflow calls too (callback, parent run) give up in ~10 s
    pointer = _pointer_path(paths, cfg.experiment)
    if cfg.resume:
        cfg = _resumed_config(cfg, pointer)
        paths = _resumed_paths(paths, json.loads(pointer.read_text()))
    space = space or _load_space(cfg)
    if cfg.resume:  # the store the sweep logged to, read from its pointer (a new sweep's was checked)
        tracking.check_reachable(paths.tracking_uri)
    _warn_about_storage(cfg, paths)
    _warn_about_disk(cfg, paths, space)
    data_cfg, manifest = _prepare_data(cfg, paths)
    source = tracking.source_tags("tune")  # who ran it, with which code: every run of the sweep gets them
    experiment_id = tracking.get_or_create_experiment(
        paths.tracking_uri, cfg.experiment,
        paths.local_artifact_root.as_uri() if paths.local_artifact_root else None)
    if cfg.resume:
        state = json.loads(pointer.read_text())
        _reopen_parent_run(paths.tracking_uri, state["parent_run_id"])
    else:
        _check_study(cfg, paths, space, data_cfg.root)  # before the parent run: a refused sweep leaves nothing
        _end_abandoned_sweep(paths, pointer)
        state = _new_sweep_state(cfg, paths, space, manifest, experiment_id, data_cfg.root, source)
        write_json_atomic(pointer, state)
    target = tracking.TrackingTarget(paths.tracking_uri, experiment_id, state["parent_run_id"], tuple(source.items()))
    setup = _trial_setup(cfg, data_cfg, target)
    interrupted, incomplete, result = True, [], None  # until Ray says otherwise: an exception leaves it "interrupted"
    budget_flag = _budget_flag_path(paths, cfg.experiment)
    if not state.get("budget_spent"):
        budget_flag.unlink(missing_ok=True)  # an earlier sweep's, or left by a run killed as it was spent
    try:
        results = _fit(cfg, paths, space, setup, state["results_path"])
        budget_spent = budget_flag.exists()
        # stopped mid-flight: by Ctrl-C (resumable), or by the time budget (ended: nothing resumes them)
        stopped = _cut_short(results, cfg.max_epochs) if budget_spent else trials_ray_resumes(results)
        result = _summarise(cfg, results, experiment_id, target, state["results_path"], stopped, budget_spent)
        interrupted = result.interrupted
        incomplete = sync_to_mlflow(results, setup, set() if budget_spent else stopped,
                                    _optuna_numbers(paths, cfg.experiment), unfinished=stopped if budget_spent else set())
        if not interrupted:
            _end_running_study_trials(paths, cfg.experiment, cut_short=stopped if budget_spent else set())
        if budget_spent:
            try:
                tracking.set_tags(paths.tracking_uri, target.parent_run_id, {tracking.STOPPED_BY_TAG: "time_budget"})
            except Exception as err:  # MLflow away: --resume sets it when it fills MLflow in
                incomplete.append(f"parent run {target.parent_run_id} ({type(err).__name__})")
    finally:
        summary = {"trials": cfg.samples}
        if result is not None:  # interrupted too: the UI shows how far it got; --resume's counts replace these
            # every status, 0 if none: a resumed sweep's counts replace the first run's (errored 1 -> 0)
            summary.update(best_objective=result.best_metrics.get(cfg.objective, float("nan")),
                           **{f"trials_{s}": result.statuses.get(s, 0) for s in TRIAL_STATUSES})
        try:
            tracking.end_parent_run(paths.tracking_uri, target.parent_run_id, interrupted, summary)
        except Exception as err:  # MLflow away: the results are safe in Ray's folder; --resume ends the run later
            incomplete.append(f"parent run {target.parent_run_id} ({type(err).__name__})")
    # finished: nothing left for --resume to run (errored trials it would retry)
    finished = not result.interrupted and not result.budget_spent and not result.statuses.get(tracking.ERRORED)
    write_json_atomic(pointer, {**state, "mlflow_incomplete": incomplete, "budget_spent": result.budget_spent,
                                "finished": finished})
    return replace(result, mlflow_incomplete=incomplete)


@contextmanager
def sweep_lock(paths: RunPaths, experiment: str):
    """Hold `<run-dir>/sweeps/<experiment>.lock` (an flock, holder's pid and host written inside).

    The OS releases an flock when its holder dies, even by SIGKILL, so a stale lock file never blocks a
    later sweep or --resume. flock is reliable on local disks; on NFS it depends on the mount (lockd)."""
    path = _lock_path(paths, experiment)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by child processes (Ray's)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = path.read_text().strip() or "unknown"
            raise CliError(f"another sweep of experiment {experiment!r} is running in {paths.root}: the lock "
                           f"{path} is held by {holder}; wait for it or stop it, or use another --experiment "
                           f"or --run-dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        yield path
    finally:
        os.close(fd)


def _load_space(cfg: SweepConfig):
    space = _read_space(cfg)
    check_against_models(space, cfg.image_size)  # may read encoder weights files: once per sweep
    return space


def _read_space(cfg: SweepConfig):
    try:
        path = search_spaces.resolve(cfg.space)
    except FileNotFoundError as err:
        raise CliError(f"--space: {err}") from None
    return load_space(path)


def _warn_about_storage(cfg: SweepConfig, paths: RunPaths) -> None:
    if cfg.address and not (cfg.storage or "").startswith(("s3://", "gs://", "abfs://")):
        print(f"lunartune tune: warning: --address {cfg.address} joins a cluster, but Ray results go to the "
              f"local path {cfg.storage or paths.ray_results}. Every node must see the same folder: give "
              f"--storage s3://bucket/prefix or a shared (NFS) path, and keep --data and the run dir on "
              f"shared storage too.", file=sys.stderr)


def _warn_about_disk(cfg: SweepConfig, paths: RunPaths, space) -> None:
    """Object storage and an MLflow server's artifact store are not counted: their free space is not ours
    to see."""
    written = disk.sweep_checkpoint_bytes(space, cfg.samples, cfg.max_epochs, CHECKPOINTS_KEPT, cfg.concurrency)
    storage = cfg.storage or str(paths.ray_results)
    storage = storage[len("file://"):] if storage.startswith("file://") else storage  # a local disk too
    needs = {} if _is_uri(storage) else {Path(storage).expanduser(): written.ray}
    if paths.local_artifact_root:
        needs[paths.local_artifact_root] = written.mlflow
    if not cfg.address:  # trials stage their checkpoints in this machine's temp folder (a cluster: the nodes')
        temp = Path(tempfile.gettempdir())
        needs[temp] = needs.get(temp, 0) + written.staging
    for warning in disk.disk_warnings(needs):
        print(f"lunartune tune: warning: {warning}", file=sys.stderr)


def _prepare_data(cfg: SweepConfig, paths: RunPaths):
    """Generate scenes if asked, then build the split manifest and every decode cache ONCE, here on the
    driver: trials only read them (no race between trials building the same cache)."""

    root = synthetic_root(paths, cfg.synthetic_count, cfg.seed) if cfg.data == SYNTHETIC else Path(cfg.data).expanduser()
    if cfg.data == SYNTHETIC:
        doing = "reusing the" if already_generated(root, cfg.synthetic_count, cfg.seed) else "generating"
        print(f"{doing} {cfg.synthetic_count} synthetic scenes in {root}", file=sys.stderr)
        generate(root, cfg.synthetic_count, cfg.seed, progress=True)
    data_cfg = data_pipeline.DataConfig(
        root=str(root.resolve()), image_size=tuple(cfg.image_size), mask_source=cfg.mask_source,
        allow_missing=cfg.allow_missing, exclude_mismatches=cfg.exclude_mismatches, num_workers=cfg.num_workers)
    manifest = data_pipeline.prepare_dataset(data_cfg)
    return replace(data_cfg, progress=False), manifest


def _new_sweep_state(cfg: SweepConfig, paths: RunPaths, space, manifest, experiment_id: str,
                     data_root: str, source: dict) -> dict:
    """A new Ray run name and MLflow parent run; what --resume needs later, written beside the run dir."""
    run_name = f"{cfg.experiment}-{time.strftime('%Y%m%d-%H%M%S')}"
    storage = cfg.storage if _is_uri(cfg.storage) else str(Path(cfg.storage or paths.ray_results).resolve())
    results_path = f"{storage.rstrip('/')}/{run_name}"
    params = {**{k: v for k, v in asdict(cfg).items() if k not in ("resume", "address", "storage")},
              "space_file": space.source, "manifest_hash": manifest.hash, "split_sizes": manifest.sizes,
              # promote re-scores the chosen trial on this data set's held-out test split
              "data_root": data_root, "split_manifest": str(manifest.path),
              "scheduler": "asha" if cfg.use_asha else "fifo", "searcher": "optuna-tpe",
              "sampler_seed": _optuna_study(cfg, paths, space)[2], "startup_trials": startup_trials(cfg),
              "image_size": "x".join(map(str, cfg.image_size)),  # as the trials log it: 64x96
              "optuna_study": f"{cfg.experiment} @ {paths.optuna_db}", "results_path": results_path}
    tags = {**source, "ray_run_name": run_name, "git_commit": source.get("mlflow.source.git.commit", "unknown"),
            "space": Path(space.source).name}
    parent = tracking.start_parent_run(paths.tracking_uri, experiment_id, run_name, params, tags)
    tracking.client(paths.tracking_uri).log_artifact(parent, space.source, "space")
    return {"config": asdict(cfg), "parent_run_id": parent, "run_name": run_name, "results_path": results_path,
            "experiment_id": experiment_id, "tracking_uri_override": paths.tracking_uri_override}


def _fit(cfg: SweepConfig, paths: RunPaths, space, setup: TrialSetup, results_path: str):
    """Start (or join) Ray, build the Tuner (or restore it) and run it; Ray is shut down if we started it."""
    with _ray_output_settings():
        return _fit_on_ray(cfg, paths, space, setup, results_path)


def _fit_on_ray(cfg: SweepConfig, paths: RunPaths, space, setup: TrialSetup, results_path: str):
    started_here, lock = not ray.is_initialized(), _lock_path(paths, cfg.experiment)
    assert not (started_here and cfg.address), "run_sweep joins the cluster of --address (_joined_cluster)"
    if started_here:  # a private Ray: never join a cluster someone else started by accident
        with leftovers.labelled(lock), _ray_in_its_own_process_group():  # its processes inherit both
            context = ray.init(address="local", num_cpus=max(1, math.ceil(cfg.concurrency * cfg.cpus_per_trial)),
                               include_dashboard=False)
        leftovers.record_session(lock, context.address_info["session_dir"])
    try:
        with _sigterm_as_ctrl_c():
            return _tuner(cfg, paths, space, setup, results_path).fit()
    finally:
        if started_here:
            ray.shutdown()
            _stop_after_shutdown(lock)  # our private Ray's agents may outlive it (see leftovers.stop_after_shutdown)
        # checkpoints workers killed mid-write left on this machine (others' are cleared by the trials' retries)
        CheckpointStaging.remove_sweep(results_path.rsplit("/", 1)[1])


@contextmanager
def _ray_in_its_own_process_group():
    """Ray's local processes (GCS, raylet, workers) in a process group apart from the driver's. `timeout`, and
    a shell stopping a job, signal the driver's whole group: SIGTERM then stopped the GCS and raylet too, and the
    driver, unable to stop the sweep cleanly without them, waited 60 s for the GCS before Ray ended it (exit 1:
    no summary, no resume command, the parent run left running). The driver joins a new group while ray.init
    starts them and goes back after (a Ctrl-C in those seconds is not delivered: the terminal signals its
    foreground group). A driver that leads a group or session of its own (`setsid`, a container's first
    process) is signalled alone anyway and stays where it is."""
    group = os.getpgrp()
    if group == os.getpid():
        yield
        return
    tty_output = signal.signal(signal.SIGTTOU, signal.SIG_IGN)  # a background group may still write to the terminal
    try:
        os.setpgid(0, 0)
        yield
    finally:
        try:
            os.setpgid(0, group)
        except OSError:  # the old group is gone (its other members exited): stay in the new one
            pass
        signal.signal(signal.SIGTTOU, tty_output)


@contextmanager
def _sigterm_as_ctrl_c():
    """SIGTERM (a KubeRay pod deleted, `timeout`, systemd) stops the sweep as Ctrl-C does: Ray Tune saves its
    state and the sweep ends interrupted, resumable, with the resume command printed. Ray's driver otherwise
    aborts on it (exit 134: no summary, trials left running in MLflow). Installed after ray.init, whose
    handler it replaces, and only from the main thread (signal handlers live there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.signal(signal.SIGTERM, lambda signum, frame: os.kill(os.getpid(), signal.SIGINT))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if before is None else before)


def _stop_after_shutdown(lock: Path) -> None:
    stopped = leftovers.stop_after_shutdown(lock)
    if stopped:  # said, so that a log shows which processes Ray left and that they were stopped
        print(f"lunartune tune: stopped {len(stopped)} Ray processes still running after ray.shutdown() "
              f"(pids {', '.join(map(str, sorted(stopped)))})", file=sys.stderr)


@contextlib.contextmanager
def _ray_output_settings():
    """Ray reads these when fit() starts. The old output engine is the one that shows CLIReporter's live
    trial table; per-epoch checkpoints otherwise warn about "excessive" experiment syncing. Restored after
    the sweep: a program that calls run_sweep and then Ray Tune itself gets Ray's defaults back."""
    tune_log = logging.getLogger("ray.tune.tune")
    tune_log.addFilter(_without_rays_resume_hint)
    try:
        with environment({"RAY_AIR_NEW_OUTPUT": "0", "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0"}):
            yield
    finally:
        tune_log.removeFilter(_without_rays_resume_hint)


def _without_rays_resume_hint(record: logging.LogRecord) -> bool:
    """Ray's "Resume experiment with: Tuner.restore(...)" on an interrupted sweep is the Python API's way,
    printed beside ours (`lunartune tune --experiment NAME --resume`), which also resumes MLflow and Optuna."""
    return "Resume experiment with:" not in record.getMessage()


def _tuner(cfg: SweepConfig, paths: RunPaths, space, setup: TrialSetup, results_path: str):
    trainable = tune.with_resources(
        tune.with_parameters(train_trial, setup=setup),
        {"cpu": cfg.cpus_per_trial, "gpu": cfg.gpus_per_trial})
    if cfg.resume:
        if not tune.Tuner.can_restore(results_path):
            raise CliError(f"--resume: no restorable Ray state in {results_path} (was the sweep started?)")
        # a spent budget stops a restored sweep at once: errored trials restarted for that moment would end
        # stopped, their error gone (a budget-spent sweep is resumed only to fill MLflow in)
        spent = _budget_flag_path(paths, cfg.experiment).exists()
        return tune.Tuner.restore(results_path, trainable=trainable, resume_errored=not spent)
    storage, name = results_path.rsplit("/", 1)
    _asha_state_path(paths, cfg.experiment).unlink(missing_ok=True)  # an earlier sweep's
    return tune.Tuner(trainable, tune_config=_tune_config(cfg, paths, space), run_config=tune.RunConfig(
        name=name, storage_path=storage, progress_reporter=_reporter(cfg, space, results_path), verbose=1,
        checkpoint_config=tune.CheckpointConfig(num_to_keep=CHECKPOINTS_KEPT, checkpoint_score_attribute=cfg.objective,
                                                checkpoint_score_order="max"),
        failure_config=tune.FailureConfig(max_failures=MAX_FAILURES),
        stop=TimeBudget(cfg.time_budget_s, str(_budget_flag_path(paths, cfg.experiment))) if cfg.time_budget_s else None,
        callbacks=[TrialStatusCallback(setup)]))


class TimeBudget(Stopper):
    """Ray's TimeoutStopper (what TuneConfig's time_budget_s makes) that also leaves `flag` when it ends the
    sweep: Ray's results do not say why a sweep stopped, and a spent budget must not read as a Ctrl-C. Ray
    saves the stopper with the sweep, so a resumed (interrupted) sweep goes on with what is left of it."""

    def __init__(self, seconds: float, flag: str):
        self._timeout, self.flag = TimeoutStopper(seconds), flag

    def __call__(self, trial_id, result):
        return False

    def stop_all(self):
        spent = self._timeout.stop_all()
        if spent:
            try:
                Path(self.flag).touch()
            except OSError:  # the run dir moved since the sweep started: it then reads as interrupted
                pass
        return spent


def _trial_setup(cfg: SweepConfig, data_cfg, target) -> TrialSetup:
    return TrialSetup(data=data_cfg, model=ModelConfig(), objective=cfg.objective, tracking=target,
                      train=TrainConfig(epochs=cfg.max_epochs, seed=cfg.seed, device=trial_device(cfg)))


def _gpu_index(device: str) -> int:
    """N of "cuda:N" (0 for anything else; a malformed N is left to resolve_device's error)."""
    index = device.partition("cuda:")[2]
    return int(index) if device.startswith("cuda:") and index.isdigit() else 0


def trial_device(cfg: SweepConfig) -> str:
    """A trial trains on the GPU Ray gave it (its only visible one, cuda:0), or on the CPU when it asked for
    none: "auto" must not pick up a GPU that Ray left visible but did not give (other trials may hold it)."""
    if cfg.device == "auto":
        return "cuda" if cfg.gpus_per_trial > 0 else "cpu"
    return cfg.device


def _tune_config(cfg: SweepConfig, paths: RunPaths, space):
    storage, points, seed = _optuna_study(cfg, paths, space)
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials(cfg))
    searcher = PruningAwareOptunaSearch(
        space=define_by_run(space), metric=cfg.objective, mode="max", sampler=sampler, storage=storage,
        study_name=cfg.experiment, points_to_evaluate=points, max_t=cfg.max_epochs, time_attr=EPOCH)
    scheduler = (ResumableASHA(_asha_state_path(paths, cfg.experiment), time_attr=EPOCH, max_t=cfg.max_epochs,
                               grace_period=cfg.grace_epochs, reduction_factor=cfg.reduction_factor)
                 if cfg.use_asha else FIFOScheduler())
    return tune.TuneConfig(search_alg=RetryPassingLimiter(searcher, max_concurrent=cfg.concurrency),
                           scheduler=scheduler, num_samples=cfg.samples, metric=cfg.objective, mode="max",
                           reuse_actors=True,  # a new trial skips the worker's ~3-10 s of torch/smp imports
                           trial_name_creator=trial_name, trial_dirname_creator=trial_dirname)


def trial_name(trial) -> str:
    """'vgg11-t007': backbone + Ray's trial counter; the MLflow child run gets the same name."""
    index = trial.experiment_tag.split("_", 1)[0]
    backbone = canonical_backbone(trial.config.get("backbone", "vgg11"))
    return f"{backbone}-t{int(index):03d}" if index.isdigit() else f"{backbone}-{trial.trial_id}"


def trial_dirname(trial) -> str:
    return f"{trial_name(trial)}_{trial.trial_id}"  # short: Ray's default spells out the whole config


def _load_study(cfg: SweepConfig, paths: RunPaths):
    """The persistent study (SQLite in the run dir: survives even a SIGKILL of the driver)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the live trial table says it better
    storage = optuna.storages.RDBStorage(f"sqlite:///{paths.optuna_db}")
    study = optuna.create_study(study_name=cfg.experiment, storage=storage, direction="maximize",
                                load_if_exists=True)
    return storage, study


def _check_study(cfg: SweepConfig, paths: RunPaths, space, data_root: str) -> None:
    """A new sweep of an existing experiment continues its study (TPE learns from the earlier sweeps), which
    only makes sense when their scores are comparable: the same space and objective, and the same problem
    (input size, epochs, data and split). A sweep that differs is refused, naming what differs."""
    study = _load_study(cfg, paths)[1]
    digest = hashlib.sha256(repr((space.params, space.fixed, cfg.objective)).encode()).hexdigest()[:16]
    if study.user_attrs.get("space_digest", digest) != digest:
        raise CliError(f"--experiment {cfg.experiment}: its Optuna study in {paths.optuna_db} was built with a "
                       f"different search space or objective; use a new --experiment for {space.source}")
    problem = {"--image-size": "x".join(map(str, cfg.image_size)), "--max-epochs": cfg.max_epochs,
               "--data": without_generator_version(data_root), "--mask-source": cfg.mask_source,
               "--exclude-mismatches": cfg.exclude_mismatches}
    before = study.user_attrs.get("problem", problem)  # studies of older versions kept no problem: adopted
    changed = [f"{flag} {before.get(flag)!r} then, {value!r} now" for flag, value in problem.items()
               if before.get(flag, value) != value]
    if changed:
        raise CliError(f"--experiment {cfg.experiment}: its Optuna study in {paths.optuna_db} scored trials of "
                       f"another problem ({'; '.join(changed)}): their scores would mislead TPE; use a new "
                       f"--experiment, or the same flags")
    study.set_user_attr("space_digest", digest)
    study.set_user_attr("problem", problem)


def _optuna_study(cfg: SweepConfig, paths: RunPaths, space):
    """The study, the points to evaluate first (enqueued once: only into a study without trials) and the
    sampler's seed (sampler_seed)."""
    storage, study = _load_study(cfg, paths)
    return storage, (space.points_to_evaluate if not study.trials else None), sampler_seed(cfg.seed, len(study.trials))


def startup_trials(cfg: SweepConfig) -> int:
    """TPE's random start-up trials (n_startup_trials; counted over the whole study, every sweep of it).
    Optuna's default, 10, made the default 8-trial sweep pure random search: a third of --samples, 2 to 10."""
    return cfg.startup_trials if cfg.startup_trials is not None else min(10, max(2, cfg.samples // 3))


def sampler_seed(seed: int, trials_before: int) -> int:
    """TPE's seed for a new sweep: --seed for a study's first sweep, else --seed mixed with the number of
    trials the study already holds. A later sweep seeded with --seed alone drew the same random start-up
    trials as the first one and trained them again to the same scores (--data synthetic ties --seed to
    the data, so a user could not even change it); mixed, it draws new ones, as reproducibly."""
    if trials_before == 0:
        return seed
    return int(np.random.SeedSequence([seed, trials_before]).generate_state(1)[0])


class BestEpochReporter(CLIReporter):
    """Ray's live table ranking trials by their best epoch (best_<objective>), as the summary and promote
    do: ranked by the latest value, its "Current best trial" named another winner than the summary below it.
    Ray hands every reporter the Tuner's metric; a reporter made with its own refuses it, so it is skipped.
    Two of Ray's lines are restated: the best trial by its name in the table (Ray gives its id, which
    nothing else shows) with rounded values, and the results folder the sweep writes to (Ray shows its
    staging folder under /tmp/ray, which is deleted with the session)."""

    _results_path: str | None = None  # a reporter pickled by an older lunartune (a resumed sweep) has none

    def __init__(self, *args, results_path: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._results_path = results_path

    def set_search_properties(self, metric, mode):
        return super().set_search_properties(None if self._metric else metric, None if self._mode else mode)

    def _progress_str(self, trials, done, *sys_info, **kwargs):
        try:
            text = super()._progress_str(trials, done, *sys_info, **kwargs)
        except TypeError:  # Ray sorts finished trials by the metric: one without it (None) fails the sort
            self._sort_by_metric = False  # e.g. a trial resumed from results an older lunartune reported
            text = super()._progress_str(trials, done, *sys_info, **kwargs)
        delim = kwargs.get("delim", "\n")
        return delim.join(self._restated(line, trials) for line in text.split(delim))

    def _restated(self, line: str, trials) -> str:
        if line.startswith("Result logdir: ") and self._results_path:
            return f"Ray results: {self._results_path}"
        if line.startswith("Current best trial: "):
            trial, metric = self._current_best_trial(trials)
            if trial is not None:
                value = trial.last_result.get(metric)
                shown = {p: trial.config[p] for p in self._parameter_columns if p in trial.config}
                return f"Current best trial: {trial} with {metric}={_rounded(value)}" + (
                    f" ({_shown_values(shown)})" if shown else "")
        return line


def _rounded(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _reporter(cfg: SweepConfig, space, results_path: str):
    # conditional parameters are absent from some configs, and CLIReporter's "best trial" line then fails
    always_there = [p.name for p in space.params if not p.when][:5]
    best = best_name(cfg.objective)
    return BestEpochReporter(metric_columns={cfg.objective: cfg.objective, best: "best", "val_loss": "val_loss",
                                             EPOCH: EPOCH},
                             parameter_columns=always_there, metric=best, mode="max", sort_by_metric=True,
                             max_report_frequency=15, results_path=results_path)


# ---------------------------------------------------------------------------------------------
# Final statuses and the summary
# ---------------------------------------------------------------------------------------------

class TrialStatusCallback(Callback):
    """Driver side: when Ray knows how a trial ended, tag its child run completed/pruned/diverged/errored.
    An errored run also gets its error; a trial that died before opening its run gets one here, so that
    MLflow lists every trial and says why it failed."""
    _backoff: tracking.Backoff | None = None  # a callback pickled by an older lunartune (a resumed sweep) has none

    def __init__(self, setup: TrialSetup):
        self.trial_setup = setup  # not `setup`: Ray calls Callback.setup(**info)
        self._backoff = tracking.Backoff.for_store(setup.tracking.uri)  # in Ray's controller loop: trials wait on it

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._finish(trial, trial_status(trial.last_result, None, self.trial_setup.train.epochs))

    def on_trial_error(self, iteration, trials, trial, **info):
        self._finish(trial, "errored", describe_error(_saved_error(trial)))

    def _finish(self, trial, status: str, error: str | None = None) -> None:
        self._backoff = self._backoff or tracking.Backoff.for_store(self.trial_setup.tracking.uri)
        if self._backoff.skipping():
            print(f"lunartune tune: MLflow: trial {trial.trial_id} not tagged {status} yet (MLflow did not answer "
                  f"moments ago); it will be after the sweep or on --resume", file=sys.stderr)
            return
        try:
            target = self.trial_setup.tracking
            run_id = (trial.last_result or {}).get(RUN_ID) or tracking.find_child_run(
                target.uri, target.experiment_id, target.parent_run_id, trial.trial_id)
            if not run_id and status == "errored":
                run_id = _open_run_for(self.trial_setup, trial.trial_id, trial_name(trial), trial.config)
            if run_id:
                tracking.finish_child_run(target.uri, run_id, status, error)
        except Exception as err:  # MLflow away: never stop the sweep for it; sync_to_mlflow tags it later
            self._backoff.failed()
            print(f"lunartune tune: warning: MLflow: trial {trial.trial_id} not tagged {status} "
                  f"({type(err).__name__}); it will be after the sweep or on --resume", file=sys.stderr)


def _saved_error(trial) -> BaseException | None:
    """The exception Ray saved for a failed trial (None if it saved none, or it cannot be read back)."""
    try:
        return trial.get_pickled_error() or trial.get_error()
    except Exception:
        return None


def _open_run_for(setup: TrialSetup, trial_id: str, name: str, config: dict | None) -> str:
    """A child run for a trial that never opened its own (it failed first, or MLflow was away all along):
    the params and backbone tag the trial would have logged, so promote and the UI see it like any other;
    Ray's flat config if the trial's configs cannot even be built."""
    config = config or {}
    try:
        params, tags = run_params_and_tags(config, setup)
    except ConfigError:
        params = config
        tags = {tracking.BACKBONE_TAG: canonical_backbone(config["backbone"])} if "backbone" in config else {}
    return tracking.open_child_run(setup.tracking, trial_id, name, params, tags)


def describe_error(err: BaseException | None) -> str:
    """'WeightsError: /x/bad.pt: ...': the exception that ended a trial, on one line. Ray wraps a trainable's
    exception in a RayTaskError (`cause` is the original) or, read back from error.txt, in a TuneError holding
    the whole traceback, whose last unindented line is the original's."""
    if err is None:
        return "unknown error (Ray saved none)"
    cause = getattr(err, "cause", None)
    root = cause if isinstance(cause, BaseException) else err
    text = str(root).strip()
    unindented = [line for line in text.splitlines() if line.strip() and not line[0].isspace()]
    if isinstance(root, TuneError) and len(unindented) > 1:  # error.txt's text: its last unindented line
        return unindented[-1][:ERROR_CHARS]
    first = text.splitlines()[0] if text else ""
    return f"{type(root).__name__}: {first}"[:ERROR_CHARS]


def trial_status(last_result: dict | None, error, max_epochs: int) -> str:
    """One of TRIAL_STATUSES, from a trial's last result."""
    if error is not None:
        return "errored"
    if not last_result or EPOCH not in last_result:
        return "unfinished"
    if last_result.get(DIVERGED):
        return "diverged"
    return "completed" if last_result[EPOCH] >= max_epochs else "pruned"


def _optuna_numbers(paths: RunPaths, experiment: str) -> dict[str, int]:
    """{Ray trial id: its Optuna trial number} (a FAILed trial's retry, added later, has the higher number);
    empty without a study (a sweep refused before it made one)."""
    try:
        study = optuna.load_study(study_name=experiment, storage=f"sqlite:///{paths.optuna_db}")
    except KeyError:
        return {}
    return {t.user_attrs[RAY_TRIAL_ATTR]: t.number for t in study.get_trials(deepcopy=False)
            if RAY_TRIAL_ATTR in t.user_attrs}


def sync_to_mlflow(results, setup: TrialSetup, resumable: set[str],
                   optuna_numbers: dict[str, int] | None = None, unfinished: set[str] = frozenset()) -> list[str]:
    """Fill each trial's child run in from Ray's results (every reported epoch and the best checkpoints are
    there): the epochs MLflow missed while it was away, the run itself if the trial never reached MLflow,
    the best checkpoint if its upload failed, the final status tag (not for the `resumable` trials: --resume
    runs them on, and tags them when they end; `unfinished` ones, stopped by the time budget, are tagged so
    whatever the callback tagged them), and the Optuna trial number (`optuna_numbers`, by Ray trial id).
    Idempotent (steps already in MLflow are skipped); returns the trials MLflow still lacks."""
    incomplete = []
    for result in results:
        try:
            _sync_trial(result, setup, resumable, optuna_numbers or {}, unfinished)
        except Exception as err:  # MLflow still away (or refuses): say which, keep going
            incomplete.append(f"{Path(result.path or '?').name} ({type(err).__name__}: {str(err)[:120]})")
    if incomplete:
        print(f"lunartune tune: warning: MLflow {shown_uri(setup.tracking.uri)} is missing data for {len(incomplete)} trial(s):\n  "
              + "\n  ".join(incomplete) + "\nevery epoch and checkpoint is in Ray's results; once MLflow is "
              "back, `lunartune tune --experiment <name> --resume` fills it in", file=sys.stderr)
    return incomplete


def _sync_trial(result, setup: TrialSetup, resumable: set[str], optuna_numbers: dict[str, int],
                unfinished: set[str]) -> None:
    target, frame, last = setup.tracking, result.metrics_dataframe, result.metrics or {}
    if frame is None or EPOCH not in frame or not last.get("trial_id"):
        if result.error is None and result.path and Path(result.path).name.rsplit("_", 1)[1] in unfinished:
            _end_unreported_run(target, Path(result.path).name.rsplit("_", 1)[1])  # budget spent before epoch 1
        if result.error is not None and result.path:  # failed before its first epoch: list it, with why
            name, trial_id = Path(result.path).name.rsplit("_", 1)  # sweep.trial_dirname
            run_id = (tracking.find_child_run(target.uri, target.experiment_id, target.parent_run_id, trial_id)
                      or _open_run_for(setup, trial_id, name, result.config))
            tags = tracking.client(target.uri).get_run(run_id).data.tags
            _tag_optuna_number(target.uri, run_id, tags, optuna_numbers.get(trial_id))
            if tags.get(tracking.STATUS_TAG) == tracking.RUNNING:
                tracking.finish_child_run(target.uri, run_id, "errored", describe_error(result.error))
        return
    trial_id = last["trial_id"]
    run_id = last.get(RUN_ID) or tracking.find_child_run(target.uri, target.experiment_id, target.parent_run_id, trial_id)
    if not run_id:  # the trial ran while MLflow was away the whole time
        name = Path(result.path).name.rsplit("_", 1)[0]
        run_id = _open_run_for(setup, trial_id, name, result.config)
    epochs = frame[frame[DIVERGED].fillna(False).astype(bool) == False] if DIVERGED in frame else frame  # noqa: E712
    have = tracking.logged_steps(target.uri, run_id, EPOCH)
    for _, row in epochs.drop_duplicates(EPOCH, keep="last").iterrows():
        if pd.notna(row[EPOCH]) and int(row[EPOCH]) not in have:
            tracking.log_metrics(target.uri, run_id, {k: v for k, v in row.items()
                                                      if is_epoch_metric(k) and pd.notna(v)}, step=int(row[EPOCH]))
    _sync_best_checkpoint(result, target.uri, run_id, setup.objective)
    tags = tracking.client(target.uri).get_run(run_id).data.tags
    _tag_optuna_number(target.uri, run_id, tags, optuna_numbers.get(trial_id))
    if trial_id in resumable:
        return  # stopped by Ctrl-C: --resume continues it
    if trial_id in unfinished:  # stopped by the time budget (Ray may have told the callback it completed)
        if tags.get(tracking.STATUS_TAG) != tracking.UNFINISHED:
            tracking.finish_child_run(target.uri, run_id, tracking.UNFINISHED)
        return
    status = trial_status(last, result.error, setup.train.epochs)
    if tags.get(tracking.STATUS_TAG) == tracking.RUNNING:
        error = describe_error(result.error) if result.error is not None else None
        tracking.finish_child_run(target.uri, run_id, status, error)


def _end_unreported_run(target, trial_id: str) -> None:
    """The child run a trial opened before the time budget stopped it, ahead of its first epoch."""
    run_id = tracking.find_child_run(target.uri, target.experiment_id, target.parent_run_id, trial_id)
    if run_id and tracking.client(target.uri).get_run(run_id).data.tags.get(tracking.STATUS_TAG) == tracking.RUNNING:
        tracking.finish_child_run(target.uri, run_id, tracking.UNFINISHED)


def _tag_optuna_number(uri: str, run_id: str, tags: dict, number: int | None) -> None:
    if number is not None and tags.get(tracking.OPTUNA_TRIAL_TAG) != str(number):
        tracking.set_tags(uri, run_id, {tracking.OPTUNA_TRIAL_TAG: number})


def _sync_best_checkpoint(result, uri: str, run_id: str, objective: str) -> None:
    """Upload the trial's best checkpoint from Ray's folder when MLflow's checkpoint/best.pt is missing or from
    another epoch: MLflow was away when the trial tried. Best by the trial's own rule (tuner.objective); the
    sweep keeps it (CheckpointConfig scores by the objective), a folder that did not is left be."""
    frame = result.metrics_dataframe
    best = None if frame is None or objective not in frame else best_epoch(zip(frame[EPOCH], frame[objective]))
    if best is None:
        return
    kept = [c for c, metrics in result.best_checkpoints if metrics.get(EPOCH) == best[1]]
    if kept and tracking.best_checkpoint_epoch(uri, run_id) != best[1]:
        with kept[-1].as_directory() as folder:  # local, or downloaded from the cluster's storage
            upload_best_from_ray(uri, run_id, Path(folder) / STATE_FILE, objective)


def _end_running_study_trials(paths: RunPaths, experiment: str, cut_short: set[str]) -> None:
    """Optuna trials still RUNNING once every trial of the sweep has ended: those the time budget cut short
    (`cut_short`, Ray trial ids; Ray does not tell the searcher) are PRUNED at the epoch they reached, so TPE
    learns from them as from ASHA's; the others were asked for by a driver that was killed (SIGKILL) before
    Ray saved them: Ray will never tell them, so they FAIL and TPE stops counting them as running (we hold
    the experiment's lock: no other sweep of this study is running)."""
    storage = optuna.storages.RDBStorage(f"sqlite:///{paths.optuna_db}")
    study = optuna.load_study(study_name=experiment, storage=storage)
    study_id = storage.get_study_id_from_name(experiment)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        cut = trial.user_attrs.get(RAY_TRIAL_ATTR) in cut_short and trial.intermediate_values
        # as its MLflow run is tagged, so the study alone tells it from a trial ASHA pruned
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        storage.set_trial_user_attr(trial_id, STATUS_ATTR, tracking.UNFINISHED)
        study.tell(trial.number, state=TrialState.PRUNED if cut else TrialState.FAIL)


def _summarise(cfg: SweepConfig, results, experiment_id: str, target, results_path: str,
               stopped: set[str], budget_spent: bool = False) -> SweepResult:
    """`stopped`: the trials Ray stopped mid-flight (resumable, unless the time budget ended the sweep)."""
    finished = results.num_terminated + results.num_errors
    rows, errors = [], {}
    for result in results:
        metrics, config = result.metrics or {}, result.config or {}  # None for a trial that never started
        best = _best_row(result, cfg.objective)
        status = trial_status(metrics, result.error, cfg.max_epochs)
        if metrics.get("trial_id") in stopped:
            status = "unfinished"  # Ctrl-C stopped it mid-flight (--resume continues it), or the time budget
        if status == "errored":
            errors[Path(result.path or "?").name] = describe_error(result.error)
        # named as in Ray's live table and MLflow (trial_dirname is "<name>_<trial id>")
        rows.append({"trial": Path(result.path).name.rsplit("_", 1)[0] if result.path else metrics.get("trial_id", "?"),
                     "backbone": config.get("backbone", ""), "objective": best.get(cfg.objective, float("nan")),
                     "epochs": metrics.get(EPOCH, 0), "status": status, "config": config, "metrics": best})
    rows.sort(key=lambda r: -r["objective"] if math.isfinite(r["objective"]) else math.inf)
    statuses = {s: sum(r["status"] == s for r in rows) for s in sorted({r["status"] for r in rows})}
    # no best trial if none reported a finite score (every trial errored before its first epoch, say)
    top = rows[0] if rows and math.isfinite(rows[0]["objective"]) else {"config": {}, "metrics": {}}
    return SweepResult(
        experiment=cfg.experiment, experiment_id=experiment_id, parent_run_id=target.parent_run_id,
        tracking_uri=target.uri, results_path=results_path, budget_spent=budget_spent, config=cfg,
        interrupted=not budget_spent and (finished < cfg.samples or bool(stopped)),
        best_config=top["config"], best_metrics=top["metrics"], best_run_id=top["metrics"].get(RUN_ID),
        statuses=statuses, top_trials=[{k: v for k, v in r.items() if k not in ("config", "metrics")}
                                       for r in rows[:TOP_TRIALS_SHOWN]], errors=errors)


def _best_row(result, objective: str) -> dict:
    """The trial's best epoch (by the objective) as a metrics dict; the last one if none is finite."""
    frame = result.metrics_dataframe
    if frame is None or objective not in frame or frame[objective].isna().all():
        return dict(result.metrics or {})
    return frame.loc[frame[objective].idxmax()].to_dict()


def _cut_short(results, max_epochs: int) -> set[str]:
    """Trials the time budget stopped (Ray's saved state may list them TERMINATED): no error, and a last
    result that is not `done` (a trial that returned, or that ASHA stopped, has done=True), short of the last
    epoch and not diverged (their final done=True result may not have reached the driver yet), or none at
    all (stopped before its first epoch: its MLflow run was opened and would stay running)."""
    cut = set()
    for r in results:
        metrics = r.metrics or {}
        if r.error is not None or metrics.get("done"):
            continue
        if EPOCH not in metrics and r.path:
            cut.add(Path(r.path).name.rsplit("_", 1)[1])  # trial_dirname: "<name>_<trial id>"
        elif "trial_id" in metrics and metrics.get(EPOCH, 0) < max_epochs and not metrics.get(DIVERGED):
            cut.add(metrics["trial_id"])
    return cut


def trials_ray_resumes(results) -> set[str]:
    """Ids of the trials `--resume` runs on: those Ray's saved experiment state leaves short of TERMINATED or
    ERROR (errored ones are retried, and were tagged errored). Read from that state, not from the trials' last
    results: ASHA stopping a trial marks its last result done=True at once, but Ray records the trial
    TERMINATED only once that epoch's checkpoint is saved; Ctrl-C in between leaves it RUNNING in the state,
    and --resume trains it on. (The statuses in `results` do not tell either: after the final save, Ray's
    cleanup, TuneController._cleanup_trials in Ray 2.x, stops the running trials and sets them TERMINATED.)"""
    try:
        saved = tune.ExperimentAnalysis(results.experiment_path, storage_filesystem=results.filesystem).trials
    except Exception as err:  # state unreadable (storage away): the last results are the best guess left
        print(f"lunartune tune: warning: Ray's experiment state in {results.experiment_path} unreadable "
              f"({type(err).__name__}: {err}); trials whose last result is not done count as unfinished",
              file=sys.stderr)
        return {r.metrics["trial_id"] for r in results if r.metrics and not r.metrics.get("done")}
    return {t.trial_id for t in saved if t.status not in (Trial.TERMINATED, Trial.ERROR)}


# ---------------------------------------------------------------------------------------------
# Resume bookkeeping and small helpers
# ---------------------------------------------------------------------------------------------

def _pointer_path(paths: RunPaths, experiment: str) -> Path:
    """Where the latest sweep of an experiment is described (for --resume)."""
    return paths.root / "sweeps" / f"{experiment}.json"


def _lock_path(paths: RunPaths, experiment: str) -> Path:
    return _pointer_path(paths, experiment).with_suffix(".lock")


def _asha_state_path(paths: RunPaths, experiment: str) -> Path:
    """ASHA's rungs, for --resume (tuner.scheduler)."""
    return _pointer_path(paths, experiment).with_suffix(".asha.pkl")


def _budget_flag_path(paths: RunPaths, experiment: str) -> Path:
    """Left by TimeBudget when --time-budget ended the latest sweep of the experiment."""
    return _pointer_path(paths, experiment).with_suffix(".budget-spent")


def _resumed_config(cfg: SweepConfig, pointer: Path) -> SweepConfig:
    """--resume runs the sweep as it was started (its space, data, budgets, cluster); only --address may
    change (without it, the sweep rejoins the --address it was started with)."""
    if not pointer.is_file():
        raise CliError(f"--resume: no sweep of experiment {cfg.experiment!r} was started in this run dir "
                       f"({pointer} is missing)")
    state = json.loads(pointer.read_text())
    if state.get("budget_spent") and not state.get("mlflow_incomplete"):
        raise CliError(f"--resume: the latest sweep of experiment {cfg.experiment!r} ended at its time budget "
                       f"(--time-budget {shown_duration(state['config']['time_budget_s'])}): nothing is left to "
                       f"resume; a new sweep of the experiment continues its Optuna study")
    if state.get("finished") and not state.get("mlflow_incomplete"):
        raise CliError(f"--resume: the latest sweep of experiment {cfg.experiment!r} finished (every trial ended, "
                       f"none errored, MLflow complete): nothing is left to resume; a new sweep of the "
                       f"experiment continues its Optuna study")
    if cfg.time_budget_s is not None:
        raise CliError("--time-budget: a resumed sweep goes on with what is left of the budget it was started "
                       "with; leave the flag out")
    saved = state["config"]
    saved["image_size"] = tuple(saved["image_size"])
    _refuse_changed_flags(cfg, SweepConfig(**saved))
    address = None if cfg.address == LOCAL_RAY else (cfg.address or saved.get("address"))
    return replace(SweepConfig(**saved), resume=True, address=address)


_MAY_DIFFER_ON_RESUME = ("experiment", "resume", "address", "time_budget_s")  # --time-budget: its own error


def _refuse_changed_flags(given: SweepConfig, started: SweepConfig) -> None:
    """CliError for flags given with --resume that differ from the sweep's own (they were ignored without a
    word: `--samples 5` ran the 3 trials it was started with). A flag at its default cannot be told from an
    absent one and is not checked."""
    defaults = SweepConfig()
    changed = [f.name for f in fields(SweepConfig) if f.name not in _MAY_DIFFER_ON_RESUME
               and getattr(given, f.name) != getattr(defaults, f.name)
               and getattr(given, f.name) != getattr(started, f.name)]
    if changed:
        shown = ", ".join(f"{_flag_of(name, getattr(given, name))} (started with {_flag_of(name, getattr(started, name))})"
                          for name in changed)
        raise CliError(f"--resume runs the sweep as it was started; leave out {shown} (a new sweep of the "
                       f"experiment, without --resume, continues its Optuna study with other settings)")


def _flag_of(name: str, value) -> str:
    if name == "use_asha":
        return "ASHA" if value else "--no-asha"
    if name == "image_size":
        value = "x".join(map(str, value))
    return f"--{name.replace('_', '-')} {value}"


def _end_abandoned_sweep(paths: RunPaths, pointer: Path) -> None:
    """End what is left running of the sweep the pointer names: the new sweep's pointer replaces the one its
    `--resume` needed. A parent run still running was killed (SIGKILL, a lost machine: we hold the
    experiment's lock, so it is not running) and ends interrupted; its trials still marked running (after a
    kill or Ctrl-C) end unfinished, so MLflow does not show them running forever and promote ranks their
    checkpoints. Every epoch they logged stays; the user is told."""
    if not pointer.is_file():
        return
    state = json.loads(pointer.read_text())
    started = state.get("tracking_uri_override", paths.tracking_uri_override)
    uri = replace(paths, tracking_uri_override=started).tracking_uri  # the store that sweep logged to
    mlflow = tracking.client(uri)
    try:
        parent = mlflow.get_run(state["parent_run_id"])
    except (MlflowException, KeyError):
        return  # not in this store (or an old pointer): nothing of it to end here
    killed = parent.data.tags.get(tracking.STATUS_TAG) == tracking.RUNNING
    if not killed and parent.data.tags.get(tracking.STATUS_TAG) != tracking.INTERRUPTED:
        return
    running = [run for run in tracking.child_runs(uri, parent.info.experiment_id, parent.info.run_id)
               if run.data.tags.get(tracking.STATUS_TAG) == tracking.RUNNING]
    numbers = _optuna_numbers(paths, pointer.stem) if running else {}  # tagged when a sweep ends: this one never did
    for run in running:
        _tag_optuna_number(uri, run.info.run_id, run.data.tags, numbers.get(run.data.tags.get(tracking.TRIAL_ID_TAG)))
        tracking.finish_child_run(uri, run.info.run_id, tracking.UNFINISHED)
    if killed:
        tracking.end_parent_run(uri, parent.info.run_id, interrupted=True, summary={})
    if killed or running:
        print(f"lunartune tune: warning: sweep {parent.info.run_name} of this experiment was "
              f"{'killed' if killed else 'interrupted'} and never resumed; a new sweep replaces it, so it can no "
              f"longer be resumed: {len(running)} unfinished trial(s) ended" + (", its parent run ended interrupted"
              if killed else "") + "; every epoch they logged stays in MLflow", file=sys.stderr)


def _resumed_paths(paths: RunPaths, state: dict) -> RunPaths:
    """--resume logs to the MLflow store the sweep was started with (its parent run is there) unless
    --tracking-uri or $MLFLOW_TRACKING_URI names another (a server that moved), which gets a warning."""
    if "tracking_uri_override" not in state:  # started by a lunartune that did not record it
        return paths
    started = state["tracking_uri_override"]
    if paths.tracking_uri_override is None:
        return replace(paths, tracking_uri_override=started)
    if paths.tracking_uri_override != started:
        where = started or f"sqlite:///{paths.mlflow_db}"
        print(f"lunartune tune: warning: --resume: the sweep was started logging to {where}; it goes on "
              f"logging to {shown_uri(paths.tracking_uri)} as asked (its parent run must be there)", file=sys.stderr)
    return paths


def _reopen_parent_run(uri: str, run_id: str) -> None:
    try:
        tracking.reopen_run(uri, run_id)
    except MlflowException as err:
        raise CliError(f"--resume: the sweep's parent run {run_id} is not in the MLflow store at {shown_uri(uri)} "
                       f"({str(err).splitlines()[0][:200]}); resume with the --tracking-uri the sweep was "
                       f"started with") from None


def _is_uri(storage: str | None) -> bool:
    return bool(storage) and "://" in storage


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------

def main(args, paths: RunPaths) -> int:
    cfg = sweep_config_from_args(args)
    result = run_sweep_cli_errors(cfg, paths)
    print(format_summary(result, cfg, paths))
    if result.mlflow_incomplete:
        print(f"\nMLflow is incomplete for {len(result.mlflow_incomplete)} run(s) (listed above); once "
              f"{shown_uri(result.tracking_uri)} is back, fill it in with:\n  lunartune --run-dir {paths.root} tune "
              f"--experiment {cfg.experiment} --resume", file=sys.stderr)
    if result.interrupted:
        print(f"\nsweep interrupted; continue it with:\n  lunartune --run-dir {paths.root} tune "
              f"--experiment {cfg.experiment} --resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_INCOMPLETE if result.mlflow_incomplete else 0


def run_sweep_cli_errors(cfg: SweepConfig, paths: RunPaths) -> SweepResult:
    """run_sweep with expected bad-input errors turned into one-line CLI errors (used by main and demo)."""
    try:
        return run_sweep(cfg, paths)
    except (SpaceError, DataError, ConfigError, WeightsError, TrackingError) as err:
        raise CliError(str(err)) from None


def _shown_config(config: dict) -> str:
    """name=value, floats to 4 significant digits, without the values the trial's other choices ignore."""
    ignored = set()
    for kind in (ModelConfig, TrainConfig):
        names = {f.name for f in fields(kind)}
        ignored |= kind(**{k: v for k, v in config.items() if k in names}).unused_fields()
    return _shown_values({k: v for k, v in config.items() if k not in ignored})


def _shown_values(values: dict) -> str:
    return ", ".join(f"{k}={_rounded(v)}" for k, v in sorted(values.items()))


def format_summary(result: SweepResult, cfg: SweepConfig, paths: RunPaths) -> str:
    cfg = result.config or cfg  # a resumed sweep's objective, samples and budget are its own, not the flags'
    lines = [f"\nsweep {result.experiment}: " + ", ".join(f"{n} {s}" for s, n in result.statuses.items())]
    if result.budget_spent:
        never = cfg.samples - sum(result.statuses.values())
        lines.append(f"time budget {shown_duration(cfg.time_budget_s)} spent: trials then running ended unfinished"
                     + (f"; {never} of {cfg.samples} never started" if never > 0 else ""))
    lines.append(f"top trials by {cfg.objective} (best epoch):")
    width = max((len(row["trial"]) for row in result.top_trials), default=0)
    for row in result.top_trials:  # no score (n/a): stopped or failed before its first epoch ended
        score = f"{row['objective']:.4f}" if math.isfinite(row["objective"]) else "n/a"
        lines.append(f"  {row['trial']:<{width}}  {cfg.objective} {score}  epochs {row['epochs']}  {row['status']}")
    if result.errors:
        lines.append("errored trials (the traceback is in error.txt in the trial's folder under Ray results):")
        lines += [f"  {folder}: {error}" for folder, error in sorted(result.errors.items())]
    if result.best_config:
        lines.append(textwrap.fill(f"best config: {_shown_config(result.best_config)}", width=100,
                                   subsequent_indent="  ", break_on_hyphens=False))
    lines += [f"Ray results:   {result.results_path}",
              f"Optuna study:  {cfg.experiment} in {paths.optuna_db}",
              f"MLflow:        {shown_uri(result.tracking_uri)} (experiment {result.experiment_id}, parent run {result.parent_run_id})",
              f"browse it:     lunartune --run-dir {paths.root} ui --experiment {result.experiment}"
              f"   (it prints the links to open; port 5000 unless that one is taken)"]
    return "\n".join(lines)
