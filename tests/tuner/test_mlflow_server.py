"""A sweep against a real `mlflow server` on 127.0.0.1 (trials log over HTTP, artifacts via the server)."""
from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from _procs import free_port, terminate_session
from models.checkpoint import load_checkpoint
from tuner import tracking
from tuner.settings import RunPaths
from tuner.sweep import SweepConfig, run_sweep

MLFLOW = str(Path(sys.executable).with_name("mlflow"))


@pytest.fixture
def mlflow_server(tmp_path):
    port = free_port()
    proc = subprocess.Popen([MLFLOW, "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                             "--artifacts-destination", str(tmp_path / "server-artifacts"),
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(uri, proc, timeout_s=90)
        yield uri
    finally:
        terminate_session(proc.pid)


def _wait_healthy(uri: str, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        assert proc.poll() is None, "mlflow server exited"
        try:
            with urllib.request.urlopen(uri + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        assert time.monotonic() < deadline, "mlflow server did not become healthy"
        time.sleep(0.5)


@pytest.mark.slow
def test_sweep_logs_to_a_real_mlflow_server(local_ray, mlflow_server, scenes, tiny_space, tmp_path):
    paths = RunPaths(root=tmp_path / "run", tracking_uri_override=mlflow_server)
    result = run_sweep(SweepConfig(space=tiny_space, data=str(scenes), samples=2, max_epochs=1, grace_epochs=1,
                                   concurrency=2, device="cpu", experiment="served"), paths)
    assert not result.interrupted and result.statuses == {"completed": 2}
    runs = tracking.child_runs(mlflow_server, result.experiment_id, result.parent_run_id, order_by_metric="val_miou")
    assert len(runs) == 2 and runs[0].info.run_id == result.best_run_id
    experiment = tracking.find_experiment(mlflow_server, "served")
    assert experiment.artifact_location.startswith("mlflow-artifacts:")  # the server decides where artifacts go
    ckpt = load_checkpoint(tracking.download_checkpoint(mlflow_server, result.best_run_id, tmp_path / "dl"))
    assert ckpt["model_config"]["backbone"] == "unet_scratch"
    assert not paths.mlflow_db.exists()  # nothing went to the embedded store
