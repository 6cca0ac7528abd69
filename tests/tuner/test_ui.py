"""`lunartune ui` against a real `mlflow server` on a real SQLite store built here with the MLflow client.

One server (started on a port we hold busy) serves most tests of this module: each start costs ~15 s
on two cores. The Ctrl-C test runs `lunartune ui` as a subprocess and checks its process groups.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
import types
import urllib.request
from pathlib import Path

import pytest

from tuner.cli import CliError, main as cli_main
from tuner.settings import RunPaths, resolve_run_paths
from tuner import ui as ui_module
from tuner.tracking import PARENT_TAG, ROLE_TAG, STATUS_TAG
from tuner.ui import PORT_ATTEMPTS, running_mlflow_ui, running_optuna_dashboard, study_url, sweep_links

REPO = Path(__file__).resolve().parents[2]
EXPERIMENT = "lunar-sweep"
OTHER_EXPERIMENT = "older-sweep"
TRIALS = {"vgg11-t000": "completed", "resnet18-t001": "pruned", "vgg11-t002": "completed"}
EPOCHS = 3
STUDY = "lunar-sweep"


# ----------------------------------------------------------------------------- a realistic store

def _log_trial(client, experiment_id: str, parent_id: str, name: str, status: str, index: int,
               start_ms: int, scratch: Path) -> str:
    """One child run as the sweep logs it: params, per-epoch metrics (step = epoch), a checkpoint."""
    from mlflow.entities import Metric, Param

    run = client.create_run(experiment_id, start_time=start_ms, run_name=name,
                            tags={PARENT_TAG: parent_id, ROLE_TAG: "trial", STATUS_TAG: status})
    epochs = 1 if status == "pruned" else EPOCHS
    metrics = []
    for epoch in range(epochs):
        miou = 0.3 + 0.1 * epoch + 0.05 * index
        values = {"val_miou": miou, "train_loss": 1.2 - 0.3 * epoch, "val_loss": 1.3 - 0.25 * epoch,
                  "iou_sky": miou + 0.2}
        metrics += [Metric(key, value, start_ms + epoch * 1000, epoch) for key, value in values.items()]
    params = [Param("backbone", name.split("-")[0]), Param("lr", str(10 ** -(index + 2)))]
    client.log_batch(run.info.run_id, metrics=metrics, params=params)
    checkpoint = scratch / f"{name}.ckpt.txt"
    checkpoint.write_text("weights would be here")
    client.log_artifact(run.info.run_id, str(checkpoint), "checkpoint")
    client.set_terminated(run.info.run_id, end_time=start_ms + epochs * 1000)
    return run.info.run_id


def _log_report(client, parent_id: str, scratch: Path) -> None:
    from PIL import Image, ImageDraw

    report = scratch / "report"
    report.mkdir()
    (report / "report.md").write_text("# Sweep report\n\nBest trial: vgg11-t002 (val_miou 0.60)\n")
    image = Image.new("RGB", (160, 90), "white")
    ImageDraw.Draw(image).line([(10, 80), (80, 40), (150, 20)], fill="navy", width=3)
    image.save(report / "val_miou.png")
    client.log_artifacts(parent_id, str(report), "report")


def build_sweep_store(root: Path) -> dict:
    """A run directory as a finished sweep leaves it: an older sweep's parent, then the latest
    parent (tag lunartune.role=sweep) with three trials and a report/ folder, then a promotion run;
    plus a second experiment. Returns the ids the tests look for."""
    from mlflow import MlflowClient

    paths = RunPaths(root=root).ensure()
    client = MlflowClient(tracking_uri=paths.tracking_uri)
    # As tuner/sweep.py creates them on the embedded store: artifacts under <run-dir>/mlartifacts.
    experiment_id = client.create_experiment(EXPERIMENT, artifact_location=paths.mlflow_artifacts.as_uri())
    client.create_experiment(OTHER_EXPERIMENT, artifact_location=paths.mlflow_artifacts.as_uri())
    start_ms = int(time.time() * 1000) - 3_600_000
    old = client.create_run(experiment_id, start_time=start_ms, run_name="sweep-old", tags={ROLE_TAG: "sweep"})
    client.set_terminated(old.info.run_id, end_time=start_ms + 1000)
    parent = client.create_run(experiment_id, start_time=start_ms + 60_000, run_name="sweep-latest",
                               tags={ROLE_TAG: "sweep"})
    scratch = root / "scratch"
    scratch.mkdir()
    trial_ids = {name: _log_trial(client, experiment_id, parent.info.run_id, name, status, i,
                                  start_ms + 120_000 + i * 10_000, scratch)
                 for i, (name, status) in enumerate(TRIALS.items())}
    _log_report(client, parent.info.run_id, scratch)
    client.set_terminated(parent.info.run_id, end_time=start_ms + 600_000)
    # promote runs after the sweep (the demo does): a run with no parent that is not a sweep
    promotion = client.create_run(experiment_id, start_time=start_ms + 700_000, run_name="promote-vgg11-t001",
                                  tags={ROLE_TAG: "promotion"})
    client.set_terminated(promotion.info.run_id, end_time=start_ms + 710_000)
    return {"paths": paths, "experiment_id": experiment_id, "parent_id": parent.info.run_id,
            "old_parent_id": old.info.run_id, "trial_ids": trial_ids}


def build_optuna_study(paths: RunPaths) -> None:
    import optuna

    study = optuna.create_study(study_name=STUDY, storage=f"sqlite:///{paths.optuna_db}", direction="maximize")
    for value in (0.31, 0.42, 0.6):
        study.add_trial(optuna.trial.create_trial(params={"lr": value / 100},
                                                  distributions={"lr": optuna.distributions.FloatDistribution(1e-5, 1e-1, log=True)},
                                                  value=value))


# ----------------------------------------------------------------------------- helpers

def _get(url: str, data: bytes | None = None) -> bytes:
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.read()


def _ephemeral_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _hold_ports(count: int) -> tuple[int, list[socket.socket]]:
    """`count` consecutive ports on 127.0.0.1, all bound and listening by us (so busy for anyone)."""
    for _ in range(50):
        first, held = _ephemeral_port(), []
        try:
            for port in range(first, first + count):
                s = socket.socket()
                held.append(s)
                s.bind(("127.0.0.1", port))
                s.listen()
            return first, held
        except OSError:
            for s in held:
                s.close()
    pytest.skip(f"found no {count} consecutive free ports")


def _children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry.name))
    return kids


def _group_members(pgid: int) -> list[int]:
    """Live processes whose process group is pgid (zombies are being reaped and do not count)."""
    members = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if entry.name.isdigit() and int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry.name))
    return members


def _read_until(process: subprocess.Popen, marker: str, timeout_s: float) -> str:
    """stdout of `process` up to and including the line containing marker."""
    text, deadline = "", time.monotonic() + timeout_s
    while marker not in text:
        if time.monotonic() > deadline or process.poll() is not None:
            raise AssertionError(f"no {marker!r} from lunartune ui; output so far:\n{text}")
        ready, _, _ = select.select([process.stdout], [], [], 1.0)
        if ready:
            text += os.read(process.stdout.fileno(), 65536).decode()
    return text


def _non_loopback_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET address: no packet is sent for UDP connect
        except OSError:
            return None
        address = s.getsockname()[0]
    return None if address.startswith("127.") else address


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    with contextlib.chdir(root):  # anything MLflow writes relative to the working directory stays here
        return build_sweep_store(root)


@pytest.fixture(scope="module")
def ui(store):
    """The UI asked for a port we hold busy: it must come up on another one."""
    busy_port, held = _hold_ports(1)
    try:
        with running_mlflow_ui(store["paths"], busy_port) as server:
            yield {"server": server, "busy_port": busy_port}
    finally:
        held[0].close()


# ----------------------------------------------------------------------------- the server

def test_server_answers_health(ui):
    assert _get(f"{ui['server'].url}/health") == b"OK"


def test_busy_port_moves_to_a_free_one(ui):
    server = ui["server"]
    assert ui["busy_port"] < server.port <= ui["busy_port"] + PORT_ATTEMPTS
    assert server.url == f"http://127.0.0.1:{server.port}"


def test_rest_api_lists_every_run(ui, store):
    body = json.dumps({"experiment_ids": [store["experiment_id"]], "max_results": 100}).encode()
    runs = json.loads(_get(f"{ui['server'].url}/api/2.0/mlflow/runs/search", body))["runs"]
    names = {run["info"]["run_name"] for run in runs}
    assert names == {"sweep-old", "sweep-latest", "promote-vgg11-t001", *TRIALS}


def test_artifacts_are_served_from_the_run_directory(ui, store):
    url = f"{ui['server'].url}/api/2.0/mlflow/artifacts/list?run_id={store['parent_id']}&path=report"
    files = {entry["path"] for entry in json.loads(_get(url))["files"]}
    assert files == {"report/report.md", "report/val_miou.png"}


def test_server_binds_loopback_only(ui):
    address = _non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to try")
    with pytest.raises(ConnectionRefusedError), socket.create_connection((address, ui["server"].port), timeout=3):
        pass


def test_links_name_the_runs_table_and_the_latest_sweep(ui, store):
    url = ui["server"].url
    runs_table = f"{url}/#/experiments/{store['experiment_id']}/runs"
    lines = sweep_links(url, EXPERIMENT)
    assert lines[0].endswith(runs_table)
    assert lines[1].endswith(f"{runs_table}/{store['parent_id']}") and "sweep-latest" in lines[1]


# ----------------------------------------------------------------------------- the command

def test_remote_tracking_server_gets_links_without_a_new_server(ui, store, capsys, tmp_path):
    url = ui["server"].url
    code = cli_main(["--run-dir", str(tmp_path), "--tracking-uri", url + "/", "ui", "--experiment", EXPERIMENT])
    out = capsys.readouterr().out
    assert code == 0
    assert f"{url}/#/experiments/{store['experiment_id']}/runs/{store['parent_id']}" in out
    assert not list(tmp_path.iterdir())  # no log, no store: nothing was started here


def test_a_password_in_the_tracking_uri_is_never_printed(ui, store, capsys, tmp_path):
    """The links printed the server URL as given, password included; the health check took user:pw for part
    of the host name and called the server unreachable (naming the password too)."""
    port = ui["server"].port
    code = cli_main(["--run-dir", str(tmp_path), "--tracking-uri", f"http://ann:s3cret@127.0.0.1:{port}", "ui",
                     "--experiment", EXPERIMENT])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert f"http://127.0.0.1:{port}/#/experiments/{store['experiment_id']}/runs/{store['parent_id']}" in out
    assert "s3cret" not in out + err


def test_a_relative_sqlite_uri_opens_the_store_it_names(store, capsys, tmp_path, monkeypatch):
    """`--tracking-uri sqlite:///mlflow.db` was checked against the caller's folder, then handed as is to a
    server started in the run dir: it opened (and made) an empty store there."""
    from tuner.ui import _mlflow_server_command

    monkeypatch.chdir(store["paths"].root)
    paths = resolve_run_paths(str(tmp_path / "elsewhere"), "sqlite:///mlflow.db", env={})
    command = _mlflow_server_command(paths, "127.0.0.1", 5000)
    assert command[command.index("--backend-store-uri") + 1] == f"sqlite:///{store['paths'].root.resolve()}/mlflow.db"


def test_optuna_on_ipv6_loopback_is_refused_before_anything_starts(capsys, tmp_path):
    assert cli_main(["--run-dir", str(tmp_path), "ui", "--host", "::1", "--optuna"]) == 1
    assert "--optuna with --host ::1: optuna-dashboard binds IPv4 only" in capsys.readouterr().err


def test_unknown_experiment_lists_the_existing_ones(ui, capsys, tmp_path):
    code = cli_main(["--run-dir", str(tmp_path), "--tracking-uri", ui["server"].url, "ui", "--experiment", "nope"])
    err = capsys.readouterr().err
    assert code == 1
    assert "no experiment named 'nope'" in err
    assert EXPERIMENT in err and OTHER_EXPERIMENT in err


def test_unreachable_tracking_server_is_a_clear_error(capsys, tmp_path):
    url = f"http://127.0.0.1:{_ephemeral_port()}"  # nothing listens there
    assert cli_main(["--run-dir", str(tmp_path), "--tracking-uri", url, "ui"]) == 1
    assert f"cannot reach the tracking server {url}" in capsys.readouterr().err


def test_missing_store_is_a_clear_error(capsys, tmp_path):
    assert cli_main(["--run-dir", str(tmp_path / "empty"), "ui"]) == 1
    assert "no MLflow store at" in capsys.readouterr().err
    # a mistyped sqlite --tracking-uri too: the server would create an empty store there
    mistyped = tmp_path / "mlfow.db"
    assert cli_main(["--run-dir", str(tmp_path), "--tracking-uri", f"sqlite:///{mistyped}", "ui"]) == 1
    assert f"no MLflow store at {mistyped}" in capsys.readouterr().err and not mistyped.exists()


@pytest.mark.parametrize("port", ["0", "-5", "70000"])
def test_a_port_outside_1_to_65535_is_refused(capsys, tmp_path, port):
    assert cli_main(["--run-dir", str(tmp_path), "ui", "--port", port]) == 1
    assert f"--port {port}: expected a TCP port in 1-65535" in capsys.readouterr().err


def test_non_loopback_host_is_refused(capsys, tmp_path):
    assert cli_main(["--run-dir", str(tmp_path), "ui", "--host", "0.0.0.0"]) == 1
    assert "ssh -L" in capsys.readouterr().err


def test_no_free_port_is_a_clear_error_and_starts_nothing(store):
    first, held = _hold_ports(PORT_ATTEMPTS)
    try:
        with pytest.raises(CliError, match=f"ports {first}-{first + PORT_ATTEMPTS - 1} .* all in use"):
            with running_mlflow_ui(store["paths"], first):
                pass
    finally:
        for s in held:
            s.close()
    assert not list(store["paths"].root.glob(f"mlflow-ui-{first}*.log"))


def _default_stop_signals() -> None:
    for signum in (signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)


@pytest.mark.parametrize(("signum", "exit_code"), [
    (signal.SIGINT, 0), pytest.param(signal.SIGHUP, 128 + signal.SIGHUP, marks=pytest.mark.slow)],
                         ids=["ctrl-c", "ssh-hangup"])
def test_stopping_leaves_no_server_behind(store, signum, exit_code):
    """Ctrl-C as a terminal sends it (SIGINT to the foreground process group) exits 0; a dropped ssh
    session (SIGHUP) exits 129; either way every process of every server group is gone."""
    root = store["paths"].root
    optuna = ["--optuna"] if importlib.util.find_spec("optuna_dashboard") else []
    if optuna and not store["paths"].optuna_db.exists():
        build_optuna_study(store["paths"])
    command = [sys.executable, "-m", "tuner.cli", "--run-dir", str(root), "ui", "--experiment", EXPERIMENT,
               "--port", str(_ephemeral_port()), *optuna]
    # SIGINT and SIGHUP back to their defaults, as in a terminal: pytest itself may run in the background
    # (shells ignore SIGINT there) or under nohup (SIGHUP ignored), and `ui` keeps an ignored signal ignored.
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               start_new_session=True, preexec_fn=_default_stop_signals)
    groups = []
    try:
        out = _read_until(process, "Ctrl-C stops", timeout_s=120)
        groups = [os.getpgid(pid) for pid in _children(process.pid)]
        assert len(groups) == 1 + len(optuna), out
        assert all(len(_group_members(g)) >= 1 for g in groups)
        os.killpg(process.pid, signum)
        assert process.wait(timeout=60) == exit_code
    except BaseException:  # a failed check must not leave its servers running into the next tests
        for group in groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
        raise
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    assert [g for g in groups if _group_members(g)] == []

# ----------------------------------------------------------------------------- --optuna

def test_a_ctrl_c_the_moment_the_stop_line_shows_is_a_clean_stop(monkeypatch, capsys, tmp_path):
    """The test above sends Ctrl-C as soon as "Ctrl-C stops" shows; under load the signal landed after the
    line and before the wait's `try`, and `ui` exited 130 instead of 0."""
    def say(text):
        print(text)
        if text.startswith("Ctrl-C stops"):
            raise KeyboardInterrupt  # a SIGINT delivered right after the line was printed

    monkeypatch.setattr(ui_module, "_say", say)
    exited = types.SimpleNamespace(poll=lambda: 0, returncode=0)  # the old code reached the loop: an error
    ui_module._serve_until_interrupted([("mlflow server", types.SimpleNamespace(process=exited, log=tmp_path))])
    assert capsys.readouterr().out.splitlines() == ["Ctrl-C stops mlflow server.", "", "stopping ..."]


def test_optuna_without_optuna_dashboard_says_how_to_install(store, tmp_path):
    """A subprocess in which optuna_dashboard cannot be imported, installed or not here: a
    sitecustomize on PYTHONPATH blocks it the documented way (sys.modules entry None)."""
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['optuna_dashboard'] = None\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    command = [sys.executable, "-m", "tuner.cli", "--run-dir", str(store["paths"].root), "ui", "--optuna"]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "pip install 'lunartune[dashboard]'" in result.stderr
    assert "starting mlflow server" not in result.stdout  # it fails before the slow start


def test_optuna_dashboard_serves_the_sweep_study(tmp_path):
    if importlib.util.find_spec("optuna_dashboard") is None:
        pytest.skip("optuna-dashboard is not installed (pip install 'lunartune[dashboard]')")
    paths = RunPaths(root=tmp_path)
    build_optuna_study(paths)
    with running_optuna_dashboard(paths, _ephemeral_port()) as dashboard:
        studies = json.loads(_get(f"{dashboard.url}/api/studies"))["study_summaries"]
        links = study_url(dashboard.url, STUDY), study_url(dashboard.url, "no-such-study")
        process = dashboard.process
    assert [s["study_name"] for s in studies] == [STUDY]
    assert links == (f"{dashboard.url}/dashboard/studies/{studies[0]['study_id']}", f"{dashboard.url}/dashboard")
    assert process.poll() is not None and _group_members(process.pid) == []


def test_a_server_that_cannot_start_fails_with_its_log_tail(tmp_path):
    paths = RunPaths(root=tmp_path)
    paths.mlflow_db.write_text("this is not an SQLite database\n" * 100)
    with pytest.raises(CliError) as failure:
        with running_mlflow_ui(paths, _ephemeral_port()):
            pass
    message = str(failure.value)
    assert "mlflow server exited" in message and "last lines of" in message
    assert "not a database" in message  # SQLite's own words, from the server's log
