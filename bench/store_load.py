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
import json
import multiprocessing as mp
import os
import platform
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tuner import tracking  # noqa: E402  (imports mlflow once, before forking the writers)

RESULTS = Path(__file__).resolve().parent / "results" / "store_load.json"
METRICS_PER_STEP = 4  # like a trial's epoch: loss, miou, lr, seconds (one log_batch)


def writer(uri: str, experiment_id: str, index: int, steps: int, artifact_every: int, start, out) -> None:
    client = tracking.client(uri)
    ok, failed, errors = [], 0, []
    try:
        run_id = client.create_run(experiment_id, run_name=f"w{index}").info.run_id
    except Exception as err:
        out.put({"index": index, "run_id": None, "ok": [], "failed": steps, "errors": [repr(err)[:200]]})
        return
    blob = Path(tempfile.mkdtemp()) / "ckpt.bin"
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


def load(uri: str, k: int, steps: int, artifact_every: int) -> dict:
    experiment_id = tracking.get_or_create_experiment(uri, f"load-k{k}-{time.time_ns()}", None)
    ctx = mp.get_context("fork")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=writer, args=(uri, experiment_id, i, steps, artifact_every, start, out)) for i in range(k)]
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
    for _ in range(240):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("mlflow server did not start")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--writers", type=int, nargs="+", default=[2, 8, 16])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--artifact-every", type=int, default=10, help="0: metrics only")
    p.add_argument("--port", type=int, default=5123)
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    tracking.bound_http_retries()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "sqlite").mkdir()
        for k in args.writers:
            uri = f"sqlite:///{root / 'sqlite' / 'mlflow.db'}"
            tracking.client(uri).search_experiments()  # create the schema before the writers race for it
            rows.append({"backend": "sqlite", **load(uri, k, args.steps, args.artifact_every)})
        server = start_server(root, args.port)
        try:
            for k in args.writers:
                rows.append({"backend": "server(sqlite)", **load(f"http://127.0.0.1:{args.port}", k, args.steps,
                                                                  args.artifact_every)})
        finally:
            os.killpg(server.pid, 15)
            server.wait(timeout=30)
    print(f"{'backend':<16}{'K':>4}{'attempted':>11}{'failed':>8}{'lost':>6}{'writes/s':>10}{'seconds':>9}")
    for r in rows:
        print(f"{r['backend']:<16}{r['writers']:>4}{r['attempted']:>11}{r['failed']:>8}{r['lost']:>6}"
              f"{r['writes_per_s']:>10}{r['seconds']:>9}")
        for e in r["errors"]:
            print(f"    {e}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                                          "artifact_every": args.artifact_every, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
