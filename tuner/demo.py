"""`lunartune demo`: the whole job on embedded defaults, in about two minutes on 2 CPU cores.

    generate scenes -> sweep (local Ray, Optuna + ASHA, SQLite MLflow in the run dir)
    -> promote the best VGG11 trial (test split, registry aliases) -> export it (TorchScript + ONNX)
    -> report (figures + report.md)

It calls the same functions the commands call (run_sweep, promote, export, report), never subprocesses.
Re-running it on the same run dir starts a new sweep (a new MLflow parent run) in the same experiment and
Optuna study; generated scenes are reused; promote registers only a better or different trial.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from tuner.cli import EXIT_INTERRUPTED, CliError
from tuner.settings import RunPaths, shown_uri

DEMO_SPACE = "smoke"  # shipped space the demo searches (hand-built U-Net + VGG11)


@dataclass(frozen=True)
class DemoConfig:
    experiment: str = "lunartune-demo"  # MLflow experiment, Optuna study, registered-model source
    samples: int = 6  # sweep trials
    scenes: int = 120  # generated scenes (train/val/test 70/15/15 %)
    scene_size: tuple[int, int] = (240, 360)  # (H, W) of the generated files; the Kaggle renders are 480x720
    image_size: tuple[int, int] = (64, 96)  # (H, W) the models train and predict at
    max_epochs: int = 3  # epochs of a trial ASHA never stops
    grace_epochs: int = 1  # ASHA: epochs before a trial may be stopped
    concurrency: int = 2  # trials at once (one CPU each)
    seed: int = 0  # data, Optuna and every trial
    backbone: str = "vgg11"  # promoted backbone
    # its own registered model: in a run dir or MLflow server shared with real sweeps, a demo model must never
    # take `champion` of theirs (a Kaggle-trained champion re-scored on the demo's generated test split loses)
    model_name: str = "lunar-unet-demo"
    formats: tuple[str, ...] = ("torchscript", "onnx")  # export formats
    device: str = "auto"  # trials, scoring and predictions


@dataclass(frozen=True)
class DemoResult:
    sweep: object  # tuner.sweep.SweepResult
    promotion: object  # tuner.promote.PromoteResult
    export: object  # tuner.export.ExportResult
    report: object  # tuner.report.ReportResult


def demo_space(backbone: str) -> Path:
    """The shipped smoke space, which evaluates a point of the promoted backbone first: whatever TPE draws
    next, the demo has a trial to promote (an edited file without one is refused before any work)."""
    from models.registry import canonical_backbone
    from tuner.space import load_space

    import search_spaces

    path = search_spaces.resolve(DEMO_SPACE)
    points = load_space(path).points_to_evaluate
    if not any(canonical_backbone(p["backbone"]) == backbone for p in points if "backbone" in p):
        raise CliError(f"{path}: points_to_evaluate has no {backbone} point; the demo promotes a {backbone} "
                       f"trial and needs one evaluated first")
    return path


def generate_scenes(cfg: DemoConfig, paths: RunPaths) -> Path:
    from data_pipeline import synth

    height, width = cfg.scene_size
    root = paths.data / f"demo-{cfg.scenes}-seed{cfg.seed}-{width}x{height}-v{synth.MANIFEST_VERSION}"  # see synthetic_root
    print(f"[1/5] scenes: {cfg.scenes} in {root} (reused when already complete)", file=sys.stderr)
    return synth.generate(root, cfg.scenes, cfg.seed, size=cfg.scene_size, progress=True)  # ~40 s on 2 cores


def sweep_config(cfg: DemoConfig, data: Path, space: Path):
    from tuner.sweep import SweepConfig, check_sweep_config

    sweep = SweepConfig(space=str(space), data=str(data), image_size=cfg.image_size, device=cfg.device,
                        samples=cfg.samples, max_epochs=cfg.max_epochs, grace_epochs=cfg.grace_epochs,
                        concurrency=cfg.concurrency, cpus_per_trial=1.0, seed=cfg.seed, experiment=cfg.experiment)
    check_sweep_config(sweep)
    return sweep


def run_demo(cfg: DemoConfig, paths: RunPaths) -> DemoResult | None:
    """The five steps; None if the sweep was interrupted (Ctrl-C): nothing is promoted then."""
    from tuner.export import ExportConfig, export
    from tuner.promote import PromoteConfig, format_result, promote
    from tuner.report import ReportConfig, report
    from tuner.sweep import format_summary, run_sweep_cli_errors

    space = demo_space(cfg.backbone)
    sweep_config(cfg, paths.data, space)  # its flags checked before the run dir and the scenes are made
    paths.ensure()
    data = generate_scenes(cfg, paths)
    print(f"[2/5] sweep: {cfg.samples} trials, experiment {cfg.experiment}", file=sys.stderr)
    sweep = sweep_config(cfg, data, space)
    swept = run_sweep_cli_errors(sweep, paths)
    if swept.interrupted:
        return None
    print(format_summary(swept, sweep, paths), file=sys.stderr)  # the top trials, as `tune` shows them
    print(f"[3/5] promote the best {cfg.backbone} trial", file=sys.stderr)
    promoted = promote(PromoteConfig(experiment=cfg.experiment, backbone=cfg.backbone, model_name=cfg.model_name,
                                     device=cfg.device), paths)
    print(format_result(promoted), file=sys.stderr)
    print(f"[4/5] export models:/{cfg.model_name}@champion", file=sys.stderr)
    exported = export(ExportConfig(model=f"models:/{cfg.model_name}@champion", formats=cfg.formats,
                                   out=paths.root / "export" / cfg.experiment), paths)
    print("[5/5] report", file=sys.stderr)
    reported = report(ReportConfig(experiment=cfg.experiment, out=paths.root / "report" / cfg.experiment,
                                   device=cfg.device), paths)
    return DemoResult(swept, promoted, exported, reported)


def where_to_look(result: DemoResult, paths: RunPaths) -> str:
    sweep, promoted = result.sweep, result.promotion
    files = ", ".join(str(p) for p in result.export.files.values())
    return "\n".join([
        "", "demo finished",
        f"  report:         {result.report.out / 'report.md'}  (figures beside it)",
        f"  exported model: {files}",
        f"  model card:     {result.export.out / 'model_card.json'}",
        f"  registry:       models:/{promoted.model_name}@champion = version {promoted.champion_version} "
        f"(this run: version {promoted.version}, {'new' if promoted.registered else 'already registered'})",
        f"  MLflow UI:      lunartune --run-dir {paths.root}"
        + (f" --tracking-uri {shown_uri(paths.tracking_uri_override)}" if paths.tracking_uri_override else "")
        + f" ui --experiment {sweep.experiment}",
        "                  it prints the links to open (port 5000 unless that one is taken)",
        f"  Optuna study:   {sweep.experiment} in {paths.optuna_db}",
        "  run it again:   a new sweep joins the same experiment and study; promote moves the champion only "
        "for a better model"])


def config_from_args(args) -> DemoConfig:
    if args.samples < 1:
        raise CliError(f"--samples={args.samples}: expected an integer >= 1")
    return DemoConfig(experiment=args.experiment, samples=args.samples)


def main(args, paths: RunPaths) -> int:
    result = run_demo(config_from_args(args), paths)
    if result is None:
        again = "" if args.experiment == DemoConfig.experiment else f" --experiment {args.experiment}"
        print(f"demo interrupted during the sweep; run it again (lunartune --run-dir {paths.root} demo{again})",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    print(where_to_look(result, paths))
    return 0
