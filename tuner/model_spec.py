"""`--model SPEC` -> a local checkpoint file, for predict, evaluate, export and promote.

SPEC is one of

    path/to/best.pt              a checkpoint file on disk
    models:/NAME@ALIAS           a registered model version by alias (e.g. models:/lunar-unet@champion)
    models:/NAME/VERSION         a registered model version by number
    runs:/RUN_ID[/PATH]          an MLflow run (PATH: an artifact file or folder inside it)
    RUN_ID                       a bare MLflow run id (32 hex digits)

One rule finds the file for every MLflow form: run id -> its `checkpoint/` artifact folder (the file the
run's `best_checkpoint` tag names, else the folder's only `.pt` file, else `best.pt`). A registered
version leads to its run through `run_id` (or, when empty, its `source` URI). Downloads go to
<run-dir>/downloads/<run id>/, replaced atomically on every call: a trial may have logged a newer best.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tuner.cli import CliError
from tuner.settings import RunPaths, shown_uri

CHECKPOINT_DIR = "checkpoint"  # artifact folder of a run that holds its checkpoint file
CHECKPOINT_SUFFIX = ".pt"
PREFERRED_NAME = "best.pt"  # chosen when the folder holds several .pt files and no tag says which
DOWNLOADS = "downloads"  # <run-dir>/downloads/<run id>/: where MLflow checkpoints are fetched to
_RUN_ID = re.compile(r"[0-9a-f]{32}")
_SPEC_FORMS = "a checkpoint file, models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID[/PATH] or a run id"


@dataclass(frozen=True)
class ResolvedModel:
    checkpoint_path: Path  # a local, existing checkpoint file
    run_id: str | None  # the MLflow run the checkpoint belongs to (None for a plain file)
    model_uri: str | None  # the models:/ or runs:/ URI as given (None for a file or bare run id)
    description: str  # one line for logs and reports, e.g. "models:/lunar-unet@champion (version 3, run ab12...)"


def resolve_model(spec: str, paths: RunPaths) -> ResolvedModel:
    """Turn SPEC into a local checkpoint file; CliError naming SPEC and what was expected otherwise."""
    from mlflow.exceptions import MlflowException

    spec = spec.strip()
    path = Path(spec).expanduser()
    if not spec.startswith(("models:/", "runs:/")) and path.exists():
        return _from_file(path)
    if not spec.startswith(("models:/", "runs:/")) and not _RUN_ID.fullmatch(spec):
        raise CliError(f"--model {spec}: no such checkpoint file, and not a run id or model URI "
                       f"(expected {_SPEC_FORMS})")
    try:
        if spec.startswith("models:/"):
            return _from_registry(spec, paths)
        run_id, _, artifact = spec.removeprefix("runs:/").partition("/")
        return _from_run(run_id, paths, artifact.strip("/") or None,
                         model_uri=spec if spec.startswith("runs:/") else None)
    except MlflowException as err:  # a server that refuses (401, 500), a store that cannot be read
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CliError(f"--model {spec}: MLflow {shown_uri(paths.tracking_uri)}: {first[:300]}") from None


def load_model(spec: str, paths: RunPaths):
    """(model in eval mode, checkpoint info, ResolvedModel): resolve SPEC and rebuild its model."""
    from models.checkpoint import CheckpointError, model_from_checkpoint
    from models.config import ConfigError

    resolved = resolve_model(spec, paths)
    try:
        model, info = model_from_checkpoint(resolved.checkpoint_path)
    except (CheckpointError, ConfigError) as err:
        raise CliError(f"--model {spec}: {err}") from None
    return model, info, resolved


def _from_file(path: Path) -> ResolvedModel:
    if not path.is_file():
        raise CliError(f"--model {path}: is a folder, expected a checkpoint file (.pt)")
    path = path.resolve()
    return ResolvedModel(path, None, None, str(path))


# ----------------------------------------------------------------------------- MLflow forms

def _client(paths: RunPaths):
    """An MlflowClient for paths.tracking_uri; refuses to create an empty SQLite store as a side effect."""
    from mlflow.tracking import MlflowClient

    from tuner import tracking

    uri = paths.tracking_uri
    missing = paths.missing_store()
    if missing is not None:
        raise CliError(f"no MLflow store at {missing} (tracking URI {shown_uri(uri)}); run `lunartune tune` first, "
                       f"or pass --run-dir / --tracking-uri of the store that holds the model")
    tracking.bound_http_retries()  # a server that went away is an error in seconds, not minutes of retries
    try:
        tracking.check_reachable(uri)
    except tracking.TrackingError as err:
        raise CliError(str(err)) from None
    return MlflowClient(tracking_uri=uri)


def _not_found(err) -> bool:
    return getattr(err, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


def _from_registry(spec: str, paths: RunPaths) -> ResolvedModel:
    from mlflow.exceptions import MlflowException

    body = spec[len("models:/"):]
    client = _client(paths)
    name, alias, version = _parse_registry(spec, body)
    try:
        client.get_registered_model(name)
    except MlflowException as err:
        if not _not_found(err):
            raise
        known = sorted(m.name for m in client.search_registered_models())
        raise CliError(f"--model {spec}: no registered model {name!r} in {shown_uri(paths.tracking_uri)} "
                       f"(registered models: {', '.join(known) or 'none'}); run `lunartune promote` first") from None
    try:
        mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except MlflowException as err:
        if not _not_found(err):
            raise
        raise CliError(f"--model {spec}: {_missing_version(client, name, alias, version)}") from None
    run_id = mv.run_id or _run_of_source(client, mv.source)
    if not run_id:
        raise CliError(f"--model {spec}: version {mv.version} of {name!r} names no run (source {mv.source!r}); "
                       f"expected a version registered from a lunartune run")
    resolved = _from_run(run_id, paths, None, model_uri=spec)
    return ResolvedModel(resolved.checkpoint_path, run_id, spec,
                         f"{spec} (version {mv.version}, run {run_id})")


def _parse_registry(spec: str, body: str) -> tuple[str, str | None, str | None]:
    """'NAME@ALIAS' -> (name, alias, None); 'NAME/VERSION' -> (name, None, version)."""
    if "@" in body:
        name, _, alias = body.partition("@")
        if name and alias and "/" not in name:
            return name, alias, None
    else:
        name, _, version = body.partition("/")
        if name and version.isdigit():
            return name, None, version
    raise CliError(f"--model {spec}: expected models:/NAME@ALIAS or models:/NAME/VERSION (VERSION a number)")


def _missing_version(client, name: str, alias: str | None, version: str | None) -> str:
    versions = client.search_model_versions(f"name = '{name}'")
    numbers = sorted(int(v.version) for v in versions)
    if alias:
        aliases = sorted(client.get_registered_model(name).aliases or {})  # versions from search lack them
        return (f"registered model {name!r} has no alias {alias!r} "
                f"(aliases: {', '.join(aliases) or 'none'}; versions: {numbers or 'none'})")
    return f"registered model {name!r} has no version {version} (versions: {numbers or 'none'})"


def _run_of_source(client, source: str | None) -> str | None:
    """Run id from a version's source: runs:/RUN_ID/... or an MLflow 3 LoggedModel models:/m-... URI."""
    source = source or ""
    if source.startswith("runs:/"):
        return source[len("runs:/"):].split("/")[0] or None
    if source.startswith("models:/m-"):
        logged = client.get_logged_model(source[len("models:/"):].split("/")[0])
        return logged.source_run_id
    return None


def _from_run(run_id: str, paths: RunPaths, artifact: str | None, model_uri: str | None) -> ResolvedModel:
    from mlflow.exceptions import MlflowException

    client = _client(paths)
    try:
        run = client.get_run(run_id)
    except MlflowException as err:
        if not _not_found(err):
            raise
        raise CliError(f"--model {model_uri or run_id}: no MLflow run {run_id!r} in {shown_uri(paths.tracking_uri)}") from None
    artifact = artifact or _checkpoint_artifact(client, run, model_uri)
    if not artifact.endswith(CHECKPOINT_SUFFIX):  # a folder (runs:/ID/checkpoint): apply the same rule inside
        artifact = _pick_checkpoint(client, run, artifact, model_uri)
    local = _download(client, run_id, artifact, paths.root / DOWNLOADS / run_id, model_uri)
    return ResolvedModel(local, run_id, model_uri, f"{model_uri or 'run ' + run_id} ({artifact})")


def _checkpoint_artifact(client, run, model_uri: str | None) -> str:
    """The run's checkpoint artifact path: the tag the trial wrote, else the rule over checkpoint/."""
    from tuner.tracking import CHECKPOINT_TAG

    tagged = run.data.tags.get(CHECKPOINT_TAG)
    if tagged and any(a.path == tagged for a in client.list_artifacts(run.info.run_id, str(Path(tagged).parent))):
        return tagged
    return _pick_checkpoint(client, run, CHECKPOINT_DIR, model_uri)


def _pick_checkpoint(client, run, folder: str, model_uri: str | None) -> str:
    files = [a.path for a in client.list_artifacts(run.info.run_id, folder) if not a.is_dir]
    candidates = [f for f in files if f.endswith(CHECKPOINT_SUFFIX)]
    if len(candidates) == 1:
        return candidates[0]
    preferred = [f for f in candidates if Path(f).name == PREFERRED_NAME]
    if preferred:
        return preferred[0]
    what = f"several ({', '.join(candidates)}) and none named {PREFERRED_NAME}" if candidates else "none"
    raise CliError(f"--model {model_uri or run.info.run_id}: run {run.info.run_id} has no checkpoint artifact "
                   f"under {folder}/ (expected one {CHECKPOINT_SUFFIX} file; found {what})")


def _download(client, run_id: str, artifact: str, dst: Path, model_uri: str | None) -> Path:
    """Fetch into a temp folder beside `dst`, then swap it in: an interrupted download leaves no partial file."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        local = Path(client.download_artifacts(run_id, artifact, str(staging)))
        if not local.is_file():
            raise CliError(f"--model {model_uri or run_id}: artifact {artifact!r} of run {run_id} is not a file")
        final = dst / local.relative_to(staging)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(local, final)
        return final
    except CliError:
        raise
    except Exception as err:  # MLflow raises OSError or MlflowException, depending on the artifact store
        raise CliError(f"--model {model_uri or run_id}: cannot download {artifact!r} of run {run_id}: {err}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
