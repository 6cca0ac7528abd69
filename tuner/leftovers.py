"""Ray processes that a killed sweep left behind, found by a label in their environment and stopped.

Ray ties its processes to the driver (the kernel kills gcs_server and raylet when the driver dies; workers
exit when their raylet goes), but that is best effort: on a loaded machine we have seen a SIGKILLed driver's
processes still alive a minute later. Left alone they hold CPUs and memory and may still be writing to the
run dir while `tune --resume` starts the same trials again. So the driver labels the private Ray it starts
(an environment variable that gcs_server, raylet, agents and workers all inherit) with the sweep's lock
file and its own pid, and the next sweep of that experiment, once it holds the lock, stops every labelled
process whose driver is not itself. Holding the lock is what makes that safe: no other live sweep of this
experiment can own them. The same label lets a sweep stop what is still running after its ray.shutdown()
(stop_after_shutdown). Linux only (/proc); elsewhere nothing is found and Ray's own fate-sharing is all.
"""
from __future__ import annotations

import os
import signal
import time
from contextlib import contextmanager
from pathlib import Path

LABEL = "LUNARTUNE_SWEEP"
PROC = Path("/proc")


def label_value(lock: Path, driver_pid: int) -> str:
    return f"{Path(lock).resolve()}#{driver_pid}"


@contextmanager
def labelled(lock: Path):
    """Processes started inside (Ray's, through ray.init) carry LUNARTUNE_SWEEP=<lock>#<our pid>."""
    previous = os.environ.get(LABEL)
    os.environ[LABEL] = label_value(lock, os.getpid())
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(LABEL, None)
        else:
            os.environ[LABEL] = previous


def find(lock: Path) -> dict[int, int]:
    """{pid: driver pid} of live processes labelled for `lock` by a driver other than this process."""
    return {pid: driver for pid, driver in _labelled_for(lock).items() if driver != os.getpid()}


def _labelled_for(lock: Path) -> dict[int, int]:
    prefix = f"{LABEL}={Path(lock).resolve()}#".encode()
    found = {}
    for entry in PROC.iterdir() if PROC.is_dir() else ():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:  # exited meanwhile, or another user's process
            continue
        for var in environ:
            if var.startswith(prefix):
                found[int(entry.name)] = int(var[len(prefix):] or 0)
                break
    return found


def stop(lock: Path, grace_s: float = 10.0) -> dict[int, int]:
    """SIGTERM the leftovers of `lock`, SIGKILL those alive after `grace_s`; returns what was found."""
    found = find(lock)
    _terminate(lambda: list(find(lock)), grace_s)
    return found


def stop_after_shutdown(lock: Path, settle_s: float = 5.0, grace_s: float = 5.0) -> list[int]:
    """After ray.shutdown(): give the processes labelled for `lock` `settle_s` to exit, then stop the rest.

    ray.shutdown() kills gcs_server and raylet; the agents and workers exit on their own once they notice,
    but an agent that sees its raylet gone first tries to report that to the (also gone) GCS, and on a
    loaded machine CI saw the dashboard and runtime-env agents still alive 30 s after the CLI exited.
    Every driver's processes count, not only ours: we still hold the lock, so any labelled by another
    driver are a killed sweep's that outlived the stop at the start. Returns the pids that had to be stopped."""
    deadline = time.monotonic() + settle_s
    while (left := list(_labelled_for(lock))) and time.monotonic() < deadline:
        time.sleep(0.2)
    _terminate(lambda: list(_labelled_for(lock)), grace_s)
    return left


def _terminate(alive_now, grace_s: float) -> None:
    """SIGTERM what `alive_now()` lists, SIGKILL what is still listed after `grace_s`."""
    alive = alive_now()
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        if not alive:
            return
        for pid in alive:
            try:
                os.kill(pid, sig)
            except OSError:  # gone already
                pass
        deadline = time.monotonic() + wait_s
        while (alive := alive_now()) and time.monotonic() < deadline:
            time.sleep(0.2)
