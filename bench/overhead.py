"""What the tuner costs: the same fixed trials run bare (sequential, no Ray, no MLflow) and through
`lunartune tune` (Ray Tune + Optuna + MLflow, one trial at a time, every core per trial, no ASHA).

    python bench/overhead.py                          # 4 trials x 3 epochs, 96 generated scenes at 64x64
    python bench/overhead.py --backbone vgg11 --trials 2 --epochs 2 --image-size 128

Prints a table and writes bench/results/overhead.json. Two ratios:
- end to end: whole sweep wall time (Ray start, trial processes, MLflow, checkpoints) / bare total;
- per trial: the epoch loop as MLflow saw it (child run start -> end: training, evaluation, metric
  logging, checkpoints, reports) / the same loop bare.
Target <= 1.10. Fixed costs (Ray start ~4 s, a trial process importing torch ~3 s) dominate tiny trials:
the ratio is only meaningful when a trial runs for tens of seconds (raise --scenes/--epochs/--image-size).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchargs import description, fail, int_at_least, output_file  # noqa: E402  (bench/benchargs.py)

RESULTS = Path(__file__).resolve().parent / "results" / "overhead.json"
LEARNING_RATES = (3e-3, 1e-2, 2e-3, 5e-3, 1e-3, 7e-3, 4e-3, 6e-3)  # one fixed trial per value
MIN_SCENES = 4  # the fewest that leave val and test (15 % each, rounded) a scene each and train two


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description(__doc__))
    # one trial per learning rate: the durations are keyed by it, so there are no more trials than rates
    p.add_argument("--trials", type=int_at_least(1, len(LEARNING_RATES)), default=4,
                   help=f"fixed trials (1 to {len(LEARNING_RATES)})")
    p.add_argument("--epochs", type=int_at_least(1), default=3)
    p.add_argument("--scenes", type=int_at_least(MIN_SCENES), default=96,
                   help=f"generated scenes (70/15/15 %% train/val/test; at least {MIN_SCENES})")
    p.add_argument("--image-size", type=int_at_least(1), default=64,
                   help="square training size (a multiple of what the backbone needs: 32 for smp encoders)")
    p.add_argument("--backbone", default="unet_scratch")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    check_model(p, args)
    output_file(p, "--out", args.out)
    return args


def check_model(p: argparse.ArgumentParser, args) -> None:
    """--backbone and --image-size as the trial's model would take them (else a traceback mid-training)."""
    from models import ConfigError, ModelConfig, canonical_backbone, validate_image_size

    try:
        backbone = canonical_backbone(args.backbone)
    except ConfigError as err:
        p.error(f"--backbone: {err}")
    try:
        validate_image_size(ModelConfig(backbone=backbone), (args.image_size,) * 2)
    except ConfigError as err:
        p.error(f"--image-size: {err}")


def space_yaml(args) -> str:
    """A space whose only searched value is the learning rate, each tried once via points_to_evaluate."""
    lrs = list(LEARNING_RATES[:args.trials])
    points = "\n".join(f"  - {{lr: {lr}}}" for lr in lrs)
    return (f"params:\n  lr: {{choices: {lrs}}}\n"
            f"fixed: {{backbone: {args.backbone}, optimizer: adam, batch_size: 8, encoder_weights: none}}\n"
            f"points_to_evaluate:\n{points}\n")


def bare_trial(config: dict, setup) -> float:
    """The trainable's epoch loop without Ray, MLflow or checkpoints; seconds from the point where the
    trainable opens its MLflow run (after loaders and model are built) to the end, so the per-trial ratio
    compares like with like."""
    import data_pipeline
    from models import build
    from models.losses import make_loss
    from models.training import (evaluate, make_optimizer, make_scheduler, prepare_model, resolve_device,
                                 seed_everything, train_one_epoch)
    from tuner.trainable import configs_from_trial

    data_cfg, model_cfg, train_cfg = configs_from_trial(config, setup)
    seed_everything(train_cfg.seed)
    loaders = data_pipeline.make_loaders(data_cfg)
    device = resolve_device(train_cfg.device)
    model = prepare_model(build(model_cfg), device, train_cfg)
    loss_fn = make_loss(train_cfg, loaders.class_frequencies).to(device)  # as the trainable builds it
    optimizer = make_optimizer(model, train_cfg)
    scheduler = make_scheduler(optimizer, train_cfg, steps_per_epoch=len(loaders.train))
    start = time.perf_counter()
    for epoch in range(1, train_cfg.epochs + 1):
        train_one_epoch(model, loaders.train, optimizer, loss_fn, device, scheduler, epoch=epoch,
                        bn_batches=train_cfg.bn_recalibration_batches)
        evaluate(model, loaders.val, device, loss_fn, data_pipeline.CLASS_NAMES, data_pipeline.ROCK_CLASS_IDS)
    return time.perf_counter() - start


def run_bare(args, data_cfg, space) -> dict[float, float]:
    from models import ModelConfig, TrainConfig
    from tuner.trainable import TrialSetup
    from tuner.tracking import TrackingTarget

    setup = TrialSetup(data=data_cfg, model=ModelConfig(), train=TrainConfig(epochs=args.epochs, device="cpu"),
                       objective="val_miou", tracking=TrackingTarget("unused", "unused", "unused"))
    return {point["lr"]: bare_trial({**space.fixed_values, **point}, setup) for point in space.points_to_evaluate}


def run_tuned(args, scenes: Path, space_file: Path, run_dir: Path) -> tuple[float, dict[float, float]]:
    from tuner import tracking
    from tuner.settings import RunPaths
    from tuner.sweep import SweepConfig, run_sweep

    paths = RunPaths(root=run_dir)
    cfg = SweepConfig(space=str(space_file), data=str(scenes), image_size=(args.image_size,) * 2, device="cpu",
                      samples=args.trials, max_epochs=args.epochs, use_asha=False, concurrency=1,
                      cpus_per_trial=float(os.cpu_count() or 1), experiment="overhead")
    start = time.perf_counter()
    result = run_sweep(cfg, paths)
    total = time.perf_counter() - start
    runs = tracking.child_runs(paths.tracking_uri, result.experiment_id, result.parent_run_id)
    return total, {float(r.data.params["lr"]): (r.info.end_time - r.info.start_time) / 1000 for r in runs}


def main(argv=None) -> int:
    args = parse_args(argv)
    from data_pipeline import DataError
    from models import ConfigError
    from tuner.cli import CliError
    from tuner.space import SpaceError

    try:
        bare, bare_total, tuned, tuned_total = measure(args)
    except (CliError, ConfigError, DataError, SpaceError) as err:
        return fail("overhead.py", err)
    report = summarise(args, bare, bare_total, tuned, tuned_total)
    print_table(report)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
    return 0


def measure(args) -> tuple[dict[float, float], float, dict[float, float], float]:
    """(bare seconds per lr, bare total, tuned seconds per lr, tuned total) on scenes generated for the run."""
    from data_pipeline import DataConfig, prepare_dataset, synth
    from tuner.space import load_space

    with tempfile.TemporaryDirectory(prefix="lunartune-overhead-") as tmp:
        tmp = Path(tmp)
        scenes = synth.generate(tmp / "scenes", args.scenes, seed=0, size=(args.image_size,) * 2, workers=0,
                                progress=False)
        data_cfg = DataConfig(root=str(scenes), image_size=(args.image_size,) * 2, progress=False)
        prepare_dataset(data_cfg)  # the cache is built once, outside both timings (the sweep does the same)
        (tmp / "space.yaml").write_text(space_yaml(args))
        space = load_space(tmp / "space.yaml")
        start = time.perf_counter()
        bare = run_bare(args, data_cfg, space)
        bare_total = time.perf_counter() - start
        tuned_total, tuned = run_tuned(args, scenes, tmp / "space.yaml", tmp / "run")
    return bare, bare_total, tuned, tuned_total


def summarise(args, bare, bare_total, tuned, tuned_total) -> dict:
    trials = [{"lr": lr, "bare_s": round(bare[lr], 3), "tuned_s": round(tuned[lr], 3),
               "ratio": round(tuned[lr] / bare[lr], 3)} for lr in bare]
    return {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
            "settings": vars(args), "trials": trials,
            "bare_total_s": round(bare_total, 3), "tuned_total_s": round(tuned_total, 3),
            "ratio_end_to_end": round(tuned_total / bare_total, 3),
            "ratio_per_trial": round(sum(tuned.values()) / sum(bare.values()), 3), "target": 1.10}


def print_table(report: dict) -> None:
    print(f"{'lr':>8} {'bare s':>8} {'tuned s':>8} {'ratio':>6}")
    for t in report["trials"]:
        print(f"{t['lr']:>8.4g} {t['bare_s']:>8.2f} {t['tuned_s']:>8.2f} {t['ratio']:>6.2f}")
    print(f"per trial: {report['ratio_per_trial']:.2f}   end to end: {report['ratio_end_to_end']:.2f} "
          f"({report['tuned_total_s']:.1f} s vs {report['bare_total_s']:.1f} s)   target <= {report['target']}")


if __name__ == "__main__":
    sys.exit(main())
