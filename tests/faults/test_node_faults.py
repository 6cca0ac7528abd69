"""A worker node of the real two-raylet cluster dies while its trials run: they finish on the head node."""
from __future__ import annotations

import shutil
import signal
import os
from pathlib import Path

import pytest

from _procs import free_port, session_members
from fault_helpers import epoch_histories, running_trial, trial_rows, tune_args, wait_exit, wait_for
from test_cluster import RAY, _ray_node, _wait_for_nodes

EPOCHS = 4


@pytest.mark.slow
@pytest.mark.skipif(shutil.which(RAY) is None, reason="the ray CLI is not installed beside this python")
def test_trials_of_a_dead_node_resume_on_the_other_from_their_checkpoints(sweeps, scenes, slow_space, tmp_path):
    port = free_port()
    address = f"127.0.0.1:{port}"
    temp_dir = Path("/tmp") / f"lt-ray-{port}"
    run_dir, shared = tmp_path / "run", tmp_path / "shared"
    uri = f"sqlite:///{run_dir / 'mlflow.db'}"
    sweeps.env.update(RAY_AUTH_MODE="token")
    try:
        with _ray_node("--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp_dir}"):
            _wait_for_nodes(address, 1, timeout_s=90)
            with _ray_node(f"--address={address}") as worker:
                _wait_for_nodes(address, 2, timeout_s=90)
                proc = sweeps.start(run_dir, *tune_args(slow_space, scenes, "nodedeath", samples=2, epochs=EPOCHS,
                                                        concurrency=2, extra=("--address", address, "--storage", str(shared))))
                folder, last = wait_for("a trial on the worker node", lambda: running_trial(
                    shared, EPOCHS, pids=lambda: session_members(worker.pid)), 240, proc, poll_s=0.2)
                for pid in session_members(worker.pid):  # the whole node at once, as a machine dies
                    os.kill(pid, signal.SIGKILL)
                # read after the kill (a read first let the trial run on): Ray takes seconds to see a node gone
                dead_node = _node_tag(uri, last["mlflow_run_id"])
                assert wait_exit(proc, 400) == 0, proc.log.read_text()[-4000:]
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)
    rows = trial_rows(shared)[folder]
    assert [r["epoch"] for r in rows] == list(range(1, EPOCHS + 1)), "resumed from its checkpoint, no epoch twice"
    assert rows[-1]["pid"] != last["pid"]
    histories = epoch_histories(uri, "nodedeath")
    assert sorted(histories.values()) == [list(range(1, EPOCHS + 1))] * 2, histories
    assert "2 completed" in proc.log.read_text()
    resumed_on = _node_tag(uri, last["mlflow_run_id"])
    assert len(resumed_on) == 56 and resumed_on != dead_node, "the child run names the node the trial finished on"


def _node_tag(uri: str, run_id: str) -> str:
    from tuner import tracking

    return tracking.client(uri).get_run(run_id).data.tags["ray_node_id"]
