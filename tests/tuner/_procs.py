"""Processes a test starts in a session of its own, and stopping exactly those (never by name)."""
from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

# In the environment of every process a test starts; Ray's gcs_server, raylet, workers and agents inherit
# it from the driver, so it finds exactly the processes a test's sweep started, whatever their session
# (an agent's may be overwritten by its process title: started() also asks the session).
MARK = "LUNARTUNE_FAULT_MARK"
RAY_EXIT_S = 30  # after a CLI exits, its Ray (gcs_server, raylet, workers, agents) must be gone by then:
# Ray stops them asynchronously (workers exit once their raylet goes), so none is checked at the exit itself


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def session_members(sid: int) -> list[int]:
    """Live pids in session `sid`: a process we launched with start_new_session and everything it spawned
    (Ray's gcs_server, raylet, workers and agents stay in the driver's session; zombies are left out: they
    are dead, only not yet reaped by whatever adopted them)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == sid and not _zombie(entry):
                    pids.append(int(entry.name))
            except OSError:  # exited meanwhile
                pass
    return pids


def _zombie(proc: Path) -> bool:
    return (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"  # after "(comm)": the state


def terminate_session(sid: int) -> None:
    for sig, wait_s in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        for pid in session_members(sid):
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + wait_s
        while session_members(sid) and time.monotonic() < deadline:
            time.sleep(0.2)


def marked_pids(mark: str) -> list[int]:
    """Pids whose environment carries MARK=mark (the CLI we started and every Ray process under it)."""
    needle = f"{MARK}={mark}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def started(mark: str, sessions=()) -> list[int]:
    """Pids a test started: those carrying MARK=mark, and the members of `sessions` (session ids of processes
    it started with start_new_session). Both, because Ray's agents overwrite part of their environment with
    their process title (setproctitle), at times the mark with it; a session id survives that."""
    pids = set(marked_pids(mark))
    for sid in sessions:
        pids.update(session_members(sid))
    pids.discard(os.getpid())
    return sorted(pids)


def wait_gone(mark: str, timeout_s: float, sessions=()) -> list[int]:
    """Pids `started(mark, sessions)` still finds once they are all gone or `timeout_s` has passed (polling)."""
    deadline = time.monotonic() + timeout_s
    while (left := started(mark, sessions)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


def describe(pids: list[int]) -> str:
    """One line per pid for an assertion message: command line, parent, state and the sweep label that
    tuner.leftovers looks for (which driver's Ray it belongs to), or "(gone)"."""
    return "\n".join(_describe(pid) for pid in pids)


def _describe(pid: int) -> str:
    proc = Path(f"/proc/{pid}")
    try:
        command = (proc / "cmdline").read_bytes().replace(bytes(1), b" ").decode().strip()[:150]
        status = dict(line.split(":\t", 1) for line in (proc / "status").read_text().splitlines() if ":\t" in line)
    except OSError:
        return f"{pid}: (gone)"
    try:
        label = next((var.decode() for var in (proc / "environ").read_bytes().split(b"\0")
                      if var.startswith(b"LUNARTUNE_SWEEP=")), "no sweep label")
    except OSError as err:
        label = f"environment unreadable: {err.strerror}"
    return f"{pid}: {command} [ppid {status.get('PPid', '?')}, {status.get('State', '?')}, {label}]"


REPO = Path(__file__).resolve().parents[2]


def without_lunartune(body: str) -> str:
    """A `python -c` script that runs `body` where lunartune cannot be imported (no editable-install finder,
    no checkout on sys.path): what a user without the package has. It fails if lunartune stays importable."""
    return (
        "import sys\n"
        "sys.meta_path = [f for f in sys.meta_path if 'editable' not in repr(f)]\n"
        f"sys.path = [p for p in sys.path if p not in ('', {str(REPO)!r})]\n"
        "try:\n"
        "    import models\n"
        "    raise SystemExit(\"lunartune's models package is importable: the test proves nothing\")\n"
        "except ImportError:\n"
        "    pass\n" + body)
