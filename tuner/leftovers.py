"""Ray processes that a killed sweep left behind, found by what marks them as that sweep's, and stopped.

Ray ties its processes to the driver (the kernel kills gcs_server and raylet when the driver dies; workers
and agents exit when their raylet goes), but that is best effort: on a loaded machine we have seen a
SIGKILLed driver's processes still alive a minute later, and an agent that sees its raylet gone first
tries to report that to the (also gone) GCS. Left alone they hold CPUs and memory and may still be writing
to the run dir while `tune --resume` starts the same trials again.

So a sweep marks the private Ray it starts as its own, two ways, both tied to the sweep's lock file:
- a label in the environment (LUNARTUNE_SWEEP=<lock>#<driver pid>) that gcs_server, raylet, workers and
  agents inherit. Not enough alone: Ray's agents set their process title (ray::DashboardAgent) over the
  memory /proc/<pid>/environ shows, which wipes part of their environment, the label included or not
  depending on its place in it (CI saw exactly those two agents left over, unlabelled);
- the Ray session folder, recorded next to the lock (`<lock>.ray-sessions`, one "<driver pid> <folder>" per
  line): every Ray process keeps its log files in `<session>/logs` open for writing, agents included.
The next sweep of that experiment, once it holds the lock, stops every marked process whose driver is not
itself (stop), and a sweep stops what is still running after its own ray.shutdown() (stop_after_shutdown).
Holding the lock is what makes that safe: no other live sweep of this experiment can own them. Linux only
(/proc); elsewhere nothing is found and Ray's own fate-sharing is all.
"""
from __future__ import annotations

import os
import signal
import time
from contextlib import contextmanager
from pathlib import Path

from tuner.settings import environment

LABEL = "LUNARTUNE_SWEEP"
PROC = Path("/proc")
O_ACCMODE = 0o3  # the access-mode bits of an fd's flags: 0 read-only, 1 write-only, 2 read-write


def label_value(lock: Path, driver_pid: int) -> str:
    return f"{Path(lock).resolve()}#{driver_pid}"


def sessions_file(lock: Path) -> Path:
    return Path(lock).with_name(Path(lock).name + ".ray-sessions")


@contextmanager
def labelled(lock: Path):
    """Processes started inside (Ray's, through ray.init) carry LUNARTUNE_SWEEP=<lock>#<our pid>."""
    with environment({LABEL: label_value(lock, os.getpid())}):
        yield


def record_session(lock: Path, session_dir: str | Path, driver_pid: int | None = None) -> None:
    """Remember that the Ray writing its logs under `session_dir` belongs to `lock`'s sweep (driven by us)."""
    with open(sessions_file(lock), "a", encoding="utf-8") as out:
        out.write(f"{driver_pid or os.getpid()} {os.path.realpath(session_dir)}\n")


def find(lock: Path) -> dict[int, int]:
    """{pid: driver pid} of live processes marked for `lock` by a driver other than this process."""
    return {pid: driver for pid, driver in _marked_for(lock).items() if driver != os.getpid()}


def stop(lock: Path, grace_s: float = 10.0) -> dict[int, int]:
    """SIGTERM the leftovers of `lock`, SIGKILL those alive after `grace_s`; returns what was found.
    Other drivers' sessions are forgotten afterwards: nothing of theirs is left to find."""
    found = find(lock)
    _terminate(lambda: list(find(lock)), grace_s)
    _forget_sessions(lock, keep_driver=os.getpid())
    return found


def stop_after_shutdown(lock: Path, settle_s: float = 5.0, grace_s: float = 5.0) -> list[int]:
    """After ray.shutdown(): give the processes marked for `lock` `settle_s` to exit, then stop the rest.

    ray.shutdown() kills gcs_server and raylet; the agents and workers exit on their own once they notice,
    but on a loaded machine CI saw the dashboard and runtime-env agents still alive 30 s after the CLI
    exited. Every driver's processes count, not only ours: we still hold the lock, so any marked by another
    driver are a killed sweep's that outlived the stop at the start. Returns the pids that had to be stopped."""
    deadline = time.monotonic() + settle_s
    while (left := list(_marked_for(lock))) and time.monotonic() < deadline:
        time.sleep(0.2)
    _terminate(lambda: list(_marked_for(lock)), grace_s)
    _forget_sessions(lock, keep_driver=None)
    return left


def _marked_for(lock: Path) -> dict[int, int]:
    """{pid: driver pid} of live processes (not this one) labelled for `lock` or writing into its sessions."""
    prefix = f"{LABEL}={Path(lock).resolve()}#".encode()
    sessions = _recorded_sessions(lock)
    found = {}
    for pid in _pids():
        driver = _label_driver(pid, prefix)
        if driver is None and sessions:
            driver = _session_driver(pid, sessions)
        if driver is not None:
            found[pid] = driver
    return found


def _pids() -> list[int]:
    if not PROC.is_dir():
        return []
    return [int(entry.name) for entry in PROC.iterdir() if entry.name.isdigit() and int(entry.name) != os.getpid()]


def _label_driver(pid: int, prefix: bytes) -> int | None:
    try:
        environ = (PROC / str(pid) / "environ").read_bytes().split(b"\0")
    except OSError:  # exited meanwhile, or another user's process
        return None
    for var in environ:
        if var.startswith(prefix):
            return int(var[len(prefix):] or 0)
    return None


def _session_driver(pid: int, sessions: dict[str, int]) -> int | None:
    """The driver of the recorded session `pid` has a file open for writing in, if any. Writing, so that
    someone reading the logs (`tail -f raylet.out`) is never taken for a Ray process."""
    fd_dir = PROC / str(pid) / "fd"
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return None
    for fd in fds:
        try:
            target = os.readlink(fd_dir / fd)
        except OSError:
            continue
        driver = next((d for folder, d in sessions.items() if target.startswith(folder)), None)
        if driver is not None and _open_for_writing(pid, fd):
            return driver
    return None


def _open_for_writing(pid: int, fd: str) -> bool:
    try:
        info = (PROC / str(pid) / "fdinfo" / fd).read_text()
    except OSError:
        return False
    flags = next((line.split()[1] for line in info.splitlines() if line.startswith("flags:")), "0")
    return int(flags, 8) & O_ACCMODE != 0


def _recorded_sessions(lock: Path) -> dict[str, int]:
    """{'<session folder>/': driver pid} from `lock`'s sessions file (empty if there is none)."""
    try:
        lines = sessions_file(lock).read_text(encoding="utf-8").splitlines()
    except OSError:
        return {}
    sessions = {}
    for line in lines:
        driver, _, folder = line.partition(" ")
        if driver.isdigit() and folder:
            sessions[folder.rstrip("/") + "/"] = int(driver)
    return sessions


def _forget_sessions(lock: Path, keep_driver: int | None) -> None:
    """Drop the recorded sessions (all, or all but `keep_driver`'s) once their processes are stopped."""
    path = sessions_file(lock)
    if not path.exists():
        return
    kept = [f"{driver} {folder.rstrip('/')}\n" for folder, driver in _recorded_sessions(lock).items()
            if driver == keep_driver]
    if kept:
        path.write_text("".join(kept), encoding="utf-8")
    else:
        path.unlink(missing_ok=True)


def _terminate(alive_now, grace_s: float) -> None:
    """SIGTERM what `alive_now()` lists, SIGKILL what is still running after `grace_s`.

    A process that is exiting has let go of its memory (its environ and open files read empty, so
    `alive_now()` no longer lists it) some time before it is gone; CI saw one still running right after a
    stop returned. So a signalled process counts as alive until /proc says it has exited."""
    signalled: set[int] = set()
    alive = alive_now()
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        if not alive:
            return
        for pid in alive:
            try:
                os.kill(pid, sig)
                signalled.add(pid)
            except OSError:  # gone already
                pass
        deadline = time.monotonic() + wait_s
        while (alive := _still_running(alive_now(), signalled)) and time.monotonic() < deadline:
            time.sleep(0.2)


def _still_running(listed, signalled: set[int]) -> list[int]:
    return sorted(set(listed) | {pid for pid in signalled if not _exited(pid)})


def _exited(pid: int) -> bool:
    """True once `pid` is gone or a zombie (exited, waiting for its parent to reap it)."""
    try:
        state = (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")
