"""A real 2-node Ray cluster on this machine (two raylets, one CPU each) runs a sweep on both nodes.

Only the processes this test starts are stopped, by pid: each `ray start --block` runs in a session of
its own and every process of that session is signalled (never `ray stop`, which would also stop other
people's Ray on a shared machine).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from _procs import free_port, terminate_session
from tuner import tracking

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))
# Ray 2.60 turns on token auth: every joining node, driver and `ray status` must say so (STACK.md)
AUTH_ENV = {**os.environ, "RAY_AUTH_MODE": "token"}


@contextmanager
def _ray_node(*args: str):
    """`ray start ... --block` in its own session; on exit, its whole process tree is terminated by pid."""
    proc = subprocess.Popen([RAY, "start", "--num-cpus=1", "--disable-usage-stats", "--block", *args],
                            env=AUTH_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        yield proc
    finally:
        terminate_session(proc.pid)


def _alive_nodes(address: str) -> int:
    out = subprocess.run([RAY, "status", f"--address={address}"], env=AUTH_ENV, capture_output=True, text=True,
                         timeout=60)
    active = out.stdout.split("Active:", 1)[-1].split("Pending:", 1)[0] if out.returncode == 0 else ""
    return active.count("node_")


def _wait_for_nodes(address: str, count: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while _alive_nodes(address) < count:
        assert time.monotonic() < deadline, f"the cluster at {address} did not reach {count} nodes"
        time.sleep(1)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which(RAY) is None, reason="the ray CLI is not installed beside this python")
def test_sweep_runs_trials_on_both_nodes_of_a_two_node_cluster(scenes, tiny_space, tmp_path, run_paths):
    port = free_port()
    address = f"127.0.0.1:{port}"
    temp_dir = Path("/tmp") / f"lt-ray-{port}"  # short: Ray's socket paths must stay < 108 characters
    # `ray start` never makes a token (a local ray.init does, so on a fresh machine this test alone would
    # fail without this step, as the README's first cluster command)
    subprocess.run([RAY, "get-auth-token", "--generate"], env=AUTH_ENV, check=True, capture_output=True, timeout=60)
    with _ray_node("--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp_dir}"):
        _wait_for_nodes(address, 1, timeout_s=90)
        with _ray_node(f"--address={address}"):
            _wait_for_nodes(address, 2, timeout_s=90)
            command = [sys.executable, "-m", "tuner.cli", "--run-dir", str(run_paths.root), "tune",
                       "--space", tiny_space, "--data", str(scenes), "--samples", "4", "--max-epochs", "2",
                       "--concurrency", "2", "--device", "cpu", "--no-asha", "--experiment", "cluster",
                       "--address", address, "--storage", str(tmp_path / "shared")]
            done = subprocess.run(command, cwd=REPO, env=AUTH_ENV, capture_output=True, text=True, timeout=400)
    shutil.rmtree(temp_dir, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "Every node must see the same folder" in done.stderr  # a local --storage path is warned about

    uri = run_paths.tracking_uri
    experiment = tracking.find_experiment(uri, "cluster")
    parent = tracking.latest_parent_run(uri, experiment.experiment_id)
    runs = tracking.child_runs(uri, experiment.experiment_id, parent.info.run_id)
    assert len(runs) == 4 and all(r.data.tags[tracking.STATUS_TAG] == "completed" for r in runs)
    assert len({r.data.tags["ray_node_id"] for r in runs}) == 2, "trials should run on both nodes"
    assert (tmp_path / "shared").is_dir() and any((tmp_path / "shared").iterdir())
