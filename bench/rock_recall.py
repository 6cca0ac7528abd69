"""Which real rocks does a model find? Rock recall by contrast with the ground around each rock.

    python bench/rock_recall.py --model bench/results/realistic/model.pt       # saved by sim2real --save-models
    python bench/rock_recall.py --model 'models:/lunar-unet@champion' --data ../shared/data/kaggle-eval-small

Every rock of a truth mask (a connected component of the two rock classes) gets its contrast: the mean
luminance of its pixels minus that of the ground in a ring around it, over the ring's mean. Rocks are binned
darker (< -20 %), similar (within 20 %) and brighter (> +20 %); for each bin the table gives the rocks, their
share of the rock pixels, and the recall: the share of their pixels predicted as a rock of either class.
It says whether a generator teaches a model to find rocks by shape and shading or only by brightness (in the
real renders most rock pixels are "similar"). Also printed: the share of predicted rock pixels that lie on
truth ground (false rocks). Writes the numbers as JSON with --json.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

import data_pipeline as dp  # noqa: E402
from benchargs import output_file  # noqa: E402  (bench/benchargs.py)

BANDS = (("darker", -math.inf, -0.2), ("similar", -0.2, 0.2), ("brighter", 0.2, math.inf))
MIN_ROCK_PX = 10  # smaller components are snapping debris of the resampled masks, not rocks
MIN_RING_PX = 10  # a rock with less ground around it (sky, other rocks, the frame) has no contrast to speak of
GROUND = dp.CLASS_NAMES.index("ground")


def ring_width(mask: np.ndarray) -> int:
    """Ring width in pixels: ~1 % of the image width (3 px at the 282x423 eval images)."""
    return max(2, round(mask.shape[1] / 140))


def rock_components(image: np.ndarray, mask: np.ndarray):
    """Yield (window, pixels, contrast) per rock of `mask`: `pixels` is a boolean array over `window`."""
    luminance = image.astype(np.float32).mean(-1)
    rock = np.isin(mask, dp.ROCK_CLASS_IDS)
    labels, _ = ndimage.label(rock)
    width = ring_width(mask)
    for index, box in enumerate(ndimage.find_objects(labels), 1):
        window = tuple(slice(max(s.start - width, 0), s.stop + width) for s in box)
        pixels = labels[window] == index
        if pixels.sum() < MIN_ROCK_PX:
            continue
        ring = ndimage.binary_dilation(pixels, iterations=width) & (mask[window] == GROUND)
        if ring.sum() < MIN_RING_PX:
            continue
        around = float(luminance[window][ring].mean())
        yield window, pixels, (float(luminance[window][pixels].mean()) - around) / max(around, 1.0)


def band_of(contrast: float) -> str:
    return next(name for name, low, high in BANDS if low <= contrast < high)


def recall_by_contrast(samples, predictions) -> dict:
    """{band: {rocks, pixel_share, recall}, "false_rock_share": ...} over truth/prediction pairs."""
    counts = {name: np.zeros(3, np.int64) for name, _, _ in BANDS}  # rocks, pixels, pixels found
    predicted_rock = false_rock = 0
    for sample, prediction in zip(samples, predictions):
        mask = np.asarray(sample.mask)
        found = np.isin(prediction, dp.ROCK_CLASS_IDS)
        predicted_rock += int(found.sum())
        false_rock += int((found & (mask == GROUND)).sum())
        for window, pixels, contrast in rock_components(sample.image, mask):
            counts[band_of(contrast)] += (1, pixels.sum(), found[window][pixels].sum())
    total = sum(int(c[1]) for c in counts.values())
    table = {name: {"rocks": int(c[0]), "pixel_share": c[1] / total if total else math.nan,
                    "recall": c[2] / c[1] if c[1] else math.nan} for name, c in counts.items()}
    table["false_rock_share"] = false_rock / predicted_rock if predicted_rock else math.nan
    return table


def predict(model, samples, info: dict, device) -> list[np.ndarray]:
    """Class masks at each sample's own size; info as in a checkpoint (image_size, normalization)."""
    from models.inference import predict_masks

    norm = info["normalization"]
    return predict_masks(model, [s.image for s in samples], tuple(info["image_size"]), norm["mean"], norm["std"],
                         device, 4)


def format_table(tables: dict[str, dict]) -> str:
    """tables: {column label: recall_by_contrast(...)} for one evaluation set, side by side."""
    labels = list(tables)
    first = tables[labels[0]]
    lines = [f"  {'contrast':<10}{'rocks':>6}{'pixels':>8}"
             + "".join(f"{('recall ' + label).rstrip():>18}" for label in labels)]  # one model: no label
    for name, _, _ in BANDS:
        lines.append(f"  {name:<10}{first[name]['rocks']:>6}{_number(first[name]['pixel_share'], '.0%', 8)}"
                     + "".join(_number(t[name]["recall"], ".3f", 18) for t in tables.values()))
    lines.append(f"  {'predicted rock on truth ground':<24}"
                 + "".join(_number(t["false_rock_share"], ".0%", 18) for t in tables.values()))
    return "\n".join(lines)


def _number(value, spec: str, width: int) -> str:
    """A share or recall; "-" where there is none (no rocks in the band: NaN, or None once in JSON)."""
    return f"{'-':>{width}}" if value is None or not math.isfinite(value) else f"{value:>{width}{spec}}"


def main(argv=None) -> int:
    from models import ConfigError
    from models.training import resolve_device
    from tuner.cli import CliError
    from tuner.evaluate import find_eval_sets
    from tuner.model_spec import load_model
    from tuner.settings import resolve_run_paths

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="checkpoint file, MLflow run or models:/name@alias")
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "kaggle-eval-small"),
                        help="a Kaggle-layout folder with renders and/or real photos with masks")
    parser.add_argument("--run-dir", default=None, help="lunartune run dir (for MLflow specs)")
    parser.add_argument("--json", default=None, help="write the tables here")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    if args.json:  # checked before the model is loaded and run: a bad path would fail only at the end
        output_file(parser, "--json", args.json)
    try:
        device = resolve_device(args.device)
    except ConfigError as err:
        parser.error(f"--device: {err}")
    try:
        model, info, _ = load_model(args.model, resolve_run_paths(args.run_dir, None))
        eval_sets = find_eval_sets(args.data).sets
    except (CliError, dp.DataError) as err:
        parser.error(str(err))
    model.to(device)
    results = {}
    for name, samples in eval_sets.items():
        results[name] = recall_by_contrast(samples, predict(model, samples, info, device))
        print(f"\n{name} ({len(samples)} images)\n" + format_table({"": results[name]}))
    if args.json:  # NaN (a band without rocks) as null: JSON has no NaN
        finite = {name: {k: ({b: (None if isinstance(x, float) and not math.isfinite(x) else x) for b, x in v.items()}
                             if isinstance(v, dict) else (None if not math.isfinite(v) else v))
                         for k, v in table.items()} for name, table in results.items()}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(finite, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
