"""tuner.leftovers on real processes: it stops exactly the processes labelled for this lock (at a sweep's start:
by another driver; after its ray.shutdown(): by any)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tuner import leftovers

REPO = Path(__file__).resolve().parents[2]
SLEEP = "import time; time.sleep(120)"
# ignores SIGTERM, like a process stuck in a handler; says so once the handler is in place
STUBBORN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(120)"


@pytest.fixture
def spawn():
    procs = []

    def start(label: str | None, code: str = SLEEP) -> subprocess.Popen:
        env = {k: v for k, v in os.environ.items() if k != leftovers.LABEL}
        if label is not None:
            env[leftovers.LABEL] = label
        proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def test_stops_only_the_dead_drivers_processes_of_this_lock(spawn, tmp_path):
    lock, other_lock = tmp_path / "sweeps" / "a.lock", tmp_path / "sweeps" / "b.lock"
    dead_driver = 4_000_000  # above pid_max: certainly no live process
    left = [spawn(leftovers.label_value(lock, dead_driver)) for _ in range(2)]
    other_experiment = spawn(leftovers.label_value(other_lock, dead_driver))
    ours = spawn(leftovers.label_value(lock, os.getpid()))  # this driver's own Ray, e.g. an earlier in-process sweep
    unlabelled = spawn(None)

    assert leftovers.find(lock) == {p.pid: dead_driver for p in left}
    assert leftovers.stop(lock, grace_s=5) == {p.pid: dead_driver for p in left}
    assert [p.wait(timeout=5) for p in left] == [-signal.SIGTERM] * 2
    assert all(p.poll() is None for p in (other_experiment, ours, unlabelled))
    assert leftovers.find(lock) == {}


def test_a_process_that_ignores_sigterm_is_killed_after_the_grace_period(spawn, tmp_path):
    lock = tmp_path / "x.lock"
    stubborn = spawn(leftovers.label_value(lock, 4_000_000), STUBBORN)
    assert stubborn.stdout.readline().strip() == "ready"
    assert leftovers.stop(lock, grace_s=0.5) == {stubborn.pid: 4_000_000}
    assert stubborn.wait(timeout=10) == -signal.SIGKILL


def test_the_label_is_the_resolved_lock_path_and_is_inherited_only_inside_labelled(spawn, tmp_path):
    lock = tmp_path / "sub" / ".." / "x.lock"
    with leftovers.labelled(lock):
        assert os.environ[leftovers.LABEL] == f"{(tmp_path / 'x.lock').resolve()}#{os.getpid()}"
        child = subprocess.Popen([sys.executable, "-c", SLEEP])  # inherits the label, like Ray's processes
    assert leftovers.LABEL not in os.environ
    try:
        # labelled by this process: never its own leftover; a later driver (another pid) would stop it
        assert leftovers.find(tmp_path / "x.lock") == {}
        out = subprocess.run([sys.executable, "-c", "import sys; from tuner import leftovers; "
                              "print(leftovers.find(sys.argv[1]))", str(tmp_path / "x.lock")],
                             capture_output=True, text=True, check=True, cwd=REPO).stdout
        assert out.strip() == str({child.pid: os.getpid()})
    finally:
        child.kill()
        child.wait()


def test_after_shutdown_processes_get_time_to_exit_then_every_one_labelled_for_the_lock_is_stopped(spawn, tmp_path):
    lock = tmp_path / "x.lock"
    exiting = spawn(leftovers.label_value(lock, os.getpid()), "import time; time.sleep(0.5)")  # like a worker
    lingering = spawn(leftovers.label_value(lock, os.getpid()))  # like an agent still reporting to a gone GCS
    killed_drivers = spawn(leftovers.label_value(lock, 4_000_000))  # outlived the stop at the sweep's start
    other_experiment = spawn(leftovers.label_value(tmp_path / "y.lock", os.getpid()))
    unlabelled = spawn(None)

    assert sorted(leftovers.stop_after_shutdown(lock, settle_s=5, grace_s=5)) == sorted([lingering.pid,
                                                                                        killed_drivers.pid])
    assert exiting.wait(timeout=5) == 0, "a process that exits within settle_s is not signalled"
    assert lingering.wait(timeout=5) == killed_drivers.wait(timeout=5) == -signal.SIGTERM
    assert other_experiment.poll() is None and unlabelled.poll() is None, "only processes labelled for this lock"
