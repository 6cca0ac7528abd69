"""Does the sweep machinery hold 200 trials? A trivially cheap trainable (no torch, no data) runs through
the real wiring: PruningAwareOptunaSearch on the SQLite Optuna study, ConcurrencyLimiter, ASHA, the
driver's TrialStatusCallback, an MLflow parent run with one child run per trial (opened and logged from
the trial process like tuner.trainable does), per-epoch checkpoints, and sync_to_mlflow at the end.

    python bench/many_trials.py                   # 200 trials x up to 3 epochs, 2 at a time
    python bench/many_trials.py --trials 50

Checks every trial is in MLflow and in the Optuna study; reports wall time and per-trial overhead
(wall time x concurrency / trials: the trainable itself does ~nothing). Writes bench/results/many_trials.json.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchargs import description, int_at_least, output_file  # noqa: E402  (bench/benchargs.py)

RESULTS = Path(__file__).resolve().parent / "results" / "many_trials.json"
SPACE = "params:\n  lr: {low: 1.0e-4, high: 1.0e-1, log: true}\n  dropout: {low: 0.0, high: 0.5}\nfixed: {backbone: unet_scratch}\n"


def cheap_trial(config: dict, target, max_epochs: int) -> None:
    """What train_trial does around training: child run, per-epoch log + best-checkpoint upload + checkpoint +
    report."""
    from ray import tune
    from tuner import tracking
    from tuner.trainable import EPOCH, RUN_ID

    context = tune.get_context()
    run_id = tracking.open_child_run(target, context.get_trial_id(), context.get_trial_name(), config, {})
    for epoch in range(1, max_epochs + 1):
        score = 1 - abs(math.log10(config["lr"]) + 2) / 3 - config["dropout"] / 10 + 0.01 * epoch
        metrics = {"val_miou": score, "train_loss": 1 - score, EPOCH: epoch}
        tracking.log_metrics(target.uri, run_id, metrics, step=epoch)
        with tempfile.TemporaryDirectory() as folder:
            Path(folder, "state.json").write_text(json.dumps({"epoch": epoch}))
            best = Path(folder, "mlflow", "best.pt")  # the score rises every epoch: each one is the best so far
            best.parent.mkdir()
            best.write_bytes(b"weights")
            tracking.log_best_checkpoint(target.uri, run_id, best, {"epoch": epoch})
            best.unlink()
            tune.report({**metrics, RUN_ID: run_id}, checkpoint=tune.Checkpoint.from_directory(folder))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=description(__doc__))
    p.add_argument("--trials", type=int_at_least(1), default=200)
    p.add_argument("--epochs", type=int_at_least(1), default=3, help="epochs per trial at most (ASHA stops some)")
    p.add_argument("--concurrency", type=int_at_least(1), default=2, help="trials at a time")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    output_file(p, "--out", args.out)

    import optuna
    import ray
    from ray import tune

    from data_pipeline import DataConfig
    from tuner import sweep, tracking
    from tuner.settings import RunPaths, environment
    from tuner.space import load_space

    with tempfile.TemporaryDirectory() as tmp:
        paths = RunPaths(root=Path(tmp) / "run").ensure()
        space_file = Path(tmp) / "space.yaml"
        space_file.write_text(SPACE)
        space = load_space(space_file)
        cfg = sweep.SweepConfig(space=str(space_file), samples=args.trials, max_epochs=args.epochs,
                                concurrency=args.concurrency, experiment="many")
        experiment_id = tracking.get_or_create_experiment(paths.tracking_uri, "many", paths.mlflow_artifacts.as_uri())
        parent = tracking.start_parent_run(paths.tracking_uri, experiment_id, "many", {"trials": args.trials}, {})
        target = tracking.TrackingTarget(paths.tracking_uri, experiment_id, parent)
        setup = sweep._trial_setup(cfg, DataConfig(root=tmp, image_size=cfg.image_size), target)
        # Tune reads its pending-trials cap from the environment; set for this sweep only, as the sweep does
        with sweep._ray_output_settings(), environment({"TUNE_MAX_PENDING_TRIALS_PG": str(args.concurrency)}):
            t0 = time.monotonic()
            ray.init(address="local", num_cpus=args.concurrency, include_dashboard=False, log_to_driver=False)
            t_ray = time.monotonic() - t0
            try:
                tuner = tune.Tuner(
                    tune.with_parameters(cheap_trial, target=target, max_epochs=args.epochs),
                    tune_config=sweep._tune_config(cfg, paths, space),
                    run_config=tune.RunConfig(name="many", storage_path=str(paths.ray_results), verbose=0,
                                              checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                                              callbacks=[sweep.TrialStatusCallback(setup)]))
                t1 = time.monotonic()
                results = tuner.fit()
                t_fit = time.monotonic() - t1
                incomplete = sweep.sync_to_mlflow(results, setup, resumable=set())
            finally:
                ray.shutdown()
        children = tracking.child_runs(paths.tracking_uri, experiment_id, parent, max_results=10_000)
        statuses = {}
        for run in children:
            s = run.data.tags.get(tracking.STATUS_TAG)
            statuses[s] = statuses.get(s, 0) + 1
        study = optuna.load_study(study_name="many", storage=f"sqlite:///{paths.optuna_db}")
        states = {}
        for t in study.trials:
            states[t.state.name] = states.get(t.state.name, 0) + 1
        epochs = sum(r.metrics.get("epoch", 0) for r in results)
    report = {"trials": args.trials, "epochs_max": args.epochs, "concurrency": args.concurrency,
              "ray_trials": len(results), "errors": results.num_errors, "mlflow_child_runs": len(children),
              "mlflow_statuses": statuses, "optuna_states": states, "epochs_run": int(epochs),
              "incomplete": incomplete, "ray_init_s": round(t_ray, 1), "fit_s": round(t_fit, 1),
              "per_trial_overhead_s": round(t_fit * args.concurrency / args.trials, 2),
              "cpus": os.cpu_count()}
    ok = (len(results) == len(children) == sum(states.values()) == args.trials and not results.num_errors
          and states.get("RUNNING", 0) == 0 and not incomplete)
    print_table(report)
    print(f"{'OK' if ok else 'FAILED'}: {args.trials} trials, {len(children)} in MLflow, {sum(states.values())} in "
          f"Optuna; fit {t_fit:.0f} s, {report['per_trial_overhead_s']} s per trial-slot")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({**report, "ok": ok}, indent=2))
    print(f"wrote {args.out}")
    return 0 if ok else 1


def print_table(report: dict) -> None:
    """The report as label / value lines; the JSON holds the same numbers."""
    def counts(by_name: dict) -> str:
        return ", ".join(f"{name} {n}" for name, n in sorted(by_name.items(), key=lambda kv: str(kv[0]))) or "-"

    rows = (("trials asked", f"{report['trials']} (up to {report['epochs_max']} epochs, "
                             f"{report['concurrency']} at a time, {report['cpus']} CPUs)"),
            ("Ray trials", f"{report['ray_trials']} ({report['errors']} errors)"),
            ("MLflow child runs", f"{report['mlflow_child_runs']}: {counts(report['mlflow_statuses'])}"),
            ("Optuna trials", f"{sum(report['optuna_states'].values())}: {counts(report['optuna_states'])}"),
            ("epochs run", report["epochs_run"]),
            ("MLflow lacks", ", ".join(map(str, report["incomplete"])) or "none"),
            ("Ray start", f"{report['ray_init_s']} s"),
            ("fit", f"{report['fit_s']} s ({report['per_trial_overhead_s']} s per trial-slot)"))
    for label, value in rows:
        print(f"{label:<20}{value}")


if __name__ == "__main__":
    sys.exit(main())
