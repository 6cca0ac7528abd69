"""MLflow: one experiment, one parent run per sweep, one child run per trial, and lookups for later commands.

Everything goes through an `MlflowClient` built for an explicit tracking URI (no `mlflow.set_tracking_uri`
global), so the driver and every Ray worker talk to the same store whatever their environment says.

Layout of what a sweep records (the names below are the contract `promote`, `report` and `ui` read):

    experiment <name>                       artifact location = <run-dir>/mlartifacts (embedded store)
      parent run  <ray run name>            tag lunartune.role=sweep; params: space file, seed, scheduler...
        child run <backbone>-t<NNN>         tag lunartune.role=trial, ray_trial_id, backbone, status,
                                            best_checkpoint=checkpoint/best.pt; metrics per epoch (step=epoch);
                                            artifacts checkpoint/best.pt, model_config.json
"""
from __future__ import annotations

import contextlib
import getpass
import json
import os
import socket
import sqlite3
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from tuner.settings import environment, shown_uri, sqlite_file

ROLE_TAG = "lunartune.role"  # "sweep" on parent runs, "trial" on child runs
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own nesting tag (the UI nests children under it)
TRIAL_ID_TAG = "ray_trial_id"
OPTUNA_TRIAL_TAG = "optuna_trial_number"  # the trial's number in the Optuna study (study name = experiment)
BACKBONE_TAG = "backbone"
STATUS_TAG = "status"  # children: completed | pruned | errored | diverged | unfinished (| running); parent: running | finished | interrupted
STOPPED_BY_TAG = "stopped_by"  # parent: "time_budget" when --time-budget ended the sweep
ERROR_TAG = "error"  # errored children: the exception that ended the trial, one line (Ray's error.txt has the rest)
CHECKPOINT_TAG = "best_checkpoint"  # artifact path of the best checkpoint inside the child run
CHECKPOINT_ARTIFACT = "checkpoint/best.pt"
MODEL_CONFIG_ARTIFACT = "model_config.json"
COMPLETED, PRUNED, ERRORED, DIVERGED, RUNNING = "completed", "pruned", "errored", "diverged", "running"
INTERRUPTED = "interrupted"  # a parent run whose sweep stopped before its end (Ctrl-C, killed): --resume goes on
UNFINISHED = "unfinished"  # Ray ended the trial before its first epoch's result (tuner.sweep.trial_status),
# or its sweep was killed and a new one replaced it (tuner.sweep._end_abandoned_sweep)
# MLflow's run status for each final trial status (the tag is the precise one; this drives the UI icon)
_RUN_STATUS = {COMPLETED: "FINISHED", PRUNED: "KILLED", DIVERGED: "FAILED", ERRORED: "FAILED", UNFINISHED: "KILLED"}
# default ports of the databases MLflow stores runs in (a URI without a port uses these)
DATABASE_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}
_MAX_BATCH = 900  # MLflow accepts at most 1000 metrics per log_batch call
# MLflow's HTTP defaults (7 retries, backoff factor 2, 120 s timeout) let one call to an absent server
# block for minutes. Trials and the driver give up after ~10 s instead: what was not logged stays in Ray's
# results and `lunartune tune --resume` fills it in (tuner.sweep.sync_to_mlflow). Set these variables
# yourself to override.
HTTP_RETRY_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                  "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
MLFLOW_BACKOFF_S = 60.0  # after a failed call a trial (and the driver's callback) leaves MLflow alone this long


class TrackingError(RuntimeError):
    """The tracking store cannot be used: the message names the URI and what to do."""


@dataclass(frozen=True)
class TrackingTarget:
    """Where a trial logs: passed to every trial explicitly (reaches workers on every node)."""

    uri: str  # MLflow tracking URI (sqlite:///... or http://host:port)
    experiment_id: str  # the sweep's experiment, created once on the driver
    parent_run_id: str  # the sweep's parent run
    source: tuple[tuple[str, str], ...] = ()  # source_tags() of the driver: every child run gets them


def git_commit() -> str | None:
    """The commit of the lunartune checkout that runs (None outside a git checkout)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, timeout=5,
                             capture_output=True, text=True)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def source_tags(command: str) -> dict[str, str]:
    """MLflow's own source tags, which its fluent API sets and MlflowClient.create_run does not: the UI's
    User, Source and Version columns. Computed once on the driver (a worker's would name Ray's worker)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        user = str(os.getuid())
    commit = git_commit()
    return {"mlflow.user": user, "mlflow.source.name": f"lunartune {command}", "mlflow.source.type": "LOCAL",
            **({"mlflow.source.git.commit": commit} if commit else {})}


def client(uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=uri)


class Backoff:
    """After a failed MLflow call, skip the next ones for `seconds`. A server that stopped answering costs
    each call up to ~17 s (timeout x retries): a trial paid that at every epoch (twice when the checkpoint
    improved), and the driver's status callback stalled Ray's controller, and with it every trial. What is
    skipped is filled in from Ray's results when the sweep ends (tuner.sweep.sync_to_mlflow)."""

    def __init__(self, seconds: float = MLFLOW_BACKOFF_S):
        self.seconds, self._until = seconds, 0.0

    @classmethod
    def for_store(cls, uri: str) -> "Backoff":
        """Only for a server: a SQLite store fails fast ("database is locked" under concurrent trials), and
        skipping it for a minute would only hide epochs from the UI until the sweep ends."""
        return cls(MLFLOW_BACKOFF_S if uri.startswith(("http://", "https://")) else 0.0)

    def skipping(self) -> bool:
        return time.monotonic() < self._until

    def __getstate__(self) -> dict:  # pickled with Ray's state: another process's clock means nothing here
        return {"seconds": self.seconds}

    def __setstate__(self, state: dict) -> None:
        self.seconds, self._until = state["seconds"], 0.0

    def failed(self) -> None:
        self._until = time.monotonic() + self.seconds


def bound_http_retries() -> None:
    """Bounded MLflow HTTP retries for this process (read by MLflow at each request)."""
    for name, value in HTTP_RETRY_ENV.items():
        os.environ.setdefault(name, value)


# ---------------------------------------------------------------------------------------------
# Driver side: reachability, experiment, parent run, final statuses
# ---------------------------------------------------------------------------------------------

def check_reachable(uri: str, timeout_s: float = 10.0) -> None:
    """Fail within `timeout_s` with a clear message if the store cannot be used: an HTTP tracking server
    that does not answer, an SQLite store that is not a database (SQLAlchemy's error is a traceback)."""
    if sqlite_file(uri) is not None:
        return _check_sqlite(uri)
    if not uri.startswith(("http://", "https://")):
        return _check_other_store(uri, timeout_s)
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            if response.status == 200:
                return
            problem = f"HTTP {response.status}"
    except urllib.error.HTTPError as err:
        problem = f"HTTP {err.code}"
    except (urllib.error.URLError, OSError) as err:
        problem = str(getattr(err, "reason", err))
    raise TrackingError(f"MLflow tracking server {shown_uri(uri)} is not reachable ({problem} from "
                        f"{shown_uri(url)}); start it "
                        f"(mlflow server --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1) or omit "
                        f"--tracking-uri to use the embedded SQLite store")


def _check_sqlite(uri: str) -> None:
    path = sqlite_file(uri)
    if path.exists() and not path.is_file():
        raise TrackingError(f"MLflow store {uri}: {path} is a folder, not an SQLite database file")
    if not path.is_file():
        return  # MLflow creates it on first use (commands that only read refuse that: RunPaths.missing_store)
    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
            db.execute("PRAGMA schema_version")
    except sqlite3.Error as err:
        raise TrackingError(f"MLflow store {uri}: {path} is not an SQLite database ({err})") from None


def _check_other_store(uri: str, timeout_s: float) -> None:
    """A database URI (postgresql://, mysql://, ...) is tried once; a path or an unknown scheme (an old
    ./mlruns habit: MLflow refuses its file store unless MLFLOW_ALLOW_FILE_STORE=true) failed deep inside
    the first command's work."""
    _check_database_host_answers(uri, timeout_s)
    try:
        client(uri).search_experiments(max_results=1)
    except Exception as err:  # MLflow's and SQLAlchemy's errors alike: the first line says what is wrong
        problem = (str(err).strip().splitlines() or [type(err).__name__])[0].split(". ")[0]
        raise TrackingError(f"MLflow tracking URI {shown_uri(uri)!r} cannot be used ({problem[:300]}); expected "
                            f"http(s)://host:port (an mlflow server), sqlite:///path/to/mlflow.db or a "
                            f"database URI such as postgresql://user@host/db") from None


def _check_database_host_answers(uri: str, timeout_s: float) -> None:
    """MLflow retries a database it cannot reach ten times with growing sleeps (~100 s, a warning each):
    a host that does not accept a TCP connection is refused at once instead."""
    try:
        url = sqlalchemy.engine.make_url(uri)
    except sqlalchemy.exc.ArgumentError:
        return  # not a database URI: MLflow's own error says what it is
    port = url.port or DATABASE_PORTS.get(url.get_backend_name())
    if not url.host or port is None:
        return  # a local socket, or a database whose port we do not know: left to MLflow
    try:
        socket.create_connection((url.host, port), timeout=timeout_s).close()
    except OSError as err:
        raise TrackingError(f"MLflow tracking URI {shown_uri(uri)!r}: nothing answers "
                            f"at {url.host}:{port} ({err.strerror or err}); start the database or fix the host "
                            f"and port") from None


def get_or_create_experiment(uri: str, name: str, artifact_location: str | None) -> str:
    """Experiment id of `name`, created once (with an explicit artifact root) or restored if deleted."""
    mlflow = client(uri)
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        return mlflow.create_experiment(name, artifact_location=artifact_location)
    if experiment.lifecycle_stage == "deleted":
        mlflow.restore_experiment(experiment.experiment_id)
    return experiment.experiment_id


def start_parent_run(uri: str, experiment_id: str, run_name: str, params: dict, tags: dict) -> str:
    run = client(uri).create_run(experiment_id, run_name=run_name,
                                 tags={ROLE_TAG: "sweep", STATUS_TAG: RUNNING, **tags})
    log_params(uri, run.info.run_id, params)
    return run.info.run_id


def reopen_run(uri: str, run_id: str) -> None:
    """A resumed sweep continues its parent run (and an interrupted or errored trial its child run: the
    error it ended with no longer stands)."""
    mlflow = client(uri)
    mlflow.update_run(run_id, status="RUNNING")
    mlflow.set_tag(run_id, STATUS_TAG, RUNNING)
    if ERROR_TAG in mlflow.get_run(run_id).data.tags:
        mlflow.delete_tag(run_id, ERROR_TAG)


def end_parent_run(uri: str, run_id: str, interrupted: bool, summary: dict) -> None:
    mlflow = client(uri)
    log_metrics(uri, run_id, {k: v for k, v in summary.items() if isinstance(v, (int, float))}, step=0)
    mlflow.set_tag(run_id, STATUS_TAG, INTERRUPTED if interrupted else "finished")
    mlflow.set_terminated(run_id, status="KILLED" if interrupted else "FINISHED")


def finish_child_run(uri: str, run_id: str, status: str, error: str | None = None) -> None:
    """Driver side, once Ray knows how the trial ended: tag the status (and the error) and end the run."""
    mlflow = client(uri)
    mlflow.set_tag(run_id, STATUS_TAG, status)
    if error:
        mlflow.set_tag(run_id, ERROR_TAG, error)
    mlflow.set_terminated(run_id, status=_RUN_STATUS[status])


# ---------------------------------------------------------------------------------------------
# Trial side: child run, per-epoch metrics, best checkpoint
# ---------------------------------------------------------------------------------------------

def open_child_run(target: TrackingTarget, trial_id: str, run_name: str, params: dict, tags: dict) -> str:
    """The trial's child run: the existing one for `trial_id` (a retried or resumed trial), else a new one."""
    existing = find_child_run(target.uri, target.experiment_id, target.parent_run_id, trial_id)
    if existing is not None:
        reopen_run(target.uri, existing)
        set_tags(target.uri, existing, tags)  # where it runs now (node, device), not where it ran first
        # a run the driver opened for a failed first try may lack params (MLflow never changes a logged one)
        logged = client(target.uri).get_run(existing).data.params
        log_params(target.uri, existing, {k: v for k, v in params.items() if k not in logged})
        return existing
    run = client(target.uri).create_run(target.experiment_id, run_name=run_name, tags={
        **dict(target.source), PARENT_TAG: target.parent_run_id, ROLE_TAG: "trial", TRIAL_ID_TAG: trial_id,
        STATUS_TAG: RUNNING, CHECKPOINT_TAG: CHECKPOINT_ARTIFACT, **tags})
    log_params(target.uri, run.info.run_id, params)
    return run.info.run_id


def set_tags(uri: str, run_id: str, tags: dict) -> None:
    client(uri).log_batch(run_id, tags=[RunTag(key, str(value)) for key, value in tags.items()])


def find_child_run(uri: str, experiment_id: str, parent_run_id: str, trial_id: str) -> str | None:
    runs = client(uri).search_runs([experiment_id], max_results=1, filter_string=(
        f"tags.`{PARENT_TAG}` = '{parent_run_id}' and tags.{TRIAL_ID_TAG} = '{trial_id}'"))
    return runs[0].info.run_id if runs else None


def log_params(uri: str, run_id: str, params: dict) -> None:
    items = [Param(k, str(v)) for k, v in sorted(params.items())]
    for i in range(0, len(items), 100):  # MLflow caps params per batch at 100
        client(uri).log_batch(run_id, params=items[i:i + 100])


def log_metrics(uri: str, run_id: str, metrics: dict, step: int) -> None:
    now = int(time.time() * 1000)
    items = [Metric(k, float(v), now, step) for k, v in sorted(metrics.items())]
    for i in range(0, len(items), _MAX_BATCH):
        client(uri).log_batch(run_id, metrics=items[i:i + _MAX_BATCH])


def logged_steps(uri: str, run_id: str, key: str) -> set[int]:
    """Steps of metric `key` already in the run (to log each epoch once, however often a trial restarts)."""
    return {m.step for m in client(uri).get_metric_history(run_id, key)}


def log_best_checkpoint(uri: str, run_id: str, checkpoint_file: Path, model_config: dict) -> None:
    """Upload the best weights as checkpoint/best.pt (replacing the previous best) and the model config."""
    mlflow = client(uri)
    artifact_dir = str(Path(CHECKPOINT_ARTIFACT).parent)
    if checkpoint_file.name != Path(CHECKPOINT_ARTIFACT).name:
        raise ValueError(f"{checkpoint_file}: the best checkpoint file must be named {Path(CHECKPOINT_ARTIFACT).name}")
    mlflow.log_artifact(run_id, str(checkpoint_file), artifact_dir)
    mlflow.log_dict(run_id, model_config, MODEL_CONFIG_ARTIFACT)


def best_checkpoint_epoch(uri: str, run_id: str) -> int | None:
    """The epoch of the run's checkpoint/best.pt as its model_config.json says; None if either is missing."""
    mlflow = client(uri)
    if CHECKPOINT_ARTIFACT not in {a.path for a in mlflow.list_artifacts(run_id, str(Path(CHECKPOINT_ARTIFACT).parent))}:
        return None
    return described_epoch(mlflow, run_id)


def described_epoch(mlflow: MlflowClient, run_id: str) -> int | None:
    """The epoch in the run's model_config.json (uploaded after checkpoint/best.pt); None if it has none."""
    if MODEL_CONFIG_ARTIFACT not in {a.path for a in mlflow.list_artifacts(run_id)}:
        return None
    with tempfile.TemporaryDirectory() as folder, no_download_progress_bar():
        described = json.loads(Path(mlflow.download_artifacts(run_id, MODEL_CONFIG_ARTIFACT, folder)).read_text())
    epoch = described.get("epoch")
    return epoch if isinstance(epoch, int) else None


@contextlib.contextmanager
def no_download_progress_bar():
    """MLflow draws a progress bar for every download, even of a 1 kB JSON file: the end of a sweep and promote
    read one per trial, and printed a bar line per trial. MLflow reads its switch at each download."""
    with environment({"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}):
        yield


# ---------------------------------------------------------------------------------------------
# Lookups for promote / report / ui
# ---------------------------------------------------------------------------------------------

def find_experiment(uri: str, name: str):
    """The experiment called `name`; TrackingError listing the known names if there is none."""
    mlflow = client(uri)
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None or experiment.lifecycle_stage == "deleted":
        known = sorted(e.name for e in mlflow.search_experiments())
        raise TrackingError(f"no MLflow experiment {name!r} in {shown_uri(uri)} (experiments there: {known or 'none'}); "
                            f"run `lunartune tune --experiment {name}` first")
    return experiment


def latest_parent_run(uri: str, experiment_id: str):
    """The most recently started sweep (parent run) of an experiment, or TrackingError."""
    runs = client(uri).search_runs([experiment_id], filter_string=f"tags.`{ROLE_TAG}` = 'sweep'",
                                   order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        name = client(uri).get_experiment(experiment_id).name
        raise TrackingError(f"experiment {name!r} (id {experiment_id}) in {shown_uri(uri)} has no sweep (no run tagged "
                            f"{ROLE_TAG}=sweep); run `lunartune tune --experiment {name}` first")
    return runs[0]


def child_runs(uri: str, experiment_id: str, parent_run_id: str, *, backbone: str | None = None,
               order_by_metric: str | None = None, max_results: int = 1000) -> list:
    """Trial runs of one sweep, optionally of one backbone, highest first by the last value logged of
    `order_by_metric` (MLflow sorts by a metric's latest value; promote ranks by each run's best epoch).

    Runs without the metric (errored before the first epoch) come last.
    """
    query = f"tags.`{PARENT_TAG}` = '{parent_run_id}'"
    if backbone is not None:
        query += f" and tags.{BACKBONE_TAG} = '{backbone}'"
    order = [f"metrics.{order_by_metric} DESC"] if order_by_metric else ["attributes.start_time ASC"]
    return client(uri).search_runs([experiment_id], filter_string=query, order_by=order,
                                   max_results=max_results)


def download_checkpoint(uri: str, run_id: str, dst_dir: str | Path) -> Path:
    """Fetch a trial run's best checkpoint file into `dst_dir`; TrackingError if the run has none."""
    run = client(uri).get_run(run_id)
    artifact = run.data.tags.get(CHECKPOINT_TAG, CHECKPOINT_ARTIFACT)
    # a bar for a download over the network; a local copy takes a moment and its bar was noise
    quiet = contextlib.nullcontext() if uri.startswith(("http://", "https://")) else no_download_progress_bar()
    try:
        with quiet:
            local = client(uri).download_artifacts(run_id, artifact, str(dst_dir))
    except Exception as err:  # MLflow raises several types (OSError, MlflowException) for "not there"
        raise TrackingError(f"run {run_id} in {shown_uri(uri)} has no checkpoint artifact {artifact!r} ({err})") from None
    return Path(local)
