"""`lunartune evaluate --model SPEC --data DIR`: score a model on a Kaggle-layout folder.

Two groups, each scored from ONE confusion matrix over every pixel of its masks at the masks' own size:

    renders   images/render/renderNNNN.png with images/clean/cleanNNNN.png (exact colours), or, for a render
              without a clean mask, images/ground/groundNNNN.png (graded raw labels, decoded by rule)
    photos    real_moon_images/<name>.png with g_<name>.png (hand-made masks, nearest palette colour);
              a photo of another size than its mask is resized to the mask

--exclude NAMES leaves out render frames and photos (masks seen to contradict their image), and
--exclude-mismatches the frames the data set's own mismatch_IDs.txt lists; the JSON's "excluded" says which.

The model sees each image resized to its checkpoint's input size (or --image-size); its logits are resized
back to the mask's size. Output: a table on stderr, JSON on stdout (and in --json), figures in --out; when
the model came from MLflow, `<prefix><group>_<metric>` metrics (prefix "real_") are logged to its run.

`evaluate_model(model, info, eval_sets, device)` is the scoring itself, shared with `promote`.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Iterable, NamedTuple

from tuner.cli import EXIT_INCOMPLETE, CliError
from tuner.settings import RunPaths

RENDERS, PHOTOS = "renders", "photos"  # group names (also in metric names: real_renders_miou, ...)
DEFAULT_PREFIX = "real_"  # MLflow metric prefix: real_renders_miou, real_photos_iou_small_rocks, ...
KEEP_WORST = 4  # predictions shown per group in worst_<group>.png
TABLE_METRICS = ("iou_ground", "iou_sky", "iou_small_rocks", "iou_large_rocks", "miou", "rock_miou",
                 "pixel_acc", "dice")


# ----------------------------------------------------------------------------- the data folder

class EvalData(NamedTuple):
    sets: dict  # {group: EvalSet}: what is scored
    unmasked: list[Path]  # renders with neither a clean nor a ground mask: not scored
    excluded: dict  # {name: why}: frames listed in mismatch_IDs.txt, and the names given to `exclude`


def find_eval_sets(root: str | Path, exclude: Iterable[str] = (), exclude_mismatches: bool = False) -> EvalData:
    """The groups to score in a Kaggle-layout folder; CliError if it has nothing to score.

    exclude: render frames ("0034", or 34) and photos ("TCAM21") to leave out, e.g. masks seen to contradict
    their image; a name that is in neither group is an error (a typo would otherwise go unnoticed).
    exclude_mismatches: leave out the frames the data set's own mismatch_IDs.txt lists, as training can.
    """
    from data_pipeline import DataError, EvalSet, find_real_photos

    root = Path(root).expanduser()
    if not root.is_dir():
        raise CliError(f"--data {root}: no such folder (expected the Kaggle layout: images/render + "
                       f"images/clean or images/ground, and/or real_moon_images with g_* masks)")
    try:
        renders, unmasked, mismatched = _render_samples(root, exclude_mismatches)
        photos = find_real_photos(root)
    except DataError as err:
        raise CliError(str(err)) from None
    groups = {name: s for name, s in ((RENDERS, renders), (PHOTOS, photos)) if s}
    groups, named = _without(groups, list(exclude), root, mismatched)
    sets = {name: EvalSet(s) for name, s in groups.items() if s}
    if not sets:
        raise CliError(f"--data {root}: nothing to score: no render/mask pairs under images/ and no real "
                       f"photos with g_* masks under real_moon_images/" + (" left after --exclude" if named else ""))
    return EvalData(sets, unmasked, {**mismatched, **named})


def _render_samples(root: Path, exclude_mismatches: bool) -> tuple[list, list[Path], dict]:
    """Each render with its clean mask, else its ground mask; the renders with neither; {frame: why} for
    the frames mismatch_IDs.txt excluded."""
    from data_pipeline.kaggle import MASK_DIRS, RENDER_DIR, render_files, scan_pairs

    if not (root / RENDER_DIR).is_dir():
        return [], [], {}
    by_frame, renders, mismatched = {}, None, {}
    for source in ("ground", "clean"):  # clean last: it wins where a frame has both
        if (root / MASK_DIRS[source]).is_dir():
            scan = scan_pairs(root, source, exclude_mismatches)
            by_frame.update({s.image: s for s in scan.samples})
            mismatched.update({f: f"listed in {scan.mismatch_file.name}" for f in scan.excluded_frames})
            unpaired = set(scan.renders_without_mask)
            renders = unpaired if renders is None else renders & unpaired
    unmasked = sorted(renders) if renders is not None else render_files(root)  # no mask folder at all
    return sorted(by_frame.values(), key=lambda s: int(s.frame)), unmasked, mismatched


def _without(groups: dict, names: list[str], root: Path, already: dict) -> tuple[dict, dict]:
    """`groups` without the samples `names` name, and {frame: "--exclude"} for them; a name of a frame
    `already` left out (mismatch_IDs.txt) is no error."""
    kept = {group: [s for s in samples if not any(_names_frame(n, s.frame) for n in names)]
            for group, samples in groups.items()}
    found = {s.frame: "--exclude" for samples in groups.values() for s in samples
             if any(_names_frame(n, s.frame) for n in names)}
    missing = [n for n in names if not any(_names_frame(n, frame) for frame in [*found, *already])]
    if missing:
        raise CliError(f"--exclude {','.join(missing)}: no render frame or real photo of that name in {root} "
                       f"(names as the results give them: a frame number such as 0034, a photo such as TCAM21)")
    return kept, found


def _names_frame(name: str, frame: str) -> bool:
    """"0034", "34" and 0034 name render frame 0034; "TCAM21" names photo TCAM21."""
    return name == frame or (name.isdigit() and frame.isdigit() and int(name) == int(frame))


# ----------------------------------------------------------------------------- scoring

def evaluate_model(model, info: dict, eval_sets: dict, device, *, image_size: tuple[int, int] | None = None,
                   keep_worst: int = 0, keep_predictions: bool = False) -> dict:
    """Score `model` on each named group of samples; {group: models.evaluation.GroupScore}.

    - model, info: as returned by `models.checkpoint.model_from_checkpoint` (info gives the input size,
      normalisation and class table; the classes must be the data set's four).
    - eval_sets: {group name: iterable of EvalSample}, e.g. `data_pipeline.load_eval_set(root, "render",
      frames=test_frames)` or the sets of `find_eval_sets`. Images are scored at their mask's own size.
    - image_size: (H, W) the model sees, overriding the checkpoint's; keep_worst: ScoredImages kept per group;
      keep_predictions: keep every predicted mask (GroupScore.predictions, in the group's order).
    Each GroupScore has .metrics (miou, rock_miou, pixel_acc, dice, iou_<class>; NaN for a class absent
    from both truth and prediction), .matrix (true x predicted pixel counts), .images, .per_image, .worst.
    A DataError (unreadable image, unknown mask colour) propagates, naming the file.
    """
    from data_pipeline import CLASS_NAMES, ROCK_CLASS_IDS
    from models.evaluation import score_group

    names = tuple(c["name"] for c in info["classes"])
    if names != CLASS_NAMES:
        raise CliError(f"the model predicts classes {names}, expected the data set's {CLASS_NAMES}")
    model.to(device)
    norm = info["normalization"]
    size = tuple(image_size or info["image_size"])
    return {group: score_group(model, samples, image_size=size, mean=norm["mean"], std=norm["std"],
                               device=device, class_names=CLASS_NAMES, rock_ids=ROCK_CLASS_IDS,
                               keep_worst=keep_worst, keep_predictions=keep_predictions)
            for group, samples in eval_sets.items()}


def flat_metrics(scores: dict, prefix: str = DEFAULT_PREFIX) -> dict[str, float]:
    """{f"{prefix}{group}_{metric}": value} for every finite metric, e.g. real_photos_iou_small_rocks."""
    return {f"{prefix}{group}_{key}": value for group, score in scores.items()
            for key, value in score.metrics.items() if math.isfinite(value)}


def _finite_or_none(value: float):
    return value if math.isfinite(value) else None


def results_json(scores: dict, eval_sets: dict, header: dict) -> dict:
    """Plain-data results: header fields plus, per group, counts, metrics (NaN -> null) and the matrix."""
    groups = {}
    for group, score in scores.items():
        sources = [s.source for s in eval_sets[group].samples] if hasattr(eval_sets[group], "samples") else []
        groups[group] = {
            "images": score.images,
            "mask_sources": {src: sources.count(src) for src in sorted(set(sources))},
            "pixels": int(score.matrix.sum()),
            "metrics": {k: _finite_or_none(v) for k, v in score.metrics.items()},
            "confusion": score.matrix.tolist(),
            "worst": [{"name": n, "miou": _finite_or_none(m)} for n, m in
                      sorted(score.per_image, key=lambda item: item[1])[:KEEP_WORST]],
        }
    return {**header, "groups": groups}


def format_table(scores: dict) -> str:
    """Metrics as rows, groups as columns; '-' where a class is absent from a group."""
    groups = list(scores)
    lines = [f"{'metric':<16}" + "".join(f"{g:>12}" for g in groups),
             f"{'images':<16}" + "".join(f"{scores[g].images:>12d}" for g in groups)]
    for key in TABLE_METRICS:
        cells = [scores[g].metrics.get(key, math.nan) for g in groups]
        lines.append(f"{key:<16}" + "".join(f"{v:>12.4f}" if math.isfinite(v) else f"{'-':>12}" for v in cells))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- figures

def plot_confusion(score, class_names, title: str, path: Path) -> None:
    """Row-normalised confusion matrix (each true class sums to 100 %), with the share in every cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = score.matrix.sum(axis=1, keepdims=True)
    share = np.divide(score.matrix, rows, out=np.zeros(score.matrix.shape), where=rows > 0)
    fig, ax = plt.subplots(figsize=(5.6, 4.8))
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ticks = range(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=30, ha="right")
    ax.set_yticks(ticks, class_names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    for t in ticks:
        for p in ticks:
            ax.text(p, t, f"{share[t, p]:.1%}", ha="center", va="center",
                    color="white" if share[t, p] > 0.5 else "black", fontsize=8)
    fig.colorbar(im, ax=ax, label="share of the true class's pixels")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_worst(score, title: str, path: Path) -> None:
    """One row per worst-scoring image: image, truth and prediction in the data set's colour code."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from data_pipeline import class_table, encode_mask

    if not score.worst:  # a blank figure would look like "nothing went wrong"
        raise ValueError(f"{path.name}: no predictions kept to show; score with evaluate_model(..., keep_worst=N)")
    rows = len(score.worst)
    # each row as tall as its widest-aspect image needs at a third of the width, plus its titles: a fixed
    # 2.6 in hid the titles of the taller (4:3) photos under the row above
    aspect = max(item.image.shape[0] / item.image.shape[1] for item in score.worst)
    fig, axes = plt.subplots(rows, 3, figsize=(10, (10 / 3 * aspect + 0.45) * rows + 0.8), squeeze=False)
    for row, item in enumerate(score.worst):
        for col, (label, picture) in enumerate((("image", item.image), ("truth", encode_mask(item.mask)),
                                                ("prediction", encode_mask(item.prediction)))):
            axes[row, col].imshow(picture)
            axes[row, col].set_title(f"{item.name} {label}" + (f" (mIoU {item.miou:.3f})" if col == 2 else ""),
                                     fontsize=9)
    for ax in axes.ravel():
        ax.axis("off")
    legend = [Patch(facecolor=[c / 255 for c in entry["color"]], edgecolor="grey", label=entry["name"])
              for entry in class_table()]
    fig.legend(handles=legend, loc="lower center", ncol=len(legend), fontsize=9)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_figures(scores: dict, out: Path, label: str) -> list[Path]:
    """confusion_<group>.png and worst_<group>.png for each group, into `out`."""
    from data_pipeline import CLASS_NAMES

    written = []
    for group, score in scores.items():
        title = f"{label}\n{group} ({score.images} images, mIoU {score.metrics['miou']:.3f})"
        plot_confusion(score, CLASS_NAMES, title, out / f"confusion_{group}.png")
        plot_worst(score, f"worst {group} predictions - {label}", out / f"worst_{group}.png")
        written += [out / f"confusion_{group}.png", out / f"worst_{group}.png"]
    return written


# ----------------------------------------------------------------------------- the command


def log_to_run(paths: RunPaths, run_id: str, scores: dict, data_root: Path, prefix: str = DEFAULT_PREFIX) -> None:
    """The flat metrics on the model's MLflow run (step 0) and a tag naming the data folder. A `prefix` metric
    of an earlier evaluation that this one does not give (a group or class absent from this folder) is
    logged NaN: the run showed the earlier data's value beside a tag naming this folder."""
    from tuner import tracking

    metrics = flat_metrics(scores, prefix)
    earlier = tracking.client(paths.tracking_uri).get_run(run_id).data.metrics
    # only this command's own names: promote's real_miou, real_iou_sky, ... on a promotion run stay
    ours = tuple(f"{prefix}{group}_" for group in (RENDERS, PHOTOS))
    stale = {k: float("nan") for k in earlier if k.startswith(ours) and k not in metrics}
    tracking.log_metrics(paths.tracking_uri, run_id, {**stale, **metrics}, step=0)
    tracking.client(paths.tracking_uri).set_tag(run_id, f"lunartune.{prefix}eval_data", str(data_root))


def _checked_image_size(info: dict, size) -> tuple[int, int] | None:
    from models import ConfigError, validate_image_size

    if size is None:
        return None
    try:
        return tuple(validate_image_size(info["model_config"], tuple(size)))
    except ConfigError as err:
        raise CliError(f"--image-size: {err}") from None


def _names(value: str | None) -> list[str]:
    """--exclude 5206,9189,TCAM21 -> ["5206", "9189", "TCAM21"]."""
    return [name.strip() for name in (value or "").split(",") if name.strip()]


def _checked_json_path(value: str | None, model: str, data: str) -> Path | None:
    """--json's file, refused before any scoring if it could not be written (a folder, a file as parent) or
    would replace an input: the model's checkpoint file, a file of the data set."""
    if not value:
        return None
    path = Path(value).expanduser().resolve()
    if path == Path(model).expanduser().resolve():
        raise CliError(f"--json {path}: is the model's checkpoint; write the results elsewhere")
    if Path(data).expanduser().resolve() in path.parents:
        raise CliError(f"--json {path}: is inside --data {Path(data).expanduser().resolve()}; write the results elsewhere")
    parent = next((p for p in path.parents if p.exists()), None)
    if path.is_dir():
        raise CliError(f"--json {path}: is a folder; expected the path of a file to write")
    if parent is not None and not parent.is_dir():
        raise CliError(f"--json {path}: {parent} is a file, not a folder")
    if parent is not None and not os.access(parent, os.W_OK):
        raise CliError(f"--json {path}: cannot write in {parent}")
    return path


def _checked_prefix(prefix: str) -> str:
    """MLflow refuses metric names outside these characters, and it said so only after the scoring and --json."""
    if not re.fullmatch(r"[\w./ :-]+", prefix):  # empty: renders_miou beside promote's test_miou, unlabelled
        raise CliError(f"--metric-prefix {prefix!r}: expected one or more letters, digits, '_', '-', '.', '/', ':' or spaces "
                       f"(MLflow's metric names)")
    return prefix


def main(args, paths: RunPaths) -> int:
    from data_pipeline import DataError
    from data_pipeline.split import write_json_atomic
    from tuner.model_spec import load_model
    from tuner.predict import check_out_folder, device_from_flag, staged_output

    device = device_from_flag(getattr(args, "device", "auto"))
    prefix = _checked_prefix(getattr(args, "metric_prefix", DEFAULT_PREFIX))
    json_path = _checked_json_path(args.json, args.model, args.data)
    if args.out:
        check_out_folder(args.out)  # before the scoring, not after it
    eval_sets, unmasked, excluded = find_eval_sets(args.data, _names(args.exclude), args.exclude_mismatches)
    for path in unmasked:
        print(f"lunartune evaluate: warning: {path} has no clean or ground mask; not scored", file=sys.stderr)
    if excluded:
        print(f"lunartune evaluate: left out {len(excluded)}: " + ", ".join(f"{name} ({why})" for name, why in excluded.items()),
              file=sys.stderr)
    model, info, resolved = load_model(args.model, paths)
    image_size = _checked_image_size(info, args.image_size)
    try:
        scores = evaluate_model(model, info, eval_sets, device, image_size=image_size,
                                keep_worst=KEEP_WORST if args.out else 0)
    except DataError as err:
        raise CliError(f"{err} (nothing was written)") from None
    header = {"model": resolved.description, "checkpoint": str(resolved.checkpoint_path), "run_id": resolved.run_id,
              "data": str(Path(args.data).expanduser().resolve()), "image_size": list(image_size or info["image_size"]),
              "device": str(device), "unscored": [str(p) for p in unmasked], "excluded": excluded}
    results = results_json(scores, eval_sets, header)
    # the JSON inside the figures' staging: if it cannot be written, --out stays as it was too
    with staged_output(Path(args.out)) if args.out else contextlib.nullcontext() as staging:
        if staging is not None:
            write_figures(scores, staging, Path(args.data).name or str(args.data))
        if json_path is not None:
            try:
                write_json_atomic(json_path, results)
            except OSError as err:
                raise CliError(f"--json {json_path}: {err.strerror or err}") from None
    logged = True
    if resolved.run_id:
        try:
            log_to_run(paths, resolved.run_id, scores, Path(header["data"]), prefix)
        except Exception as err:  # MLflow away, or the run deleted: the scores stand, and were written
            logged = False
            print(f"lunartune evaluate: warning: the scores were not logged to MLflow run {resolved.run_id} "
                  f"({type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}); "
                  f"run the command again once it can be", file=sys.stderr)
    print(format_table(scores), file=sys.stderr)
    print(json.dumps(results, indent=2))
    return 0 if logged else EXIT_INCOMPLETE
