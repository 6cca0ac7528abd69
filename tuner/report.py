"""`lunartune report --experiment NAME --out DIR`: PNG figures and report.md for the latest sweep.

Figures (matplotlib, Agg backend), all read from MLflow and the sweep's Optuna study:

    curves.png           training loss and val mIoU per epoch, one line per trial, coloured by backbone;
                         trials stopped early (pruned) are dashed and visibly short
    best_per_backbone.png  val mIoU and rock mIoU of the best trial of each backbone
    test_vs_real.png     per-class IoU on the test split vs real photos, from the latest promotion run
                         (only when a promotion exists)
    importance.png       Optuna's hyperparameter importances (or a note when too few trials completed)
    predictions.png      the best trial's checkpoint on a few test-split images: image / truth / prediction

`report.md` links them, with a table of the top trials. Everything is written to a staging folder, moved
into --out, then logged to the sweep's parent run under `report/`.
"""
from __future__ import annotations

import json
import math
import sys
import tempfile
import textwrap
import warnings
from dataclasses import dataclass
from pathlib import Path

from tuner.cli import EXIT_INCOMPLETE, CliError
from tuner.objective import best_epoch
from tuner.settings import RunPaths

FIGURES = ("curves.png", "best_per_backbone.png", "test_vs_real.png", "importance.png", "predictions.png")
REPORT_ARTIFACT_DIR = "report"
TOP_TRIALS = 10  # rows of the table in report.md
EXAMPLES = 4  # test images in predictions.png
MIN_COMPLETE_FOR_IMPORTANCE = 4  # fewer COMPLETE Optuna trials: importances would be noise
DPI = 110
STATUS_STYLE = {"completed": "-", "pruned": "--"}  # other statuses (errored, diverged, running): dotted


@dataclass(frozen=True)
class ReportConfig:
    experiment: str  # MLflow experiment (and Optuna study) of the sweep
    out: Path  # output folder
    objective: str | None = None  # ranks trials; None = the objective the sweep logged (else val_miou)
    device: str = "auto"  # where the example predictions run


@dataclass(frozen=True)
class TrialCurves:
    name: str  # trial run name, e.g. vgg11-t001
    run_id: str
    backbone: str
    status: str  # completed | pruned | errored | diverged | running
    params: dict  # the run's params (model + train config)
    history: dict  # metric name -> [(epoch, value)], epoch order
    best: float  # best objective value (NaN if none)
    best_epoch: int  # epoch of `best` (0 if none)

    def at_best(self, metric: str) -> float:
        return dict(self.history.get(metric, [])).get(self.best_epoch, math.nan)


@dataclass(frozen=True)
class ReportData:
    experiment: object  # mlflow Experiment
    parent: object  # mlflow Run of the latest sweep
    objective: str
    trials: list  # TrialCurves, best first
    promotion: object | None  # latest promotion run of the experiment (mlflow Run) or None


# ----------------------------------------------------------------------------- reading MLflow

def _history(client, run_id: str, metric: str) -> list[tuple[int, float]]:
    points = {m.step: m.value for m in client.get_metric_history(run_id, metric)}  # a retried epoch: last wins
    return sorted(points.items())


def _curves(client, run, objective: str) -> TrialCurves:
    from tuner import tracking

    history = {m: _history(client, run.info.run_id, m) for m in ("train_loss", "val_miou", "val_rock_miou", objective)}
    best, epoch = best_epoch(history[objective]) or (math.nan, 0)  # the trial's rule: its best.pt is that epoch's
    tags = run.data.tags
    return TrialCurves(run.info.run_name or run.info.run_id, run.info.run_id, tags.get(tracking.BACKBONE_TAG, "?"),
                       tags.get(tracking.STATUS_TAG, "?"), dict(run.data.params), history, best, epoch)


def latest_promotion(client, experiment_id: str):
    from tuner import tracking
    from tuner.promote import ROLE_PROMOTION

    runs = client.search_runs([experiment_id], filter_string=f"tags.`{tracking.ROLE_TAG}` = '{ROLE_PROMOTION}' "
                              "and attributes.status = 'FINISHED'", order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def collect(paths: RunPaths, cfg: ReportConfig) -> ReportData:
    from tuner import tracking
    from tuner.promote import find_experiment, open_client

    experiment = find_experiment(paths, cfg.experiment)
    client = open_client(paths)
    try:
        parent = tracking.latest_parent_run(paths.tracking_uri, experiment.experiment_id)
    except tracking.TrackingError as err:
        raise CliError(str(err)) from None
    objective = cfg.objective or parent.data.params.get("objective", "val_miou")
    runs = tracking.child_runs(paths.tracking_uri, experiment.experiment_id, parent.info.run_id)
    if not runs:
        raise CliError(f"sweep {parent.info.run_name} of experiment {cfg.experiment!r} has no trials yet")
    trials = sorted((_curves(client, r, objective) for r in runs),
                    key=lambda t: -t.best if math.isfinite(t.best) else math.inf)
    return ReportData(experiment, parent, objective, trials, latest_promotion(client, experiment.experiment_id))


# ----------------------------------------------------------------------------- figures

def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and in tests
    import matplotlib.pyplot as plt

    return plt


def _backbone_colours(trials) -> dict:
    palette = _plt().get_cmap("tab10").colors
    return {b: palette[i % len(palette)] for i, b in enumerate(sorted({t.backbone for t in trials}))}


def plot_curves(data: ReportData, path: Path) -> None:
    from matplotlib.lines import Line2D

    plt = _plt()
    colours = _backbone_colours(data.trials)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    losses = sorted({t.params.get("loss", "?") for t in data.trials})
    # each trial's own loss: a dice loss (0-1) is not comparable with a cross-entropy
    loss_label = "training loss" if len(losses) == 1 else f"training loss ({' / '.join(losses)}: not comparable)"
    for ax, metric, label in ((axes[0], "train_loss", loss_label), (axes[1], "val_miou", "val mIoU")):
        for t in data.trials:
            points = t.history.get(metric) or []
            if points:
                epochs, values = zip(*points)
                ax.plot(epochs, values, STATUS_STYLE.get(t.status, ":"), marker="o", markersize=3,
                        color=colours[t.backbone], alpha=0.85, linewidth=1.4)
                if t.status == "pruned":  # where ASHA stopped it (a 1-epoch trial has no line to dash)
                    ax.plot(epochs[-1], values[-1], "x", color=colours[t.backbone], markersize=9, mew=2)
        winner = next((t for t in data.trials if math.isfinite(t.best)), None)
        if winner is not None and winner.history.get(metric):  # the trial the summary ranks first, marked
            epochs, values = zip(*winner.history[metric])
            ax.plot(epochs, values, color="black", linewidth=3.2, alpha=0.35, zorder=1)
            ax.annotate(f"best: {winner.name}", (epochs[-1], values[-1]), fontsize=8, xytext=(4, 4),
                        textcoords="offset points")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.set_title(f"{label} per trial")
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    handles = [Line2D([], [], color=c, linewidth=2, label=b) for b, c in colours.items()]
    handles += [Line2D([], [], color="grey", linestyle="-", label="completed"),
                Line2D([], [], color="grey", linestyle="--", marker="x", mew=2, label="pruned (x = stopped)")]
    handles.append(Line2D([], [], color="grey", linestyle=":", label="other (errored, diverged)"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=9, frameon=False)
    fig.suptitle(f"sweep {data.parent.info.run_name}: {len(data.trials)} trials (dashed = stopped early by ASHA)")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def best_per_backbone(data: ReportData) -> dict:
    """backbone -> its best trial (trials are best first)."""
    best = {}
    for t in data.trials:
        if math.isfinite(t.best):
            best.setdefault(t.backbone, t)
    return best


def _bars(ax, groups: list[str], series: dict, ylabel: str) -> None:
    """Grouped bars: one group per x label, one bar per series, value printed on each bar."""
    import numpy as np

    width = 0.8 / max(len(series), 1)
    x = np.arange(len(groups))
    for i, (label, values) in enumerate(series.items()):
        shown = [v if math.isfinite(v) else 0.0 for v in values]
        bars = ax.bar(x + (i - (len(series) - 1) / 2) * width, shown, width, label=label)
        ax.bar_label(bars, labels=[f"{v:.3f}" if math.isfinite(v) else "n/a" for v in values], fontsize=8)
    ax.set_xticks(x, groups)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.05)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=9)


def plot_best_per_backbone(data: ReportData, path: Path) -> None:
    plt = _plt()
    best = best_per_backbone(data)
    fig, ax = plt.subplots(figsize=(max(5, 2.2 * len(best) + 2), 4.2))
    # a 1-epoch pruned trial beside a completed one: the label says which had the fuller run
    labels = [f"{b}\n({t.name}, epoch {t.best_epoch}, {t.status})" for b, t in best.items()]
    _bars(ax, labels, {"val mIoU": [t.at_best("val_miou") for t in best.values()],
                       "val rock mIoU": [t.at_best("val_rock_miou") for t in best.values()]}, "IoU")
    ax.set_xlabel("backbone (best trial by " + data.objective + ")")
    ax.set_title("best trial of each backbone (validation split)")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def plot_test_vs_real(data: ReportData, path: Path) -> bool:
    """Per-class IoU of the promoted model: test split vs real photos. False when there is no promotion."""
    from data_pipeline import CLASS_NAMES

    if data.promotion is None:
        return False
    metrics = data.promotion.data.metrics
    series = {("test split (renders)" if group == "test" else "real photos"):
              [metrics.get(f"{group}_iou_{c}", math.nan) for c in CLASS_NAMES] + [metrics.get(f"{group}_miou", math.nan)]
              for group in ("test", "real") if f"{group}_miou" in metrics}
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8.5, 4.2))
    _bars(ax, [*CLASS_NAMES, "mean (mIoU)"], series, "IoU")
    ax.set_xlabel("class")
    missing = "" if any(k.startswith("real") for k in series) else " - no real photos scored (promote --real-data)"
    ax.set_title(f"promoted model {data.promotion.info.run_name}: per-class IoU{missing}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return True


@dataclass(frozen=True)
class Importance:
    values: dict  # param -> importance (sums to 1); empty when `reason` says why
    trials: int  # trials the importances were computed from
    basis: str  # which values were compared, for the figure's title
    reason: str | None = None  # why there are no importances


def _first_rung_study(study):
    """An in-memory study of every finished trial (COMPLETE or PRUNED) valued at the first epoch all of
    them reported: ASHA stops most trials early, so this compares every trial at the same budget instead
    of dropping the pruned ones. (None, 0) if no trial reported an intermediate value."""
    import optuna
    from optuna.trial import TrialState, create_trial

    finished = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
                if t.intermediate_values]
    if not finished:
        return None, 0
    step = min(min(t.intermediate_values) for t in finished)
    proxy = optuna.create_study(direction=study.direction)
    for t in finished:
        if step in t.intermediate_values and math.isfinite(t.intermediate_values[step]):
            proxy.add_trial(create_trial(params=t.params, distributions=t.distributions,
                                         value=t.intermediate_values[step]))
    return proxy, step


def importances(paths: RunPaths, study_name: str, objective: str = "val_miou") -> Importance:
    """Optuna's importances over COMPLETE trials; with too few of those, over every finished trial at the
    first epoch; with too few of those as well, none and the reason."""
    import optuna
    from optuna.trial import TrialState

    if not paths.optuna_db.is_file():
        return Importance({}, 0, "", f"no Optuna study store at {paths.optuna_db}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=study_name, storage=f"sqlite:///{paths.optuna_db}")
    except KeyError:
        return Importance({}, 0, "", f"no Optuna study {study_name!r} in {paths.optuna_db}")
    complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    if complete >= MIN_COMPLETE_FOR_IMPORTANCE:
        chosen, basis = study, (f"{objective} (best epoch) of the {complete} COMPLETE trials of the whole study "
                                f"(every sweep of the experiment)")
    else:
        chosen, step = _first_rung_study(study)
        used = len(chosen.trials) if chosen else 0
        if used < MIN_COMPLETE_FOR_IMPORTANCE:
            return Importance({}, used, "", f"only {complete} COMPLETE trial(s) and {used} with a first-epoch "
                              f"value: importances need at least {MIN_COMPLETE_FOR_IMPORTANCE}; run more --samples")
        basis = (f"{objective} at epoch {step} of all {used} trials of the whole study (only {complete} ran to "
                 f"the end: ASHA stopped the rest)")
    # over the trials Optuna ranks (COMPLETE ones: a value a pruned trial alone tried is not compared)
    fixed = _one_value_params(chosen.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    if fixed:  # Optuna ranks such a parameter 0: nothing was compared, which "unimportant" would misstate
        basis += f"; not ranked, one value in these trials: {', '.join(fixed)}"
    try:
        with warnings.catch_warnings():  # "few trials per regime": the figure already says "indicative only"
            warnings.simplefilter("ignore", UserWarning)
            values = {k: v for k, v in optuna.importance.get_param_importances(chosen).items() if k not in fixed}
    except (RuntimeError, ValueError) as err:  # e.g. every trial has the same value
        return Importance({}, len(chosen.trials), basis, f"Optuna could not rank the parameters: {err}")
    if not values:
        return Importance({}, len(chosen.trials), basis, f"every parameter took one value in the trials compared "
                          f"({', '.join(fixed) or 'none searched'}): nothing to rank")
    return Importance(values, len(chosen.trials), basis)


def _one_value_params(trials) -> list[str]:
    """Parameters every one of `trials` that has them took the same value of (sorted)."""
    values = {}
    for t in trials:
        for name, value in t.params.items():
            values.setdefault(name, set()).add(value)
    return sorted(name for name, seen in values.items() if len(seen) == 1)


def _text_figure(path: Path, title: str, text: str) -> None:
    """A figure that says why it has nothing to show (report.md links every figure)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 2.8))
    ax.text(0.5, 0.5, textwrap.fill(text, 70), ha="center", va="center", fontsize=10, transform=ax.transAxes)
    ax.set_axis_off()
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def plot_importance(paths: RunPaths, data: ReportData, path: Path) -> str:
    """Bar chart of importances, or a figure saying why there are none; returns the line for report.md."""
    result = importances(paths, data.experiment.name, data.objective)
    if result.reason:
        _text_figure(path, "hyperparameter importance", f"no hyperparameter importances: {result.reason}")
        return f"no importances: {result.reason}"
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, max(2.8, 0.45 * len(result.values) + 1.8)))
    names = list(result.values)[::-1]  # most important on top
    bars = ax.barh(names, [result.values[n] for n in names], color="tab:blue")
    ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.set_xlabel("importance (Optuna PED-ANOVA, sums to 1)")
    ax.set_ylabel("hyperparameter")
    ax.set_xlim(0, max(result.values.values()) * 1.2 or 1)
    ax.set_title("hyperparameter importance (few trials: indicative only)\n" + textwrap.fill(result.basis, 80),
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return f"importances computed from {result.basis}"


def plot_predictions(paths: RunPaths, data: ReportData, path: Path, device) -> str:
    """The best trial's checkpoint on the first EXAMPLES test images; returns the trial's name."""
    from matplotlib.patches import Patch

    from data_pipeline import class_table, encode_mask
    from models.inference import predict_masks
    from tuner.promote import Trial, check_ranked_epoch, fetch_checkpoint, sweep_data

    best = next((t for t in data.trials if math.isfinite(t.best)), None)
    if best is None:
        raise CliError(f"sweep {data.parent.info.run_name}: no trial has reported {data.objective} yet")
    samples = list(sweep_data(paths, data.parent).test_set()[:EXAMPLES])
    with tempfile.TemporaryDirectory(prefix="lunartune-report-") as folder:
        run = _client(paths).get_run(best.run_id)
        trial = Trial(run, data.parent, best.best, best.best_epoch)
        _, model, info = fetch_checkpoint(paths, trial, Path(folder))
        check_ranked_epoch(trial, info)  # else the figure shows one epoch's weights under another's score
    norm = info["normalization"]
    predictions = predict_masks(model.to(device), [s.image for s in samples], tuple(info["image_size"]),
                                norm["mean"], norm["std"], device)
    plt = _plt()
    fig, axes = plt.subplots(len(samples), 3, figsize=(9, 2.6 * len(samples) + 0.9), squeeze=False)
    for row, (sample, predicted) in enumerate(zip(samples, predictions)):
        for col, (label, picture) in enumerate((("image", sample.image), ("truth", encode_mask(sample.mask)),
                                                ("prediction", encode_mask(predicted)))):
            axes[row, col].imshow(picture)
            axes[row, col].set_title(f"test frame {sample.name}: {label}", fontsize=9)
            axes[row, col].axis("off")
    legend = [Patch(facecolor=[v / 255 for v in c["color"]], edgecolor="grey", label=c["name"]) for c in class_table()]
    fig.legend(handles=legend, loc="lower center", ncol=len(legend), fontsize=9, frameon=False)
    fig.suptitle(f"best trial {best.name} ({data.objective} {best.best:.3f}) on held-out test images", fontsize=11)
    fig.tight_layout(rect=(0, 0.04, 1, 0.97))
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return best.name


def _client(paths: RunPaths):
    from tuner.promote import open_client

    return open_client(paths)


# ----------------------------------------------------------------------------- report.md

def _cell(value: float) -> str:
    return f"{value:.4f}" if isinstance(value, float) and math.isfinite(value) else "-"


def _param(text: str) -> str:
    """MLflow stores params as text: 0.007768811685516966 -> 0.007769, other text unchanged."""
    try:
        return f"{float(text):.4g}" if "." in text or "e" in text else text
    except ValueError:
        return text


def trials_table(data: ReportData) -> list[str]:
    searched = ("lr", "optimizer", "batch_size", "dropout", "loss")
    rows = ["| # | trial | backbone | status | epochs | " + data.objective + " (best) | val rock mIoU | " +
            " | ".join(searched) + " |", "|" + "---|" * (7 + len(searched))]
    for i, t in enumerate(data.trials[:TOP_TRIALS], 1):
        epochs = max((s for s, _ in t.history.get(data.objective, [])), default=0)
        rows.append(f"| {i} | {t.name} | {t.backbone} | {t.status} | {epochs} | {_cell(t.best)} | "
                    f"{_cell(t.at_best('val_rock_miou'))} | " + " | ".join(_param(t.params.get(p, "-")) for p in searched) + " |")
    return rows


def summary_line(data: ReportData) -> str:
    """What won and by how much, first thing in report.md."""
    best = best_per_backbone(data)
    if not best:
        return f"**No trial has a {data.objective} yet.**"
    ranked = sorted(best.values(), key=lambda t: -t.best)
    top = ranked[0]
    line = (f"**Best: `{top.name}` ({top.backbone}, {top.status}), {data.objective} {top.best:.4f} at epoch "
            f"{top.best_epoch}")
    if len(ranked) > 1:
        runner = ranked[1]
        line += (f"; {top.best - runner.best:+.4f} over the best {runner.backbone} trial (`{runner.name}`, "
                 f"{runner.best:.4f})")
    line += ".**"
    if data.promotion is not None:
        metrics = data.promotion.data.metrics
        scores = ", ".join(f"{k} {metrics[k]:.4f}" for k in ("test_miou", "test_rock_miou", "real_miou") if k in metrics)
        line += f" Promoted model (`{data.promotion.info.run_name}`): {scores or 'not scored'}."
    return line


def promotion_lines(data: ReportData) -> list[str]:
    if data.promotion is None:
        return ["No promotion yet: `lunartune promote --experiment " + data.experiment.name + "` registers the "
                "best VGG11 trial and scores it on the test split."]
    run, metrics = data.promotion, data.promotion.data.metrics
    scores = ", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items()) if k.endswith(("_miou", "_rock_miou")))
    trial = run.info.run_name.removeprefix("promote-")
    sweep = run.data.tags.get("source_sweep_run_id")
    # trial names restart in every sweep: a vgg11-t002 of an earlier sweep is not this table's vgg11-t002
    which = "this sweep" if sweep == data.parent.info.run_id else f"an earlier sweep (parent run `{sweep}`)"
    return [f"Latest promotion `{run.info.run_name}` ({run.info.run_id}): trial `{trial}` of {which}, trial run "
            f"`{run.data.tags.get('source_trial_run_id', '?')}`; {scores}.", "",
            "![test vs real photos](test_vs_real.png)"]


def write_markdown(data: ReportData, folder: Path, notes: dict) -> None:
    parent = data.parent
    lines = [f"# Sweep report: {data.experiment.name}", "", summary_line(data), "",
             f"Sweep `{parent.info.run_name}` (MLflow parent run `{parent.info.run_id}`), "
             f"{len(data.trials)} trials, objective `{data.objective}`, space `{parent.data.params.get('space_file', '?')}`.",
             "", "## Training curves", "", "![curves](curves.png)", "",
             "## Best trial per backbone", "", "![best per backbone](best_per_backbone.png)", "",
             f"## Top trials (by {data.objective})", "", *trials_table(data), "",
             "## Promoted model", "", *promotion_lines(data), "",
             "## Hyperparameter importance", "", "![importance](importance.png)", ""]
    note = notes["importance"]
    lines += [f"{note[:1].upper()}{note[1:]}.", ""]
    shown = (f"No example predictions: {notes['no_predictions']}." if notes.get("no_predictions") else
             f"Best trial `{notes['predictions']}` on held-out test images.")
    lines += ["## Example predictions", "", shown, "", "![predictions](predictions.png)", ""]
    (folder / "report.md").write_text("\n".join(lines))


# ----------------------------------------------------------------------------- the command

@dataclass(frozen=True)
class ReportResult:
    out: Path
    files: list  # written file names (report.md and the PNGs)
    parent_run_id: str
    notes: dict


def report(cfg: ReportConfig, paths: RunPaths) -> ReportResult:
    from models.training import resolve_device
    from tuner.predict import staged_output

    data = collect(paths, cfg)
    notes = {}
    with staged_output(cfg.out) as staging:
        plot_curves(data, staging / "curves.png")
        plot_best_per_backbone(data, staging / "best_per_backbone.png")
        plot_test_vs_real(data, staging / "test_vs_real.png")
        notes["importance"] = plot_importance(paths, data, staging / "importance.png")
        try:
            notes["predictions"] = plot_predictions(paths, data, staging / "predictions.png", resolve_device(cfg.device))
        except CliError as err:  # no scored trial yet, its checkpoint not uploaded, its data gone: the rest stands
            notes["predictions"], notes["no_predictions"] = "", str(err)
            _text_figure(staging / "predictions.png", "example predictions", f"no example predictions: {err}")
        write_markdown(data, staging, notes)
        (staging / "report.json").write_text(json.dumps(
            {"experiment": data.experiment.name, "parent_run_id": data.parent.info.run_id, "objective": data.objective,
             "trials": [{"name": t.name, "backbone": t.backbone, "status": t.status,
                         "best": t.best if math.isfinite(t.best) else None,  # JSON has no NaN (an errored trial)
                         "best_epoch": t.best_epoch} for t in data.trials], "notes": notes}, indent=2, default=str))
        files = sorted(p.name for p in staging.iterdir())
    out = Path(cfg.out).expanduser().resolve()
    # the run keeps exactly this report's files (not older ones that happen to be in --out)
    try:
        for name in files:
            _client(paths).log_artifact(data.parent.info.run_id, str(out / name), REPORT_ARTIFACT_DIR)
    except Exception as err:  # MLflow away, its artifact store full: the report stands in --out
        notes["not_logged"] = f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:200]}"
    return ReportResult(out, files, data.parent.info.run_id, notes)


def config_from_args(args, paths: RunPaths) -> ReportConfig:
    out = Path(args.out) if args.out else paths.root / "report" / args.experiment
    return ReportConfig(experiment=args.experiment, out=out)


def main(args, paths: RunPaths) -> int:
    result = report(config_from_args(args, paths), paths)
    print(f"report: {result.out / 'report.md'}")
    for name in result.files:
        print(f"  {result.out / name}")
    for key in ("importance", "no_predictions"):
        if result.notes.get(key):
            print(f"note ({key.replace('_', ' ')}): {result.notes[key]}", file=sys.stderr)
    if result.notes.get("not_logged"):
        print(f"lunartune report: warning: the files were not logged to parent run {result.parent_run_id} "
              f"({result.notes['not_logged']}); run the command again once MLflow is back", file=sys.stderr)
        return EXIT_INCOMPLETE
    print(f"logged to parent run {result.parent_run_id} under {REPORT_ARTIFACT_DIR}/")
    return 0
