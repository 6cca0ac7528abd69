"""Fractional GPUs: does packing several trials onto one GPU finish a sweep sooner than one trial per GPU?

    python bench/gpu_packing.py                                   # 1, 1/2, 1/4 GPU per trial
    python bench/gpu_packing.py --fractions 1,0.25 --samples 4 --max-epochs 2

Each fraction f runs the same sweep through `lunartune tune` in its own process (its own local Ray):
`--gpus-per-trial f --concurrency 1/f`, the CPUs split evenly between the trials at once, a search space
that holds one VGG11 configuration (so every trial does the same work) and no ASHA (every trial runs all
its epochs), on scenes generated (and cached) once, by an untimed one-trial warm-up, into a shared run
dir. The table: wall time of the whole `lunartune tune`; the trials' span (first trial's start to last
one's end, from MLflow), trials per hour and speed-up over one trial per GPU on that span; a trial's mean
epoch time; the GPU's mean utilisation and peak memory (nvidia-smi, sampled every 0.5 s); and the `device`
tag every trial's MLflow run got, which shows the trials trained on the GPU. Needs a CUDA GPU. Writes
bench/results/gpu_packing.json.
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchargs import int_at_least, output_file  # noqa: E402  (bench/benchargs.py)

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


def tune_command(args, run_dir: Path, space_file: Path, experiment: str, *, samples: int, epochs: int,
                 fraction: float) -> list[str]:
    concurrency = int(round(1 / fraction))
    return [sys.executable, "-m", "tuner.cli", "--run-dir", str(run_dir), "tune", "--space", str(space_file),
            "--samples", str(samples), "--max-epochs", str(epochs), "--no-asha", "--concurrency", str(concurrency),
            "--cpus-per-trial", str(cpus_per_trial(concurrency)), "--gpus-per-trial", f"{fraction:g}",
            "--image-size", args.image_size, "--synthetic-count", str(args.scenes), "--experiment", experiment]


def cpus_per_trial(concurrency: int) -> int:
    return max(1, (os.cpu_count() or 2) // concurrency)


def warm_up(args, run_dir: Path, space_file: Path) -> int:
    """One untimed one-epoch trial: generates the scenes and builds the decode cache every sweep then reuses,
    so the first timed configuration does not pay for them. Its exit code (0: done)."""
    print("\n== warm-up: scenes, cache, one trial (not timed)", flush=True)
    command = tune_command(args, run_dir, space_file, "gpu-warm-up", samples=1, epochs=1, fraction=1.0)
    return subprocess.run(command, cwd=REPO, env=_without(os.environ, "MLFLOW_TRACKING_URI", "LUNARTUNE_RUN_DIR")
                          ).returncode


def run_one(fraction: float, args, run_dir: Path, space_file: Path) -> dict:
    concurrency, experiment = int(round(1 / fraction)), f"gpu-{fraction:g}"
    command = tune_command(args, run_dir, space_file, experiment, samples=args.samples, epochs=args.max_epochs,
                           fraction=fraction)
    print(f"\n== {fraction:g} GPU per trial, {concurrency} at a time, {cpus_per_trial(concurrency)} CPUs each",
          flush=True)
    with GpuSampler() as gpu:
        started = time.monotonic()
        done = subprocess.run(command, cwd=REPO, env=_without(os.environ, "MLFLOW_TRACKING_URI", "LUNARTUNE_RUN_DIR"))
        wall = time.monotonic() - started
    row = {"gpus_per_trial": fraction, "concurrency": concurrency, "cpus_per_trial": cpus_per_trial(concurrency),
           "wall_s": round(wall, 1), "exit_code": done.returncode, **gpu.summary(), **_trials(run_dir, experiment)}
    row["trials_per_hour"] = round(row["completed"] * 3600 / row["trials_span_s"], 1) if row["trials_span_s"] else None
    return row


def _without(env, *names) -> dict:
    """The environment minus `names`: the sweep must log into the run dir's SQLite store, where we read."""
    return {k: v for k, v in env.items() if k not in names}


def _trials(run_dir: Path, experiment: str) -> dict:
    """Completed trials, their mean epoch time and the device tags, read back from the sweep's MLflow."""
    from tuner import tracking
    from tuner.settings import RunPaths

    uri = RunPaths(root=run_dir).tracking_uri
    found = tracking.client(uri).get_experiment_by_name(experiment)
    if found is None:  # the sweep failed before it made its experiment: a row of nothing, and why
        print(f"gpu_packing.py: experiment {experiment} is not in MLflow: its sweep failed before any trial "
              "(see its output above)", file=sys.stderr)
        return {"completed": 0, "trials_span_s": None, "epoch_s_mean": None, "devices": []}
    runs = tracking.client(uri).search_runs([found.experiment_id],
                                            filter_string=f"tags.`{tracking.ROLE_TAG}` = 'trial'")
    epoch_s = [m.value for r in runs for m in tracking.client(uri).get_metric_history(r.info.run_id, "epoch_seconds")]
    # from the first trial's start to the last one's end: the sweep's wall time less Ray's start and data prep
    span = (max(r.info.end_time or 0 for r in runs) - min(r.info.start_time for r in runs)) / 1000 if runs else None
    return {"completed": sum(r.data.tags.get(tracking.STATUS_TAG) == "completed" for r in runs),
            "trials_span_s": round(span, 1) if span and span > 0 else None,
            "epoch_s_mean": round(statistics.fmean(epoch_s), 2) if epoch_s else None,
            "devices": sorted({r.data.tags.get("device", "?") for r in runs})}


def print_table(rows: list[dict]) -> None:
    base = next((r for r in rows if r["gpus_per_trial"] == 1), rows[0])
    print(f"\n{'GPU/trial':>9} {'at once':>7} {'wall s':>7} {'trials s':>8} {'trials/h':>8} {'speed-up':>8} "
          f"{'epoch s':>7} {'GPU util %':>10} {'peak MiB':>8}  device")
    for r in rows:
        same_work = r["completed"] == base["completed"] and r["trials_span_s"] and base["trials_span_s"]
        speedup = base["trials_span_s"] / r["trials_span_s"] if same_work else float("nan")
        print(f"{str(Fraction(r['gpus_per_trial']).limit_denominator(16)):>9} {r['concurrency']:>7} {r['wall_s']:>7.0f} "
              f"{r['trials_span_s'] or float('nan'):>8.0f} {r['trials_per_hour'] or float('nan'):>8.0f} {speedup:>7.2f}x "
              f"{r['epoch_s_mean'] or float('nan'):>7.2f} "
              f"{r['gpu_util_mean_pct'] if r['gpu_util_mean_pct'] is not None else '-':>10} "
              f"{r['gpu_mem_peak_mib'] or '-':>8}  {', '.join(r['devices'])}")


def fractions_arg(text: str) -> list[float]:
    """--fractions: comma-separated GPU shares, each 1/N for a whole N (N trials share the GPU)."""
    try:
        fractions = [float(f) for f in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers such as 1,0.5,0.25, got {text!r}"
                                         ) from None
    bad = [f for f in fractions if not 0 < f <= 1 or abs(1 / f - round(1 / f)) > 1e-9]
    if bad:
        raise argparse.ArgumentTypeError(f"expected each 1/N for a whole N (1, 0.5, 0.25, ...), got "
                                         f"{', '.join(f'{f:g}' for f in bad)}")
    return fractions


def image_size_arg(text: str) -> str:
    """--image-size as `lunartune tune` takes it (N or HxW), checked here rather than in the first sweep."""
    from tuner.cli import _size

    _size(text)
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fractions", type=fractions_arg, default=[1.0, 0.5, 0.25], help="GPU per trial, each 1/N "
                   "(default 1,0.5,0.25)")
    p.add_argument("--samples", type=int_at_least(1), default=8, help="trials per sweep")
    p.add_argument("--max-epochs", type=int_at_least(1), default=4)
    p.add_argument("--image-size", type=image_size_arg, default="128x192")
    p.add_argument("--scenes", type=int_at_least(4), default=400,
                   help="generated scenes (70/15/15 %% train/val/test; at least 4)")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    output_file(p, "--out", args.out)  # every argument is checked before the GPU is

    import torch
    if not torch.cuda.is_available():
        print("bench/gpu_packing.py needs a CUDA GPU: torch.cuda.is_available() is False here", file=sys.stderr)
        return 2
    report = {"gpu": torch.cuda.get_device_name(0), "cpus": os.cpu_count(), "torch": torch.__version__,
              "samples": args.samples, "max_epochs": args.max_epochs, "image_size": args.image_size,
              "scenes": args.scenes, "rows": []}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        space_file = Path(tmp) / "one_vgg11.yaml"
        space_file.write_text(SPACE)
        code = warm_up(args, Path(tmp) / "run", space_file)
        if code:
            print(f"gpu_packing.py: the warm-up `lunartune tune` exited with code {code} (its output is above); "
                  "nothing was timed", file=sys.stderr)
            return 1
        for fraction in args.fractions:  # the JSON holds every finished row, should a later one never end
            report["rows"].append(run_one(fraction, args, Path(tmp) / "run", space_file))
            Path(args.out).write_text(json.dumps(report, indent=2))
    rows = report["rows"]
    print_table(rows)
    print(f"wrote {args.out}")
    return 0 if all(r["exit_code"] == 0 and r["completed"] == args.samples for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
