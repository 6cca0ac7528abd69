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
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=200)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)

    import optuna
    import ray
    from ray import tune

    from data_pipeline import DataConfig
    from tuner import sweep, tracking
    from tuner.settings import RunPaths
    from tuner.space import load_space

    with tempfile.TemporaryDirectory() as tmp:
        paths = RunPaths(root=Path(tmp) / "run").ensure()
        space_file = Path(tmp) / "space.yaml"
        space_file.write_text(SPACE)
        space = load_space(space_file)
        cfg = sweep.SweepConfig(space=str(space_file), samples=args.trials, max_epochs=args.epochs,
                                concurrency=args.concurrency, experiment="many")
        os.environ["TUNE_MAX_PENDING_TRIALS_PG"] = str(args.concurrency)
        experiment_id = tracking.get_or_create_experiment(paths.tracking_uri, "many", paths.mlflow_artifacts.as_uri())
        parent = tracking.start_parent_run(paths.tracking_uri, experiment_id, "many", {"trials": args.trials}, {})
        target = tracking.TrackingTarget(paths.tracking_uri, experiment_id, parent)
        setup = sweep._trial_setup(cfg, DataConfig(root=tmp, image_size=cfg.image_size), target)
        with sweep._ray_output_settings():  # the live table's output engine, as a sweep uses
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
    print(json.dumps(report, indent=2))
    print(f"{'OK' if ok else 'FAILED'}: {args.trials} trials, {len(children)} in MLflow, {sum(states.values())} in "
          f"Optuna; fit {t_fit:.0f} s, {report['per_trial_overhead_s']} s per trial-slot")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({**report, "ok": ok}, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
