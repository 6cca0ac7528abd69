"""`lunartune train`: one configuration, no Ray, no MLflow.

Flags become DataConfig / ModelConfig / TrainConfig in `configs_from_args` (the only place), then the pure
loop of models.training runs: a progress bar and one line per epoch, the best checkpoint by val mIoU
saved to <out>/best.pt, and a final JSON of metrics (val of the best epoch, and the test split scored
with that checkpoint) printed to stdout and written to <out>/metrics.json. Metrics that are undefined
(a class absent from a split: NaN, see models.metrics) are written as JSON null.
"""
from __future__ import annotations

import json
import math
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tuner.cli import CliError
from tuner.settings import RunPaths

SYNTHETIC = "synthetic"
DEFAULT_SYNTHETIC_COUNT = 200  # scenes --data synthetic generates unless --synthetic-count says
BEST_CHECKPOINT = "best.pt"
METRICS_FILE = "metrics.json"


@dataclass(frozen=True)
class TrainJob:
    """Everything one `lunartune train` run needs, resolved from the flags."""

    data: "DataConfig"  # noqa: F821  (data_pipeline is imported lazily: --help stays instant)
    model: "ModelConfig"  # noqa: F821
    train: "TrainConfig"  # noqa: F821
    out: Path  # checkpoint + metrics folder
    synthetic_count: int | None  # scenes to generate into data.root first; None = use an existing folder


def synthetic_root(paths: RunPaths, count: int, seed: int) -> Path:
    """Where `--data synthetic` generates scenes. The generator's version is in the name: scenes of an
    older generator stay where they are (their sweeps' data_root still points there) and new ones go beside
    them (one folder for both was refused once the generator changed)."""
    from data_pipeline.synth import MANIFEST_VERSION

    return paths.data / f"synthetic-{count}-seed{seed}-v{MANIFEST_VERSION}"


def without_generator_version(root: str | Path) -> str:
    """The data folder as a sweep's Optuna study records it: generated scenes of the same count and seed
    count as the same data whichever generator version drew them (a rerun `make demo` after an upgrade
    continues its study)."""
    return re.sub(r"-v\d+$", "", str(root))


def synthetic_count_from_args(args) -> int:
    """--synthetic-count, which only --data synthetic uses: given with a folder it is refused (it was silently
    ignored, so a user asking for 64 scenes of their own folder trained on all of it)."""
    if args.synthetic_count is None:
        return DEFAULT_SYNTHETIC_COUNT
    if args.data != SYNTHETIC:
        raise CliError(f"--synthetic-count={args.synthetic_count}: only for --data {SYNTHETIC}; --data {args.data} "
                       f"is a folder, used as it is")
    return args.synthetic_count


def configs_from_args(args, paths: RunPaths) -> TrainJob:
    """The one place flags become frozen configs; ConfigError/DataError become CliError."""
    from data_pipeline import DataConfig
    from models import ConfigError, ModelConfig, TrainConfig, validate, validate_image_size, validate_train
    from models.training import resolve_device

    synthetic, count = args.data == SYNTHETIC, synthetic_count_from_args(args)
    if count < 1:
        raise CliError(f"--synthetic-count={count}: expected an integer >= 1")
    root = synthetic_root(paths, count, args.seed) if synthetic else Path(args.data).expanduser()
    data = DataConfig(root=str(root), image_size=tuple(args.image_size), batch_size=args.batch_size,
                      mask_source=args.mask_source, allow_missing=args.allow_missing,
                      exclude_mismatches=args.exclude_mismatches, augment=args.augment, seed=args.seed,
                      num_workers=args.num_workers)
    model = ModelConfig(backbone=args.backbone, arch=args.arch, encoder_weights=args.encoder_weights,
                        dropout=args.dropout)
    train = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer,
                        momentum=args.momentum, nesterov=args.nesterov, weight_decay=args.weight_decay,
                        loss=args.loss, lr_schedule=args.lr_schedule, seed=args.seed, device=args.device,
                        bn_recalibration_batches=args.bn_recalibration_batches)
    try:
        model = validate(model)  # resolves aliases, so the checkpoint records the registry name
        validate_train(train)
        validate_image_size(model, data.image_size)
        resolve_device(train.device)  # a device this machine lacks fails now, not after the data is ready
    except ConfigError as err:
        raise CliError(flag_named(str(err))) from None
    out = Path(args.out).expanduser() if args.out else paths.root / "train" / model.backbone
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {out}: exists and is not a folder")
    return TrainJob(data, model, train, out.resolve(), count if synthetic else None)


def flag_named(message: str) -> str:
    """'TrainConfig.lr=-1.0: ...' -> '--lr=-1.0: ...': the flag the user typed, not the config field it fills
    (every ModelConfig and TrainConfig field is the flag of the same name)."""
    message = re.sub(r"^(?:ModelConfig|TrainConfig)\.(\w+)=", lambda m: f"--{m[1].replace('_', '-')}=", message)
    return re.sub(r"^image_size=\((\d+), (\d+)\)", r"--image-size=\1x\2", message)


def json_safe(value):
    """NaN/inf -> None, at any depth, so the JSON is standard (json.dumps would write bare NaN, which strict
    parsers refuse)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    return [json_safe(v) for v in value] if isinstance(value, (list, tuple)) else value


def prefixed(prefix: str, metrics: dict) -> dict:
    return {f"{prefix}_{k}": v for k, v in metrics.items()}


def is_better(value: float, best: float | None) -> bool:
    """NaN never beats anything; anything finite beats no best yet."""
    return not math.isnan(value) and (best is None or value > best)


def epoch_line(epoch: int, epochs: int, train: dict, val: dict, best: bool) -> str:
    return (f"epoch {epoch}/{epochs}  train_loss {train['loss']:.4f}  val_loss {val['loss']:.4f}  "
            f"val_miou {val['miou']:.4f}  val_rock_miou {val['rock_miou']:.4f}  "
            f"lr {train['lr']:.2e}  {train['seconds']:.1f}s" + ("  * best" if best else ""))


def main(args, paths: RunPaths) -> int:
    from data_pipeline import DataError
    from models import WeightsError
    from models.training import DivergedError

    job = configs_from_args(args, paths)
    try:
        summary = run(job)
    except (DataError, WeightsError) as err:
        raise CliError(str(err)) from None
    except DivergedError as err:
        raise CliError(f"{err} (status: diverged)") from None
    print(json.dumps(summary, indent=2))
    return 0


def _prepare_data(job: TrainJob):
    import data_pipeline
    from data_pipeline.synth import already_generated, generate

    if job.synthetic_count is not None:
        reused = already_generated(job.data.root, job.synthetic_count, job.train.seed)
        print(f"{'reusing the' if reused else 'generating'} {job.synthetic_count} synthetic scenes in {job.data.root}",
              file=sys.stderr)
        generate(job.data.root, job.synthetic_count, job.train.seed, size=(480, 720),
                                     style="realistic", workers=0, progress=True)
    loaders = data_pipeline.make_loaders(job.data)
    sizes = loaders.split_sizes  # what the run trains and scores on, and where the split is written down
    print(f"data: {sizes.get('train', 0)} train / {sizes.get('val', 0)} val / {sizes.get('test', 0)} test frames; "
          f"split in {loaders.manifest_path}", file=sys.stderr)
    return loaders


def run(job: TrainJob) -> dict:
    """Train, keep the best checkpoint by val mIoU, score it on the test split; the summary dict.
    best.pt and metrics.json land in job.out together at the end: a run that fails or is interrupted
    leaves what was there before, never a new best.pt beside an older run's metrics.json."""
    from tuner.predict import staged_output

    with staged_output(job.out) as staging:
        return _run(job, staging)


def _run(job: TrainJob, staging: Path) -> dict:
    import data_pipeline
    from models import build
    from models.checkpoint import save_checkpoint
    from models.losses import make_loss
    from models.training import (evaluate, make_grad_scaler, make_optimizer, make_scheduler, prepare_model,
                                 resolve_device, seed_everything, train_one_epoch)

    loaders = _prepare_data(job)
    seed_everything(job.train.seed)
    device = resolve_device(job.train.device)
    model = prepare_model(build(job.model), device, job.train)
    loss_fn = make_loss(job.train, loaders.class_frequencies).to(device)
    optimizer = make_optimizer(model, job.train)
    scheduler = make_scheduler(optimizer, job.train, steps_per_epoch=len(loaders.train))
    grad_scaler = make_grad_scaler(device, job.train.amp)
    classes = data_pipeline.class_table()
    names, rocks = [c["name"] for c in classes], list(data_pipeline.ROCK_CLASS_IDS)
    extras = dict(amp=job.train.amp, channels_last=job.train.channels_last)
    best, best_epoch, best_val, start = None, 0, {}, time.perf_counter()
    checkpoint = staging / BEST_CHECKPOINT
    for epoch in range(1, job.train.epochs + 1):
        # as a tune trial does: the recalibration pass over the train loader advances its epoch too, which
        # gave `train` other batches than `tune` (and than itself without recalibration) from epoch 2 on
        loaders.train.sampler.set_epoch(epoch - 1)
        train = train_one_epoch(model, loaders.train, optimizer, loss_fn, device, scheduler, progress=True,
                                epoch=epoch, bn_batches=job.train.bn_recalibration_batches, grad_scaler=grad_scaler,
                                **extras)
        val = evaluate(model, loaders.val, device, loss_fn, names, rocks, **extras)
        improved = is_better(val["miou"], best)
        print(epoch_line(epoch, job.train.epochs, train, val, improved), file=sys.stderr, flush=True)
        if improved:
            best, best_epoch, best_val = val["miou"], epoch, val
            save_checkpoint(checkpoint, model, job.model, job.train, classes=classes,
                            image_size=job.data.image_size,
                            normalization={"mean": data_pipeline.IMAGENET_MEAN, "std": data_pipeline.IMAGENET_STD},
                            epoch=epoch, metrics=prefixed("val", val),
                            extra={"manifest_hash": loaders.manifest_hash, "data_root": job.data.root})
    summary = {"status": "ok", "backbone": job.model.backbone, "arch": job.model.arch, "epochs": job.train.epochs,
               "best_epoch": best_epoch, "checkpoint": str(job.out / BEST_CHECKPOINT) if best_epoch else None,
               "train_seconds": round(time.perf_counter() - start, 2), "manifest_hash": loaders.manifest_hash,
               **prefixed("val", best_val), **_test_metrics(job, checkpoint, loaders.test, device, loss_fn, names, rocks,
                                                           best_epoch)}
    summary = json_safe(summary)
    (staging / METRICS_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _test_metrics(job: TrainJob, checkpoint: Path, test_loader, device, loss_fn, names, rocks,
                  best_epoch: int) -> dict:
    """The test split scored with the best checkpoint as saved (reloaded: what a user would deploy)."""
    from models.checkpoint import model_from_checkpoint
    from models.training import evaluate, prepare_model

    if not best_epoch or len(test_loader) == 0:
        return {}
    model = prepare_model(model_from_checkpoint(checkpoint)[0], device, job.train)
    return prefixed("test", evaluate(model, test_loader, device, loss_fn, names, rocks, amp=job.train.amp,
                                     channels_last=job.train.channels_last))
