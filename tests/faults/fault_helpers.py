"""Helpers (and fixtures re-exported by conftest.py) for the fault tests.

Fault tests: real processes (a `lunartune tune` CLI, Ray workers and raylets, an `mlflow server`) killed
for real with os.kill. Shared helpers; the session fixtures (local_ray, scenes, ...) come from tests/conftest.py.

Every process a test starts carries LUNARTUNE_FAULT_MARK=<unique> in its environment (Ray's raylet and
workers inherit it from the driver), so teardown stops exactly those, by pid, whatever session Ray put
them in; never `ray stop` (it would stop other people's clusters on a shared machine).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
sys.path.insert(0, str(TESTS / "tuner"))  # _procs, test_cluster, test_mlflow_server, test_resume helpers

from _procs import (MARK, RAY_EXIT_S, describe, free_port, session_members, started,  # noqa: E402,F401
                    terminate_session, wait_gone)


# The hand-built U-Net, wide enough that an epoch takes a second or more on 2 busy cores: a kill after an
# epoch's report lands in the middle of the next epoch. Dropout draws from torch's RNG every step: a
# resumed trial repeats an uninterrupted one only if its checkpoint brought the RNG's state back.
SLOW_SPACE = """
description: fault tests - a U-Net slow enough to be killed mid-epoch
params:
  lr: {low: 1.0e-3, high: 1.0e-2, log: true}
fixed: {backbone: unet_scratch, encoder_weights: none, optimizer: adam, batch_size: 4, scratch_width: 32, scratch_depth: 3,
        dropout: 0.3}
"""


@pytest.fixture
def slow_space(tmp_path):
    path = tmp_path / "slow.yaml"
    path.write_text(SLOW_SPACE)
    return str(path)


def kill_started(mark: str, sessions=()) -> int:
    """SIGKILL every process `started(mark, sessions)` finds; returns how many there were."""
    pids = started(mark, sessions)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    deadline = time.monotonic() + 10
    while started(mark, sessions) and time.monotonic() < deadline:
        time.sleep(0.2)
    return len(pids)


class Sweeps:
    """Starts `python -m tuner.cli ...` processes (own session, marked env); teardown kills what is left.
    Every process in `procs` runs in a session of its own (start_new_session): `sessions()` are their ids."""

    def __init__(self, env: dict | None = None):
        self.mark = uuid.uuid4().hex
        self.env = {**os.environ, **(env or {}), MARK: self.mark, "PYTHONUNBUFFERED": "1"}
        self.procs: list[subprocess.Popen] = []

    def start(self, run_dir: Path, *args: str, log: Path | None = None) -> subprocess.Popen:
        out = open(log or run_dir.parent / f"cli-{len(self.procs)}.log", "w")
        proc = subprocess.Popen([sys.executable, "-m", "tuner.cli", "--run-dir", str(run_dir), *args], cwd=REPO,
                                env=self.env, stdout=out, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        proc.log = Path(out.name)
        self.procs.append(proc)
        return proc

    def run(self, run_dir: Path, *args: str, timeout_s: float = 300) -> tuple[int, str]:
        proc = self.start(run_dir, *args)
        return wait_exit(proc, timeout_s), proc.log.read_text()

    def sessions(self) -> list[int]:
        return [proc.pid for proc in self.procs]

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        kill_started(self.mark, self.sessions())


@pytest.fixture
def sweeps():
    s = Sweeps()
    try:
        yield s
    finally:
        s.cleanup()


def wait_exit(proc: subprocess.Popen, timeout_s: float) -> int:
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"the sweep did not finish in {timeout_s} s:\n{proc.log.read_text()[-4000:]}") from None


def wait_for(what: str, predicate, timeout_s: float, proc: subprocess.Popen | None = None, poll_s: float = 0.3):
    """predicate()'s first truthy value; fails if `proc` exits first or time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the sweep ended before {what}:\n{proc.log.read_text()[-4000:]}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(poll_s)


def trial_rows(results_root: Path) -> dict[Path, list[dict]]:
    """Every trial folder under a Ray results root -> its reported results (result.json, in order)."""
    rows = {}
    for path in results_root.glob("*/*/result.json"):
        lines = path.read_text().splitlines()
        try:
            rows[path.parent] = [json.loads(line) for line in lines if line.strip()]
        except json.JSONDecodeError:  # being written right now
            rows[path.parent] = [json.loads(line) for line in lines[:-1] if line.strip()]
    return rows


def running_trial(results_root: Path, max_epochs: int, pids=None, min_epoch: int = 1):
    """(trial folder, last result) of a trial that reported >= min_epoch epochs but not its last one."""
    for folder, rows in trial_rows(results_root).items():
        if rows and min_epoch <= rows[-1].get("epoch", 0) < max_epochs and (pids is None or rows[-1]["pid"] in pids()):
            return folder, rows[-1]
    return None


def metric_histories(uri: str, experiment: str, key: str) -> dict[str, list[float]]:
    """Child run name -> its `key` values by epoch."""
    from tuner import tracking

    exp = tracking.find_experiment(uri, experiment)
    parent = tracking.latest_parent_run(uri, exp.experiment_id)
    runs = tracking.child_runs(uri, exp.experiment_id, parent.info.run_id)
    return {r.info.run_name: [m.value for m in sorted(tracking.client(uri).get_metric_history(r.info.run_id, key),
                                                      key=lambda m: m.step)] for r in runs}


def epoch_histories(uri: str, experiment: str) -> dict[str, list[int]]:
    """Child run name -> steps of its `epoch` metric, in MLflow's order (one entry per logged epoch)."""
    from tuner import tracking

    exp = tracking.find_experiment(uri, experiment)
    parents = tracking.client(uri).search_runs([exp.experiment_id], filter_string=f"tags.`{tracking.ROLE_TAG}` = 'sweep'")
    assert len(parents) == 1, f"expected one parent run, got {len(parents)}"
    runs = tracking.child_runs(uri, exp.experiment_id, parents[0].info.run_id)
    return {r.info.run_name: sorted(m.step for m in tracking.client(uri).get_metric_history(r.info.run_id, "epoch"))
            for r in runs}


def child_statuses(uri: str, experiment: str) -> dict[str, str]:
    from tuner import tracking

    exp = tracking.find_experiment(uri, experiment)
    parent = tracking.latest_parent_run(uri, exp.experiment_id)
    return {r.info.run_name: r.data.tags.get(tracking.STATUS_TAG)
            for r in tracking.child_runs(uri, exp.experiment_id, parent.info.run_id)}


def tune_args(space: str, scenes: Path, experiment: str, *, samples: int, epochs: int, concurrency: int = 1,
              extra: tuple[str, ...] = ()) -> list[str]:
    return ["tune", "--space", space, "--data", str(scenes), "--samples", str(samples), "--max-epochs", str(epochs),
            "--concurrency", str(concurrency), "--device", "cpu", "--no-asha", "--experiment", experiment, *extra]
