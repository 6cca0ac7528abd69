"""`lunartune ui`: the MLflow UI (and, with --optuna, optuna-dashboard) on a run directory's stores.

Each server runs as a child process in a process group of its own: `mlflow server` spawns uvicorn
workers, so stopping means signalling the whole group, and a terminal's Ctrl-C must reach only us so
that we stop the servers in order instead of racing them. Servers bind loopback only; remote users
reach them through `ssh -L` (see the README), never through a public bind without auth.

This module imports only the standard library at load time; mlflow is imported where it is used.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence
from urllib.parse import urlsplit, urlunsplit

from tuner.cli import CliError
from tuner.settings import RunPaths, shown_uri, sqlite_file

DEFAULT_HOST = "127.0.0.1"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
START_TIMEOUT_S = 60.0  # mlflow server answers /health after ~11-20 s on 2 busy cores
STOP_TIMEOUT_S = 15.0  # SIGTERM stops mlflow + uvicorn in ~3-8 s; after this, SIGKILL
POLL_S = 0.5  # between /health probes and liveness checks
PORT_ATTEMPTS = 20  # a busy port moves to the next one, this many times at most
OPTUNA_DASHBOARD_PORT = 8080  # optuna-dashboard's own default
LOG_TAIL_LINES = 25  # of a server's log, shown when it fails to start or dies
DASHBOARD_INSTALL_HINT = "pip install 'lunartune[dashboard]'"


@dataclass(frozen=True)
class UiServer:
    """A running server: its base URL (no trailing slash), the port it got, its group leader, its log."""

    url: str
    port: int
    process: subprocess.Popen
    log: Path


# ----------------------------------------------------------------------------- ports and hosts

def _require_loopback(host: str) -> None:
    # The MLflow server has no authentication: a non-loopback bind would expose every run and
    # artifact (and run deletion) to the network. ssh -L gives remote access without that.
    if host not in LOOPBACK_HOSTS:
        raise CliError(f"--host {host} refused: the UI binds loopback only ({', '.join(LOOPBACK_HOSTS)}); "
                       "from another machine use ssh port forwarding: ssh -L PORT:127.0.0.1:PORT HOST")


def _port_is_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # as the servers bind: a port whose last connections linger in TIME_WAIT (a UI stopped a minute ago)
        # is free to them; without it the probe called it busy and the UI moved off the port ssh -L forwards
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _free_port(host: str, first: int, attempts: int = PORT_ATTEMPTS) -> int:
    """`first` if it is free, else the next free port above it (another process may still take it
    before the server binds: then the server fails to start and its log says so)."""
    for port in range(first, min(first + attempts, 65536)):
        if _port_is_free(host, port):
            return port
    raise CliError(f"ports {first}-{first + attempts - 1} on {host} are all in use: choose another with --port")


def _base_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


# ----------------------------------------------------------------------------- process lifecycle

def _log_tail(log_path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):  # refused, reset, timed out, or an HTTP error status
        return False


def _wait_until_answering(name: str, url: str, process: subprocess.Popen, log_path: Path,
                          timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise CliError(f"{name} exited (code {process.returncode}) before answering {url}; "
                           f"last lines of {log_path}:\n{_log_tail(log_path)}")
        if _answers(url):
            return
        time.sleep(POLL_S)
    raise CliError(f"{name} did not answer {url} within {timeout_s:.0f} s; "
                   f"last lines of {log_path}:\n{_log_tail(log_path)}")


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # the group is already gone
        os.killpg(pgid, sig)


def _group_gone_within(process: subprocess.Popen, timeout_s: float) -> bool:
    """True once no process of the group is left: the leader (our child) is reaped by poll(); its
    orphaned workers are reaped by init, so we watch the group rather than only the leader."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        process.poll()
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def _stop_process_group(process: subprocess.Popen, timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM the whole group (graceful), SIGKILL whatever is left after timeout_s."""
    try:
        _signal_group(process.pid, signal.SIGTERM)
        if _group_gone_within(process, timeout_s):
            return
    except KeyboardInterrupt:
        # A second Ctrl-C while stopping: stop waiting politely, but still leave nothing behind.
        _signal_group(process.pid, signal.SIGKILL)
        process.wait()
        raise
    _signal_group(process.pid, signal.SIGKILL)
    process.wait()


@contextlib.contextmanager
def _running_server(name: str, command: Sequence[str], host: str, port: int, health_path: str,
                    log_path: Path, env: dict[str, str], timeout_s: float) -> Iterator[UiServer]:
    """Start `command` in its own process group, yield once it answers, stop the group on exit."""
    url = _base_url(host, port)
    with open(log_path, "wb") as log:
        # start_new_session: own group (so killpg reaches every worker) and no terminal Ctrl-C.
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   env=env, cwd=log_path.parent, start_new_session=True)
    try:
        _wait_until_answering(name, url + health_path, process, log_path, timeout_s)
        yield UiServer(url=url, port=port, process=process, log=log_path)
    finally:
        _stop_process_group(process)


# ----------------------------------------------------------------------------- the two servers

def _is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def _mlflow_server_command(paths: RunPaths, host: str, port: int) -> list[str]:
    db = sqlite_file(paths.tracking_uri)  # absolute: the server runs in the run dir, not in the caller's folder
    return [sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", f"sqlite:///{db.resolve()}" if db is not None else paths.tracking_uri,
            # Proxied artifact uploads (experiments created in the UI) land in this run directory,
            # not in ./mlartifacts of wherever the command was typed.
            "--artifacts-destination", str(paths.mlflow_artifacts),
            "--host", host, "--port", str(port),
            # One local viewer: each extra uvicorn worker is another ~250 MB process on a small box.
            "--workers", "1"]


def _mlflow_server_env() -> dict[str, str]:
    # MLflow 3's GenAI job runner (a runner + 7 huey consumer processes, ~1 GB) serves LLM-judge
    # jobs, not a sweep's runs table: without it the server is 2 processes (mlflow + uvicorn).
    return {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


@contextlib.contextmanager
def running_mlflow_ui(paths: RunPaths, port: int, host: str = DEFAULT_HOST,
                      timeout_s: float = START_TIMEOUT_S) -> Iterator[UiServer]:
    """`mlflow server` on the run directory's store, from the first free port at or above `port`;
    yields once /health answers, stops the server's whole process group on exit."""
    _require_loopback(host)
    if _is_http(paths.tracking_uri):
        raise CliError(f"{shown_uri(paths.tracking_uri)} is already a server: open it instead of starting one")
    paths.root.mkdir(parents=True, exist_ok=True)
    port = _free_port(host, port)
    with _running_server("mlflow server", _mlflow_server_command(paths, host, port), host, port, "/health",
                         paths.root / f"mlflow-ui-{port}.log", _mlflow_server_env(), timeout_s) as server:
        yield server


def optuna_dashboard_command(paths: RunPaths) -> list[str]:
    """optuna-dashboard's command without --host/--port; a clear error if it or the study is missing."""
    # Installed means importable by this interpreter (an optional extra); its console script sits
    # beside our interpreter, which is the environment pip installed it into.
    script = Path(sys.executable).with_name("optuna-dashboard")
    if importlib.util.find_spec("optuna_dashboard") is None or not script.exists():
        raise CliError(f"--optuna needs optuna-dashboard, which is not installed: {DASHBOARD_INSTALL_HINT}")
    if not paths.optuna_db.exists():
        raise CliError(f"no Optuna storage at {paths.optuna_db}: run `lunartune tune` with this --run-dir first")
    return [str(script), f"sqlite:///{paths.optuna_db}"]


@contextlib.contextmanager
def running_optuna_dashboard(paths: RunPaths, port: int = OPTUNA_DASHBOARD_PORT, host: str = DEFAULT_HOST,
                             timeout_s: float = START_TIMEOUT_S) -> Iterator[UiServer]:
    """optuna-dashboard on the sweep's Optuna storage, like running_mlflow_ui."""
    _require_loopback(host)
    command = optuna_dashboard_command(paths)
    port = _free_port(host, port)
    command += ["--host", host, "--port", str(port)]
    with _running_server("optuna-dashboard", command, host, port, "/", paths.root / f"optuna-dashboard-{port}.log",
                         dict(os.environ), timeout_s) as server:
        yield server


# ----------------------------------------------------------------------------- what to open

def _find_experiment(client, name: str):
    from mlflow.exceptions import MlflowException

    try:
        experiment = client.get_experiment_by_name(name)
    except MlflowException as err:  # a server that refuses (401 without credentials, 500)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CliError(f"MLflow {shown_uri(client.tracking_uri)}: {first[:300]}") from None
    if experiment is not None and experiment.lifecycle_stage == "active":
        return experiment
    names = sorted(e.name for e in client.search_experiments())
    raise CliError(f"no experiment named {name!r}; experiments: {', '.join(names) or '(none)'}")


def _latest_parent_run(client, experiment_id: str):
    """The most recent sweep's own run (its trials are its children); not a promotion run, which has no
    parent either and comes after the sweep (the demo promotes at its end)."""
    from tuner.tracking import ROLE_TAG

    runs = client.search_runs([experiment_id], filter_string=f"tags.`{ROLE_TAG}` = 'sweep'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def sweep_links(base_url: str, experiment_name: str) -> list[str]:
    """Lines naming the experiment's runs table and its latest sweep's parent run, read through
    the tracking server at base_url (ours or a remote one)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=base_url)
    experiment = _find_experiment(client, experiment_name)
    # The runs table by explicit route: MLflow 3.17 otherwise opens a GenAI overview.
    runs_url = f"{_without_credentials(base_url)}/#/experiments/{experiment.experiment_id}/runs"
    lines = [f"runs of {experiment_name!r}: {runs_url}"]
    parent = _latest_parent_run(client, experiment.experiment_id)
    if parent is None:
        lines.append("latest sweep: none yet (no run tagged as a sweep in this experiment)")
    else:
        lines.append(f"latest sweep {parent.info.run_name!r}: {runs_url}/{parent.info.run_id}")
    return lines


def _without_credentials(url: str) -> str:
    """A link to print: a remote server's user:password (http://user:pw@host) is for the client, not the
    terminal; the browser asks for it."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def study_url(dashboard_url: str, study_name: str) -> str:
    """The sweep's study page in optuna-dashboard (the sweep names its study after the experiment),
    or the dashboard's study list when there is no such study."""
    try:
        with urllib.request.urlopen(f"{dashboard_url}/api/studies", timeout=10) as response:
            studies = json.load(response)["study_summaries"]
    except (urllib.error.URLError, OSError, ValueError, KeyError):
        studies = []
    ids = [s["study_id"] for s in studies if s.get("study_name") == study_name]
    return f"{dashboard_url}/dashboard/studies/{ids[0]}" if ids else f"{dashboard_url}/dashboard"


# ----------------------------------------------------------------------------- the command

@contextlib.contextmanager
def _termination_as_exit() -> Iterator[None]:
    """SIGTERM or SIGHUP (the ssh session dropped) unwind like Ctrl-C, so the `finally` that stops
    the servers runs; Python's default for them exits at once and orphans the servers. A signal
    the caller chose to ignore (nohup ignores SIGHUP) stays ignored."""
    def _exit(signum, _frame):
        raise SystemExit(128 + signum)

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP)}
    for sig, handler in previous.items():
        if handler is not signal.SIG_IGN:
            signal.signal(sig, _exit)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _serve_until_interrupted(servers: Sequence[tuple[str, UiServer]]) -> None:
    """Say how to stop, then block until Ctrl-C; a server that dies on its own is an error. The line is said
    inside the `try`: a Ctrl-C that comes as soon as it shows is a stop like any other (exit 0), not 130."""
    try:
        _say("Ctrl-C stops " + " and ".join(name for name, _ in servers) + ".")
        while True:
            for name, server in servers:
                if server.process.poll() is not None:
                    raise CliError(f"{name} stopped on its own (code {server.process.returncode}); "
                                   f"last lines of {server.log}:\n{_log_tail(server.log)}")
            time.sleep(POLL_S)
    except KeyboardInterrupt:
        _say("\nstopping ...")


def _say(text: str) -> None:
    print(text, flush=True)  # flushed: a pipe (tests, `| tee`) would otherwise hold the URLs back


def _require_store(paths: RunPaths) -> None:
    """The SQLite store must exist (the run dir's or a --tracking-uri sqlite:/// one): the server would
    create an empty one at a mistyped path, then say the experiment is missing."""
    missing = paths.missing_store()
    if missing is not None:
        raise CliError(f"no MLflow store at {missing}: run `lunartune tune` first, or pass the "
                       "--run-dir (or --tracking-uri) the sweep used")


def _reachable(base_url: str) -> str:
    """Fail in seconds on a server that is down (MlflowClient would retry for about two minutes);
    an HTTP error status (auth in front, no /health) still means something answers."""
    try:  # urllib takes no user:password in a URL (it read them as part of the host name)
        urllib.request.urlopen(f"{_without_credentials(base_url)}/health", timeout=5).close()
    except urllib.error.HTTPError:
        pass
    except (urllib.error.URLError, OSError) as err:
        raise CliError(f"cannot reach the tracking server {shown_uri(base_url)}: {err}") from None
    return base_url


def _start_mlflow(stack: contextlib.ExitStack, paths: RunPaths, port: int, host: str) -> UiServer | None:
    """Our own server on the run directory's store; None when the tracking URI already is a server."""
    if _is_http(paths.tracking_uri):
        return None
    _require_store(paths)
    _say(f"starting mlflow server on {shown_uri(paths.tracking_uri)} (takes ~15 s) ...")
    server = stack.enter_context(running_mlflow_ui(paths, port, host))
    if server.port != port:
        _say(f"port {port} is busy: using {server.port}")
    _say(f"mlflow server log: {server.log}")
    return server


def main(args, paths: RunPaths) -> int:
    _require_loopback(args.host)
    if not 1 <= args.port <= 65535:
        raise CliError(f"--port {args.port}: expected a TCP port in 1-65535")
    if args.optuna:
        if ":" in args.host:  # neither gunicorn ("::1:8080") nor its fallback server binds IPv6 as it is given
            raise CliError(f"--optuna with --host {args.host}: optuna-dashboard binds IPv4 only; use --host 127.0.0.1")
        optuna_dashboard_command(paths)  # fail before the slow MLflow start, not after it
    with _termination_as_exit(), contextlib.ExitStack() as stack:
        mlflow_ui = _start_mlflow(stack, paths, args.port, args.host)
        base_url = mlflow_ui.url if mlflow_ui else _reachable(paths.tracking_uri.rstrip("/"))
        for line in sweep_links(base_url, args.experiment):
            _say(line)
        servers = [("mlflow server", mlflow_ui)] if mlflow_ui else []
        if args.optuna:
            dashboard = stack.enter_context(running_optuna_dashboard(paths, host=args.host))
            servers.append(("optuna-dashboard", dashboard))
            _say(f"optuna-dashboard: {study_url(dashboard.url, args.experiment)}")
        if not servers:
            return 0  # a remote server: the links are all there is to give
        _serve_until_interrupted(servers)
    # Ctrl-C is how a UI is meant to be stopped, not a failure or an interrupted job: exit 0.
    return 0
