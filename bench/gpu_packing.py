"""Fractional GPUs: does packing several trials onto one GPU finish a sweep sooner than one trial per GPU?

    python bench/gpu_packing.py                                   # 1, 1/2, 1/4 GPU per trial
    python bench/gpu_packing.py --fractions 1,0.25 --samples 4 --max-epochs 2

Each fraction f runs the same sweep through `lunartune tune` in its own process (its own local Ray):
`--gpus-per-trial f --concurrency 1/f`, the CPUs split evenly between the trials at once, a search space
that holds one VGG11 configuration (so every trial does the same work) and no ASHA (every trial runs all
its epochs), on scenes generated once into a shared run dir. The table: wall time of the sweep, trials per
hour, speed-up over one trial per GPU, a trial's mean epoch time, the GPU's mean utilisation and peak
memory (nvidia-smi, sampled every 0.5 s), and the `device` tag every trial's MLflow run got, which shows
the trials trained on the GPU. Needs a CUDA GPU. Writes bench/results/gpu_packing.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from fractions import Fraction
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS = REPO / "bench" / "results" / "gpu_packing.json"
# One VGG11 configuration (a choice of one): every trial does the same work.
SPACE = """description: one VGG11 configuration, for bench/gpu_packing.py
params:
  lr: {choices: [1.0e-3]}
fixed: {backbone: vgg11, arch: unet, encoder_weights: none, optimizer: adamw, loss: ce, batch_size: 8,
        dropout: 0.1, lr_schedule: none}
"""


class GpuSampler:
    """Samples nvidia-smi's utilisation and memory in the background (nothing when nvidia-smi is absent)."""

    def __init__(self, period_s: float = 0.5):
        self.period_s, self.samples, self._stop = period_s, [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        if shutil.which("nvidia-smi"):
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self):
        query = ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits", "-i", "0"]
        while not self._stop.wait(self.period_s):
            out = subprocess.run(query, capture_output=True, text=True).stdout.strip()
            try:
                util, mem = (float(x) for x in out.split(","))
            except ValueError:
                continue
            self.samples.append((util, mem))

    def summary(self) -> dict:
        if not self.samples:
            return {"gpu_util_mean_pct": None, "gpu_mem_peak_mib": None}
        return {"gpu_util_mean_pct": round(statistics.fmean(u for u, _ in self.samples), 1),
                "gpu_mem_peak_mib": int(max(m for _, m in self.samples))}


def run_one(fraction: float, args, run_dir: Path, space_file: Path) -> dict:
    concurrency = int(round(1 / fraction))
    cpus = max(1, (os.cpu_count() or 2) // concurrency)
    experiment = f"gpu-{fraction:g}"
    command = [sys.executable, "-m", "tuner.cli", "--run-dir", str(run_dir), "tune", "--space", str(space_file),
               "--samples", str(args.samples), "--max-epochs", str(args.max_epochs), "--no-asha",
               "--concurrency", str(concurrency), "--cpus-per-trial", str(cpus), "--gpus-per-trial", f"{fraction:g}",
               "--image-size", args.image_size, "--synthetic-count", str(args.scenes), "--experiment", experiment]
    print(f"\n== {fraction:g} GPU per trial, {concurrency} at a time, {cpus} CPUs each", flush=True)
    with GpuSampler() as gpu:
        started = time.monotonic()
        done = subprocess.run(command, cwd=REPO, env=_without(os.environ, "MLFLOW_TRACKING_URI", "LUNARTUNE_RUN_DIR"))
        wall = time.monotonic() - started
    row = {"gpus_per_trial": fraction, "concurrency": concurrency, "cpus_per_trial": cpus, "wall_s": round(wall, 1),
           "exit_code": done.returncode, **gpu.summary(), **_trials(run_dir, experiment)}
    row["trials_per_hour"] = round(row["completed"] * 3600 / wall, 1)
    return row


def _without(env, *names) -> dict:
    """The environment minus `names`: the sweep must log into the run dir's SQLite store, where we read."""
    return {k: v for k, v in env.items() if k not in names}


def _trials(run_dir: Path, experiment: str) -> dict:
    """Completed trials, their mean epoch time and the device tags, read back from the sweep's MLflow."""
    from tuner import tracking
    from tuner.settings import RunPaths

    uri = RunPaths(root=run_dir).tracking_uri
    experiment_id = tracking.client(uri).get_experiment_by_name(experiment).experiment_id
    runs = tracking.client(uri).search_runs([experiment_id], filter_string=f"tags.`{tracking.ROLE_TAG}` = 'trial'")
    epoch_s = [m.value for r in runs for m in tracking.client(uri).get_metric_history(r.info.run_id, "epoch_seconds")]
    return {"completed": sum(r.data.tags.get(tracking.STATUS_TAG) == "completed" for r in runs),
            "epoch_s_mean": round(statistics.fmean(epoch_s), 2) if epoch_s else None,
            "devices": sorted({r.data.tags.get("device", "?") for r in runs})}


def print_table(rows: list[dict]) -> None:
    base = next((r for r in rows if r["gpus_per_trial"] == 1), rows[0])
    print(f"\n{'GPU/trial':>9} {'at once':>7} {'wall s':>7} {'trials/h':>8} {'speed-up':>8} {'epoch s':>7} "
          f"{'GPU util %':>10} {'peak MiB':>8}  device")
    for r in rows:
        speedup = base["wall_s"] / r["wall_s"] if r["completed"] == base["completed"] else float("nan")
        print(f"{str(Fraction(r['gpus_per_trial']).limit_denominator(16)):>9} {r['concurrency']:>7} {r['wall_s']:>7.0f} "
              f"{r['trials_per_hour']:>8.0f} {speedup:>7.2f}x {r['epoch_s_mean'] or float('nan'):>7.2f} "
              f"{r['gpu_util_mean_pct'] if r['gpu_util_mean_pct'] is not None else '-':>10} "
              f"{r['gpu_mem_peak_mib'] or '-':>8}  {', '.join(r['devices'])}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fractions", default="1,0.5,0.25", help="GPU per trial, each 1/N")
    p.add_argument("--samples", type=int, default=8, help="trials per sweep")
    p.add_argument("--max-epochs", type=int, default=4)
    p.add_argument("--image-size", default="128x192")
    p.add_argument("--scenes", type=int, default=400, help="generated scenes (80 %% train)")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)

    import torch
    if not torch.cuda.is_available():
        print("bench/gpu_packing.py needs a CUDA GPU: torch.cuda.is_available() is False here", file=sys.stderr)
        return 2
    fractions = [float(f) for f in args.fractions.split(",")]
    bad = [f for f in fractions if not 0 < f <= 1 or abs(1 / f - round(1 / f)) > 1e-9]
    if bad:
        print(f"--fractions: {bad} are not 1/N for a whole N", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        space_file = Path(tmp) / "one_vgg11.yaml"
        space_file.write_text(SPACE)
        rows = [run_one(f, args, Path(tmp) / "run", space_file) for f in fractions]
    print_table(rows)
    report = {"gpu": torch.cuda.get_device_name(0), "cpus": os.cpu_count(), "torch": torch.__version__,
              "samples": args.samples, "max_epochs": args.max_epochs, "image_size": args.image_size,
              "scenes": args.scenes, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 0 if all(r["exit_code"] == 0 and r["completed"] == args.samples for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
