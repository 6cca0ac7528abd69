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
    leftovers.record_session(lock, tmp_path / "session_ours")

    assert sorted(leftovers.stop_after_shutdown(lock, settle_s=5, grace_s=5)) == sorted([lingering.pid,
                                                                                        killed_drivers.pid])
    assert exiting.wait(timeout=5) == 0, "a process that exits within settle_s is not signalled"
    assert lingering.wait(timeout=5) == killed_drivers.wait(timeout=5) == -signal.SIGTERM
    assert other_experiment.poll() is None and unlabelled.poll() is None, "only processes labelled for this lock"
    assert not leftovers.sessions_file(lock).exists(), "the sweep's sessions are forgotten once it is stopped"


def _opens(path: Path, mode: str) -> str:
    """Code for a process that opens `path` in `mode`, says so, and sleeps holding it open."""
    return f"import time; f = open({str(path)!r}, {mode!r}); print('ready', flush=True); time.sleep(120)"


def test_processes_writing_into_a_recorded_ray_session_are_leftovers_though_unlabelled(spawn, tmp_path):
    """Ray's agents overwrite part of their environment with their process title, label or not; their
    session's log files, open for writing, still say whose they are. Someone reading those logs is spared."""
    lock, dead_driver = tmp_path / "x.lock", 4_000_000
    session, other_session = tmp_path / "session_a", tmp_path / "session_b"
    for folder in (session, other_session):
        (folder / "logs").mkdir(parents=True)
    leftovers.record_session(lock, session, driver_pid=dead_driver)
    log = session / "logs" / "dashboard_agent.log"
    writer = spawn(None, _opens(log, "a"))
    assert writer.stdout.readline().strip() == "ready"  # the log exists now, for the reader
    reader, elsewhere = spawn(None, _opens(log, "r")), spawn(None, _opens(other_session / "logs" / "agent.log", "a"))
    assert reader.stdout.readline().strip() == elsewhere.stdout.readline().strip() == "ready"

    assert leftovers.find(lock) == {writer.pid: dead_driver}
    assert leftovers.stop(lock, grace_s=5) == {writer.pid: dead_driver}
    assert writer.wait(timeout=5) == -signal.SIGTERM
    assert reader.poll() is None and elsewhere.poll() is None
    assert not leftovers.sessions_file(lock).exists(), "a stopped driver's sessions are forgotten"


def test_stop_returns_only_once_a_process_that_let_go_of_its_marks_has_exited(spawn, tmp_path):
    """An exiting process drops what marks it (its memory, its open files) before it is gone: CI saw a Ray agent
    still running, its cmdline already empty, right after stop() returned. Here, one closes its session log on
    SIGTERM and takes a second to exit."""
    lock, session = tmp_path / "x.lock", tmp_path / "session"
    (session / "logs").mkdir(parents=True)
    leftovers.record_session(lock, session, driver_pid=4_000_000)
    slow_exit = spawn(None, "import signal, sys, time\n"
                            f"log = open({str(session / 'logs' / 'agent.log')!r}, 'a')\n"
                            "def bye(*_):\n    log.close(); time.sleep(1.5); sys.exit(3)\n"
                            "signal.signal(signal.SIGTERM, bye)\nprint('ready', flush=True)\ntime.sleep(120)\n")
    assert slow_exit.stdout.readline().strip() == "ready"
    assert leftovers.stop(lock, grace_s=5) == {slow_exit.pid: 4_000_000}
    assert slow_exit.poll() == 3, "stop() returned while the process was still exiting"


RAY_DRIVER = """
import sys, time, ray
from tuner import leftovers
lock = sys.argv[1]
with leftovers.labelled(lock):
    context = ray.init(address="local", num_cpus=1, include_dashboard=False)
leftovers.record_session(lock, context.address_info["session_dir"])
print("ready", flush=True)
time.sleep(300)
"""


def _title(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    except OSError:
        return "(gone)"


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
def test_a_killed_drivers_real_ray_agents_are_found_and_stopped(tmp_path):
    lock = tmp_path / "sweeps" / "x.lock"
    lock.parent.mkdir()
    driver = subprocess.Popen([sys.executable, "-c", RAY_DRIVER, str(lock)], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    found = {}
    try:
        assert driver.stdout.readline().strip() == "ready"
        found = leftovers.find(lock)
        titles = {_title(pid) for pid in found}
        assert {"ray::DashboardAgent", "ray::RuntimeEnvAgent"} <= titles, titles  # the ones CI saw left over
        assert set(found.values()) == {driver.pid}
        driver.kill()
        driver.wait()
        leftovers.stop(lock, grace_s=5)
        assert not [pid for pid in found if _running(pid)], [_title(pid) for pid in found if _running(pid)]
    finally:
        driver.kill()
        driver.wait()
        for pid in found:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
