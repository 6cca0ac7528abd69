"""Where a run's outputs live, resolved once from flags and environment.

Everything lunartune writes goes under one run directory so that a sweep, its MLflow store, its Ray
results and its generated data can be found (and deleted) together.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

DEFAULT_RUN_DIR = "lunartune-runs"
RUN_DIR_ENV = "LUNARTUNE_RUN_DIR"
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
SQLITE = "sqlite:///"  # MLflow's SQLite store URIs: sqlite:///relative/path or sqlite:////abs/path


class RunDirError(Exception):
    """The run dir cannot be made: the message names --run-dir (the CLI prints it as one line)."""


@dataclass(frozen=True)
class RunPaths:
    """Layout of one run directory (all absolute)."""

    root: Path  # the run directory itself
    tracking_uri_override: str | None = None  # --tracking-uri or $MLFLOW_TRACKING_URI; None = SQLite here

    @property
    def mlflow_db(self) -> Path:
        return self.root / "mlflow.db"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.root / "mlartifacts"

    @property
    def ray_results(self) -> Path:
        return self.root / "ray"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def optuna_db(self) -> Path:
        return self.root / "optuna.db"

    @property
    def tracking_uri(self) -> str:
        return self.tracking_uri_override or f"{SQLITE}{self.mlflow_db}"

    @property
    def uses_embedded_store(self) -> bool:
        return self.tracking_uri_override is None

    @property
    def local_artifact_root(self) -> Path | None:
        """Where a new experiment's artifacts (checkpoints) go when the store is an SQLite file: the run
        dir's mlartifacts, or one beside a --tracking-uri sqlite:/// file (MLflow's own default, ./mlruns
        in whatever folder the command ran from, scattered checkpoints). None for a server: its own."""
        if self.uses_embedded_store:
            return self.mlflow_artifacts
        db = sqlite_file(self.tracking_uri)
        return db.resolve().parent / "mlartifacts" if db is not None else None

    def missing_store(self) -> Path | None:
        """The SQLite file the tracking URI names (the run dir's or a sqlite:/// override) if it does not
        exist: opening it would create an empty store there. None for a server or an existing file."""
        db = sqlite_file(self.tracking_uri)
        return db if db is not None and not db.is_file() else None

    def ensure(self) -> "RunPaths":
        """Make the run dir's folders; RunDirError naming --run-dir when the path (or a folder above it) is a
        file, or cannot be written (permissions, a read-only file system)."""
        try:
            for d in (self.root, self.mlflow_artifacts, self.ray_results, self.data):
                d.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise RunDirError(f"--run-dir {self.root}: cannot make a folder there ({err.strerror}: "
                              f"{err.filename}); expected a folder or a path where one can be made") from None
        return self


def sqlite_file(uri: str) -> Path | None:
    """The database file of a sqlite:/// tracking URI (sqlite:////abs/path or sqlite:///relative/path);
    None for any other store."""
    return Path(uri[len(SQLITE):]) if uri.startswith(SQLITE) else None


def resolve_run_paths(run_dir: str | None, tracking_uri: str | None, env: dict | None = None) -> RunPaths:
    """Flag beats environment beats default, for both the run directory and the tracking URI."""
    env = os.environ if env is None else env
    root = Path(run_dir or env.get(RUN_DIR_ENV) or DEFAULT_RUN_DIR).expanduser().resolve()
    uri = tracking_uri or env.get(TRACKING_URI_ENV) or None
    return RunPaths(root=root, tracking_uri_override=uri)


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """Set `values` in os.environ for the block, then put back what was there (unset names unset again):
    the settings MLflow and Ray read from the environment, without leaking into the caller's later work."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def shown_uri(uri: str) -> str:
    """`uri` for messages and logs: a password in it (postgresql://user:pw@host/db) becomes ***."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    user_info, _, host = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{user_info.split(':', 1)[0]}:***@{host}"))
