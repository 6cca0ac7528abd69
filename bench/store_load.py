"""Can the MLflow store keep up with many trials writing at once? K writer processes (a trivially cheap
loop, no torch) each log per-step metrics and, every few steps, a small checkpoint-sized artifact, to
(a) the embedded SQLite store and (b) an `mlflow server` on 127.0.0.1 (SQLite behind it).

    python bench/store_load.py                       # K = 2, 8, 16; 40 steps each; artifact every 10 steps
    python bench/store_load.py --writers 16 --steps 100

Counts, per backend and K: writes attempted, failed (an exception after the client's retries: "database
is locked", timeouts, HTTP 5xx), lost (acknowledged but missing when read back), and acknowledged writes/s.
HTTP retries are the ones trials use (tracking.HTTP_RETRY_ENV). Prints a table, writes
bench/results/store_load.json.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchargs import description, int_at_least, output_file  # noqa: E402  (bench/benchargs.py)
from tuner import tracking  # noqa: E402  (imports mlflow once, before forking the writers)

RESULTS = Path(__file__).resolve().parent / "results" / "store_load.json"
METRICS_PER_STEP = 4  # like a trial's epoch: loss, miou, lr, seconds (one log_batch)
SERVER_WAIT_S = 120  # an mlflow server answers /health within seconds; a busy machine may need more


class ServerError(Exception):
    """The mlflow server could not be had: the message names the port and what happened."""


def writer(uri: str, experiment_id: str, index: int, steps: int, artifact_every: int, start, out,
           scratch: Path) -> None:
    client = tracking.client(uri)
    ok, failed, errors = [], 0, []
    try:
        run_id = client.create_run(experiment_id, run_name=f"w{index}").info.run_id
    except Exception as err:
        out.put({"index": index, "run_id": None, "ok": [], "failed": steps, "errors": [repr(err)[:200]]})
        return
    blob = Path(tempfile.mkdtemp(dir=scratch)) / "ckpt.bin"  # under the run's temp folder: removed with it
    blob.write_bytes(os.urandom(64 * 1024))  # a small checkpoint-sized artifact
    start.wait()
    for step in range(steps):
        try:
            tracking.log_metrics(uri, run_id, {f"m{k}": step + k for k in range(METRICS_PER_STEP)}, step=step)
            if artifact_every and step % artifact_every == 0:
                client.log_artifact(run_id, str(blob), f"ckpt/{step}")
            ok.append(step)
        except Exception as err:
            failed += 1
            errors.append(f"{type(err).__name__}: {str(err)[:160]}")
    out.put({"index": index, "run_id": run_id, "ok": ok, "failed": failed, "errors": errors[:3]})


def load(uri: str, k: int, steps: int, artifact_every: int, scratch: Path) -> dict:
    experiment_id = tracking.get_or_create_experiment(uri, f"load-k{k}-{time.time_ns()}", None)
    ctx = mp.get_context("fork")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=writer, args=(uri, experiment_id, i, steps, artifact_every, start, out, scratch))
             for i in range(k)]
    for p in procs:
        p.start()
    time.sleep(1.0 + 0.1 * k)  # every writer has created its run and waits at the start line
    t0 = time.monotonic()
    start.set()
    reports = [out.get(timeout=900) for _ in procs]
    wall = time.monotonic() - t0
    for p in procs:
        p.join()
    lost = 0
    for r in reports:
        if r["run_id"]:
            stored = {m.step for m in tracking.client(uri).get_metric_history(r["run_id"], "m0")}
            lost += len(set(r["ok"]) - stored)
    acked = sum(len(r["ok"]) for r in reports)
    return {"writers": k, "steps_each": steps, "attempted": k * steps, "acknowledged": acked,
            "failed": sum(r["failed"] for r in reports), "lost": lost, "seconds": round(wall, 2),
            "writes_per_s": round(acked / wall, 1),
            "errors": sorted({e for r in reports for e in r["errors"]})[:5]}


def start_server(root: Path, port: int) -> subprocess.Popen:
    mlflow = str(Path(sys.executable).with_name("mlflow"))
    proc = subprocess.Popen([mlflow, "server", "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
                             "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1",
                             "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        wait_for_server(proc, port)
    except ServerError:
        stop_server(proc)
        raise
    return proc


def stop_server(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):  # the whole group is gone already
        os.killpg(proc.pid, 15)  # its own session: the workers it forked go too
    proc.wait(timeout=30)


def wait_for_server(proc: subprocess.Popen, port: int, wait_s: float = SERVER_WAIT_S) -> None:
    """Return once the server answers /health; ServerError as soon as it exits (e.g. the port was taken
    after the check in main) or after `wait_s`."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerError(f"mlflow server on 127.0.0.1:{port} exited with code {proc.returncode} before "
                              f"answering (is port {port} in use? see --port)")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise ServerError(f"mlflow server on 127.0.0.1:{port} did not answer /health within {wait_s:.0f} s")


def port_free(port: int) -> bool:
    """Whether 127.0.0.1:port can be bound now. A busy port would make the server exit, or worse, have
    another program answer /health."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: TIME_WAIT is no obstacle
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description(__doc__))
    p.add_argument("--writers", type=int_at_least(1), nargs="+", default=[2, 8, 16], help="K: writers at once")
    p.add_argument("--steps", type=int_at_least(1), default=40, help="steps each writer logs")
    p.add_argument("--artifact-every", type=int_at_least(0), default=10, help="0: metrics only")
    p.add_argument("--port", type=int_at_least(1, 65535), default=5123, help="for the mlflow server")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    output_file(p, "--out", args.out)
    if not port_free(args.port):
        p.error(f"--port {args.port}: in use on 127.0.0.1; expected a free port for the mlflow server")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    tracking.bound_http_retries()
    rows = []
    try:
        measure(args, rows)
    except ServerError as err:
        print(f"store_load.py: {err}", file=sys.stderr)  # the rows measured so far are in the JSON already
        return 1
    finally:
        print_table(rows)
    return 0


def measure(args, rows: list) -> None:
    """Append a row per backend and K to `rows`, writing the JSON after each: a later failure loses none."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "sqlite").mkdir()
        (root / "blobs").mkdir()
        for k in args.writers:
            uri = f"sqlite:///{root / 'sqlite' / 'mlflow.db'}"
            tracking.client(uri).search_experiments()  # create the schema before the writers race for it
            rows.append({"backend": "sqlite", **load(uri, k, args.steps, args.artifact_every, root / "blobs")})
            write_json(args, rows)
        server = start_server(root, args.port)
        try:
            for k in args.writers:
                rows.append({"backend": "server(sqlite)", **load(f"http://127.0.0.1:{args.port}", k, args.steps,
                                                                  args.artifact_every, root / "blobs")})
                write_json(args, rows)
        finally:
            stop_server(server)


def write_json(args, rows: list) -> None:
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                                          "artifact_every": args.artifact_every, "rows": rows}, indent=2))


def print_table(rows: list) -> None:
    print(f"{'backend':<16}{'K':>4}{'attempted':>11}{'failed':>8}{'lost':>6}{'writes/s':>10}{'seconds':>9}")
    for r in rows:
        print(f"{r['backend']:<16}{r['writers']:>4}{r['attempted']:>11}{r['failed']:>8}{r['lost']:>6}"
              f"{r['writes_per_s']:>10}{r['seconds']:>9}")
        for e in r["errors"]:
            print(f"    {e}")


if __name__ == "__main__":
    sys.exit(main())
