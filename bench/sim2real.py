"""Sim-to-real: what the realism of our scene generator buys on the real data set.

    python bench/sim2real.py                                  # the recipe below, ~16 min on 2 cores
    python bench/sim2real.py --scenes 16 --epochs 1 --size 64x96 --out /tmp/s2r   # plumbing check
    python bench/sim2real.py --styles realistic --seed 1 --out /tmp/s2r-1      # one style, another seed
    python bench/sim2real.py --seeds 0,1,2,3,4 --out /tmp/s2r-5   # the mean of five seeds, ~80 min
    python bench/sim2real.py --seeds 0,1,2,3,4,5 --jobs 8 --device cuda   # many cores and a GPU: 8 runs at a time
    python bench/sim2real.py --styles realistic --seeds 0,1,2 --loss ce_dice --out /tmp/s2r-dice   # a recipe variant
    python bench/sim2real.py --seeds 5,6 --out /tmp/s2r-56          # more seeds later, then one result of all:
    python bench/sim2real.py --merge /tmp/s2r-5/sim2real.json /tmp/s2r-56/sim2real.json --out /tmp/s2r-7

One fixed recipe - smp U-Net VGG11, no pretrained weights, dropout 0.1, AdamW lr 1e-3, batch 8, cross-entropy,
6 epochs, 400 training scenes generated at the data set's 720x480 and resized to 128x192 (its 2:3 aspect; 60 more
scenes are generated for the own-domain val split) - is trained twice, side by side: on
`synth.generate(style="realistic")` scenes and on the flat `style="simple"` baseline.
Each model is then scored with `tuner.evaluate.evaluate_model` (the code of `lunartune evaluate`) on the
real renders and real photos of ../shared/data/kaggle-eval-small and kaggle-fullsize-eval, and on its own
generator's validation split (in-domain). Prints a per-class table (realistic | simple | gain), writes
<out>/sim2real.json, <out>/sim2real_scenes.png (real renders beside generated scenes of both styles) and,
per style, <out>/<style>/confusion_*.png and worst_*.png (the worst predictions on each real set).
A second table gives, per real set, the rock recall by contrast with the surrounding ground
(bench/rock_recall.py: does the model find real rocks by shape and shading, or only when they are brighter?);
--save-models keeps each model as <out>/<style>/model.pt for `lunartune evaluate` or rock_recall.py.
With both styles the table gives the gain paired by seed (mean, sd, standard error), and a last table judges
the issue's TARGETS on the mean over the seeds; --merge combines the JSON of several runs of the recipe.
The real data is only ever evaluated on, never trained on.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

import data_pipeline as dp  # noqa: E402
from data_pipeline.synth import MANIFEST_VERSION, generate, render_scene  # noqa: E402
import rock_recall  # noqa: E402  (bench/rock_recall.py, beside this file)
from benchargs import int_at_least, output_dir  # noqa: E402  (bench/benchargs.py)
from models import ConfigError, ModelConfig, TrainConfig, build, validate_image_size  # noqa: E402
from models.checkpoint import save_checkpoint  # noqa: E402
from models.config import LOSSES  # noqa: E402
from models.losses import make_loss  # noqa: E402
from models.training import evaluate, make_optimizer, resolve_device, seed_everything, train_one_epoch  # noqa: E402
from tuner.cli import CliError, _size  # noqa: E402  (the CLI's own N / HxW parser)
from data_pipeline.split import write_json_atomic  # noqa: E402
from tuner.evaluate import KEEP_WORST, evaluate_model, find_eval_sets, write_figures  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
SHARED_DATA = REPO.parent / "shared" / "data"
EVAL_FOLDERS = ("kaggle-eval-small", "kaggle-fullsize-eval")
STYLES = ("realistic", "simple")
SCENE_SIZE = (480, 720)  # (H, W) scenes are generated at: the real renders' own size
SEED = 0  # default --seed: scenes, split, initial weights and batch order; both styles get the same ones
SHOWN = 4  # scenes per row of sim2real_scenes.png
RECIPE_LOSS = "ce"  # the recipe's; --loss measures another (a variant of the recipe, recorded in the JSON)
OWN_VAL_SHARE = 0.15  # own-domain val scenes generated on top of the training scenes, as a share of them
OWN_VAL = "synthetic-val"  # each model's score on its own generator's val scenes: two sets, so no paired gain
# Batches of 8 and a lone last image dropped (it breaks BatchNorm): one training scene gives no batch at all.
MIN_SCENES = 2
# What training really runs: train_one_epoch and evaluate are called without amp/channels_last, so fp32 and
# the default memory format on any device. The recipe records these, not TrainConfig's CUDA defaults.
WHAT_RUNS = {"amp": False, "channels_last": False}
TABLE_METRICS = ("iou_ground", "iou_sky", "iou_small_rocks", "iou_large_rocks", "miou", "rock_miou", "pixel_acc")
# The issue's targets (README, "How well generated scenes transfer"): (eval set, metric, of what, comparison,
# threshold). "gain" is realistic minus simple, paired by seed; "realistic" is the realistic model's score.
TARGETS = (
    ("kaggle-eval-small/renders", "miou", "gain", ">=", 0.15),
    ("kaggle-eval-small/renders", "iou_small_rocks", "realistic", ">", 0.25),
    ("kaggle-eval-small/renders", "iou_large_rocks", "realistic", ">", 0.25),
    ("kaggle-eval-small/photos", "miou", "realistic", ">=", 0.50),
    ("kaggle-eval-small/photos", "iou_small_rocks", "realistic", ">", 0.20),
    ("kaggle-eval-small/photos", "iou_large_rocks", "realistic", ">", 0.20),
)


def recipe(epochs: int, seed: int = SEED, loss: str = RECIPE_LOSS) -> tuple[ModelConfig, TrainConfig]:
    model = ModelConfig(backbone="vgg11", arch="unet", encoder_weights="none", dropout=0.1)
    train = TrainConfig(epochs=epochs, batch_size=8, lr=1e-3, optimizer="adamw", loss=loss, seed=seed, **WHAT_RUNS)
    return model, train


def train_on(style: str, scenes: int, epochs: int, size: tuple[int, int], workdir: Path, device,
             seed: int = SEED, workers: int = 0, loss: str = RECIPE_LOSS) -> tuple:
    """(model, metrics on the generator's own val split, seconds) for one generator style; `workers` processes
    generate the scenes (0: every core)."""
    val_scenes = own_val_scenes(scenes)
    root = generate(workdir / f"{style}-{scenes}-seed{seed}", scenes + val_scenes, seed, size=SCENE_SIZE,
                    style=style, workers=workers, progress=False)
    # all `scenes` train (the recipe's 400); the extra ones are the own-domain val split, no test split
    loaders = dp.make_loaders(dp.DataConfig(root=str(root), image_size=size, batch_size=8, seed=seed, progress=False,
                                            val_fraction=val_scenes / (scenes + val_scenes), test_fraction=0.0))
    assert loaders.split_sizes["train"] == scenes, loaders.split_sizes
    model_cfg, train_cfg = recipe(epochs, seed, loss)
    seed_everything(seed)
    model = build(model_cfg).to(device)
    loss_fn = make_loss(train_cfg, loaders.class_frequencies).to(device)  # weighted_ce: its weights on the device
    optimizer = make_optimizer(model, train_cfg)
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        stats = train_one_epoch(model, loaders.train, optimizer, loss_fn, device, epoch=epoch,
                                bn_batches=train_cfg.bn_recalibration_batches)
        print(f"  {style} seed {seed}: epoch {epoch}/{epochs} loss {stats['loss']:.4f} ({stats['seconds']:.0f} s)", file=sys.stderr)
    seconds = time.perf_counter() - start
    val = evaluate(model, loaders.val, device, loss_fn, dp.CLASS_NAMES, dp.ROCK_CLASS_IDS)
    val = {"images": loaders.split_sizes["val"], **{k: v for k, v in val.items() if k != "loss"}}
    return model, val, seconds


def own_val_scenes(scenes: int) -> int:
    """Scenes generated beside the training scenes to score the model on its own generator (15 % more)."""
    return max(2, round(OWN_VAL_SHARE * scenes))


def real_eval_sets(data: Path) -> dict:
    """{"kaggle-eval-small/renders": EvalSet, ...} for every folder of EVAL_FOLDERS present."""
    sets = {}
    for folder in EVAL_FOLDERS:
        groups = find_eval_sets(data / folder).sets
        sets.update({f"{folder}/{group}": samples for group, samples in groups.items()})
    return sets


def score(model, size: tuple[int, int], eval_sets: dict, device, figures: Path, label: str) -> dict:
    """Metrics per evaluation set; confusion matrices and worst predictions go to `figures` (look at them)."""
    info = {"classes": dp.class_table(), "image_size": list(size),
            "normalization": {"mean": dp.IMAGENET_MEAN, "std": dp.IMAGENET_STD}}
    scores = evaluate_model(model, info, eval_sets, device, keep_worst=KEEP_WORST, keep_predictions=True)
    figures.mkdir(parents=True, exist_ok=True)
    write_figures({name.replace("/", "-"): s for name, s in scores.items()}, figures, label)
    return {name: {"images": s.images, **s.metrics, "worst": [item.name for item in s.worst],
                   "rock_recall": rock_recall.recall_by_contrast(eval_sets[name], s.predictions)}
            for name, s in scores.items()}


def save_model(model, size: tuple[int, int], epochs: int, seed: int, loss: str, val: dict, path: Path) -> Path:
    """A lunartune checkpoint (`lunartune evaluate --model PATH`, `bench/rock_recall.py --model PATH`)."""
    model_cfg, train_cfg = recipe(epochs, seed, loss)
    return save_checkpoint(path, model, model_cfg, train_cfg, classes=dp.class_table(), image_size=size,
                           normalization={"mean": dp.IMAGENET_MEAN, "std": dp.IMAGENET_STD}, epoch=epochs,
                           metrics={k: v for k, v in val.items() if isinstance(v, float)})


def clean_all(value):
    """NaN/inf -> None (JSON has neither), inside dicts too."""
    if isinstance(value, dict):
        return {k: clean_all(v) for k, v in value.items()}
    return None if isinstance(value, float) and not math.isfinite(value) else value


def format_recall(results: dict) -> str:
    """Per real set: rock recall by contrast with the surrounding ground, the styles side by side."""
    styles = [s for s in STYLES if s in results]
    lines = ["\nrock recall by contrast with the ground around each real rock (bench/rock_recall.py)"]
    for name, first in results[styles[0]]["scores"].items():
        if "rock_recall" in first:
            lines.append(f"\n{name}\n" + rock_recall.format_table(
                {style: results[style]["scores"][name]["rock_recall"] for style in styles}))
    return "\n".join(lines) if len(lines) > 1 else ""  # none: runs merged from JSON without recall


def format_table(results: dict) -> str:
    """One block per evaluation set: metric | realistic | simple | gain (realistic - simple); with several
    seeds the metrics are their means and a last row gives each seed's mIoU."""
    lines = []
    styles = [s for s in STYLES if s in results]
    first = results[styles[0]]["scores"]
    seeds = results.get("seeds", [])
    loss = results.get("recipe", {}).get("loss", RECIPE_LOSS)
    if loss != RECIPE_LOSS:
        lines.append(f"a variant of the recipe: loss {loss} (the recipe's: {RECIPE_LOSS})")
    if "generator" in results.get("recipe", {}):
        lines.append(f"generated scenes: {results['recipe']['generator']}")
    if len(seeds) > 1:
        lines.append(f"mean over seeds {', '.join(map(str, seeds))}")
    for name in first:
        lines.append(f"\n{name} ({first[name]['images']} images)")
        lines.append(f"  {'metric':<16}{'realistic':>11}{'simple':>11}{'gain':>9}")
        for key in TABLE_METRICS:
            a, b = (results[s]["scores"][name][key] if s in results else None for s in STYLES)
            gain = a - b if a is not None and b is not None and name != OWN_VAL else None
            lines.append(f"  {key:<16}" + "".join("         -" if v is None else f"{v:>11.4f}" for v in (a, b))
                         + ("        -" if gain is None else f"{gain:>+9.4f}"))
        if "per_seed" in results:
            lines.append("  miou per seed   " + "   ".join(
                f"{style} " + " / ".join(f"{runs[style]['scores'][name]['miou']:.3f}"
                                         for runs in results["per_seed"].values()) for style in styles))
            gain = results.get("gain", {}).get(name, {}).get("miou")
            if gain and gain["se"] is not None:
                lines.append("  miou gain       " + " / ".join(f"{g:+.3f}" for g in gain["per_seed"])
                             + f"   mean {gain['mean']:+.3f}, sd {gain['sd']:.3f}, se {gain['se']:.3f} (paired by seed)")
    return "\n".join(lines)


def format_targets(results: dict) -> str:
    """The issue's targets, each judged on the mean over the seeds (with its standard error)."""
    checks = results.get("targets", [])
    if not checks:
        return ""
    lines = [f"\ntargets (mean over {checks[0]['seeds']} seed(s); se = standard error of that mean)",
             f"  {'eval set':<28}{'metric':<17}{'of':<11}{'target':>8}{'value':>9}{'se':>7}  verdict"]
    for c in checks:
        se = "-" if c["se"] is None else f"{c['se']:.3f}"
        lines.append(f"  {c['set']:<28}{c['metric']:<17}{c['of']:<11}{c['target']:>8}{c['value']:>9.3f}{se:>7}  "
                     + ("met" if c["met"] else "NOT met"))
    return "\n".join(lines)


def scene_grid(eval_sets: dict, size: tuple[int, int], path: Path, seed: int = SEED) -> Path:
    """Rows: real renders, generated realistic, generated simple (image above its mask), SHOWN columns."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    real = eval_sets.get("kaggle-eval-small/renders") or next(iter(eval_sets.values()))
    picks = np.linspace(0, len(real) - 1, SHOWN).astype(int)
    rows = {"real render": [(real[int(i)].image, real[int(i)].mask) for i in picks]}
    for style in STYLES:
        scenes = [render_scene(seed, i + 1, SCENE_SIZE, style) for i in range(SHOWN)]
        rows[f"generated {style}"] = [(s.image, s.mask) for s in scenes]
    fig, axes = plt.subplots(2 * len(rows), SHOWN, figsize=(3 * SHOWN, 2.1 * 2 * len(rows)), squeeze=False)
    for r, (label, pairs) in enumerate(rows.items()):
        for c, (image, mask) in enumerate(pairs):
            for k, picture in enumerate((dp.resize_image(image, size), dp.encode_mask(dp.resize_mask(mask, size)))):
                ax = axes[2 * r + k, c]
                ax.imshow(picture)
                ax.set_xticks([])
                ax.set_yticks([])
            if c == 0:
                axes[2 * r, 0].set_ylabel(label, fontsize=10)
                axes[2 * r + 1, 0].set_ylabel("its mask", fontsize=9)
    fig.suptitle(f"real renders vs generated scenes, as the model sees them ({size[0]}x{size[1]})", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def run(args) -> dict:
    """Train and score every style at every seed. With several seeds each seed's results and figures go to
    <out>/seed<N>/ and results[style] holds the mean over seeds (results["per_seed"] the rest)."""
    device = resolve_device(args.device)
    eval_sets = real_eval_sets(Path(args.data))
    model_cfg, train_cfg = recipe(args.epochs, args.seeds[0], args.loss)
    results = {"recipe": {**model_cfg.to_dict(), **train_cfg.to_dict(), "scenes": args.scenes,
                          "own_val_scenes": own_val_scenes(args.scenes),
                          "image_size": list(args.size), "scene_size": list(SCENE_SIZE),
                          # scenes of another generator version are another experiment: --merge refuses them
                          "generator": f"MANIFEST_VERSION {MANIFEST_VERSION}"},
               "seeds": list(args.seeds),
               "machine": {"python": platform.python_version(), "torch": torch.__version__, "device": str(device),
                           "threads": torch.get_num_threads(), "jobs": args.jobs}}
    out = Path(args.out)
    with tempfile.TemporaryDirectory(prefix="sim2real-") as tmp:
        workdir = Path(args.workdir) if args.workdir else Path(tmp)
        runs = [(seed, style) for seed in args.seeds for style in args.styles]
        done = run_all(args, runs, eval_sets, device, workdir)
    summarise(results, {str(seed): {style: done[seed, style] for style in args.styles} for seed in args.seeds})
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "sim2real.json", results)
    scene_grid(eval_sets, args.size, out / "sim2real_scenes.png", args.seeds[0])
    return results


def summarise(results: dict, per_seed: dict) -> dict:
    """Fill `results` from {seed: {style: run}}: each style's mean over the seeds, per_seed (with several),
    the realistic-minus-simple gain paired by seed, and the targets check."""
    styles = [style for style in STYLES if all(style in runs for runs in per_seed.values())]
    for style in styles:
        results[style] = mean_tree([runs[style] for runs in per_seed.values()])
    if len(per_seed) > 1:
        results["per_seed"] = per_seed
    if set(STYLES) <= set(styles):
        results["gain"] = {name: paired_gain(per_seed, name) for name in results[STYLES[0]]["scores"]
                           if name != OWN_VAL}
    results["targets"] = check_targets(per_seed)
    return results


def spread(values: list[float]) -> dict:
    """Mean, sample standard deviation and standard error of the mean (None below two values)."""
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return {"n": n, "mean": mean, "sd": sd, "se": sd / math.sqrt(n) if sd is not None else None}


def seed_values(per_seed: dict, name: str, metric: str, of: str) -> list[float]:
    """One value per seed: a style's score, or with of="gain" realistic minus simple (same seed: same initial
    weights and batch order, so the pairing removes much of the seed-to-seed noise)."""
    values = []
    for runs in per_seed.values():
        realistic, simple = (runs[style]["scores"].get(name, {}).get(metric) if style in runs else None
                             for style in STYLES)
        value = realistic if of == "realistic" else None if None in (realistic, simple) else realistic - simple
        if value is not None:
            values.append(value)
    return values


def paired_gain(per_seed: dict, name: str, metric: str = "miou") -> dict:
    """The realistic-minus-simple gain on one eval set: each seed's, and their spread."""
    gains = seed_values(per_seed, name, metric, "gain")
    return {metric: {"per_seed": gains, **spread(gains)}} if gains else {}


def check_targets(per_seed: dict) -> list[dict]:
    """Each target of TARGETS this run can judge (it has the eval set and the styles): value is the mean over
    the seeds, se its standard error, met compares the mean with the threshold."""
    checks = []
    for name, metric, of, op, threshold in TARGETS:
        values = seed_values(per_seed, name, metric, of)
        if values:
            s = spread(values)
            mean = round(s["mean"], 9)  # a gain of 0.15 summed from floats must not read as 0.1499999
            met = mean >= threshold if op == ">=" else mean > threshold
            checks.append({"set": name, "metric": metric, "of": of, "target": f"{op} {threshold}",
                           "value": s["mean"], "se": s["se"], "seeds": s["n"], "met": met})
    return checks


def merge(files: list[Path]) -> dict:
    """One result from several runs of the same recipe (other seeds, other days, other machines), as if run
    together: each (seed, style) may come from any file but only once, and every seed needs the same styles."""
    runs, recipe_, machines = {}, None, []
    for path in files:
        try:
            text = Path(path).read_text()
        except OSError as err:
            raise ValueError(f"--merge {path}: cannot read it ({err.strerror})") from None
        try:
            data = json.loads(text)
            recipe_of_file = {k: v for k, v in data["recipe"].items() if k != "seed"}
            # files written before the recipe recorded WHAT_RUNS say amp/channels_last true, TrainConfig's
            # defaults, though their training ran as it does now: read them as what ran
            recipe_of_file.update({k: v for k, v in WHAT_RUNS.items() if k in recipe_of_file})
            seeds = data["seeds"]
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"--merge {path}: not a sim2real.json ({type(err).__name__}: {err})") from None
        if recipe_ is None:
            recipe_ = recipe_of_file
        elif recipe_of_file != recipe_:
            differ = sorted(k for k in set(recipe_) | set(recipe_of_file) if recipe_.get(k) != recipe_of_file.get(k))
            raise ValueError(f"--merge {path}: another recipe ({', '.join(differ)} differ): not one experiment")
        per_seed = data.get("per_seed") or {str(seeds[0]): {s: data[s] for s in STYLES if s in data}}
        for seed, styles in per_seed.items():
            for style, run in styles.items():
                if (seed, style) in runs:
                    raise ValueError(f"--merge {path}: seed {seed} of style {style} is in an earlier file too")
                runs[seed, style] = run
        machines.append({"file": str(path), "seeds": seeds, **data.get("machine", {})})
    seeds = sorted({seed for seed, _ in runs}, key=int)
    styles = [s for s in STYLES if any(style == s for _, style in runs)]
    for seed in seeds:
        missing = [s for s in styles if (seed, s) not in runs]
        if missing:
            raise ValueError(f"--merge: seed {seed} lacks style {', '.join(missing)} (every seed needs the same styles)")
    results = {"recipe": {**recipe_, "seed": int(seeds[0])}, "seeds": [int(s) for s in seeds], "merged_from": machines}
    return summarise(results, {seed: {s: runs[seed, s] for s in styles} for seed in seeds})


def run_all(args, runs: list[tuple[int, str]], eval_sets: dict, device, workdir: Path) -> dict:
    """{(seed, style): results} for every run: one after another, or --jobs at a time in worker processes
    that share the cores (each generates with, and gives torch, cpu_count // jobs of them) and the device."""
    def seed_out(seed: int) -> Path:
        return Path(args.out) if len(args.seeds) == 1 else Path(args.out) / f"seed{seed}"

    if args.jobs == 1:
        return {(seed, style): train_and_score(args, style, seed, eval_sets, device, workdir, seed_out(seed))
                for seed, style in runs}
    cores = max(1, (os.cpu_count() or 1) // args.jobs)
    # spawn: a fresh interpreter per run, so no worker inherits the CUDA state or torch threads of another
    with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn"), max_tasks_per_child=1) as pool:
        futures = {(seed, style): pool.submit(train_and_score_alone, args, style, seed, workdir, seed_out(seed), cores)
                   for seed, style in runs}
        return {run: future.result() for run, future in futures.items()}


def train_and_score_alone(args, style: str, seed: int, workdir: Path, out: Path, cores: int) -> dict:
    """train_and_score in a worker process of run_all, on its share of the cores."""
    torch.set_num_threads(cores)
    return train_and_score(args, style, seed, real_eval_sets(Path(args.data)), resolve_device(args.device),
                           workdir, out, workers=cores)


def train_and_score(args, style: str, seed: int, eval_sets: dict, device, workdir: Path, out: Path,
                    workers: int = 0) -> dict:
    model, val, seconds = train_on(style, args.scenes, args.epochs, args.size, workdir, device, seed, workers,
                                   args.loss)
    scores = {OWN_VAL: val}
    scores.update(score(model, args.size, eval_sets, device, out / style, f"trained on {args.scenes} {style} scenes"))
    if args.save_models:
        save_model(model, args.size, args.epochs, seed, args.loss, val, out / style / "model.pt")
    return {"train_seconds": round(seconds, 1),
            "scores": {n: {k: clean_all(v) for k, v in m.items()} for n, m in scores.items()}}


def mean_tree(trees: list):
    """The element-wise mean of same-shaped results: numbers averaged (over the seeds that have one; None where
    none has, e.g. no rock in a band), anything else (names of the worst images) taken from the first seed."""
    first = trees[0]
    if isinstance(first, dict):
        return {key: mean_tree([tree[key] for tree in trees]) for key in first}
    if first is not None and not isinstance(first, (int, float)):
        return first
    numbers = [t for t in trees if t is not None]
    if not numbers:
        return None
    return first if all(n == first for n in numbers) else sum(numbers) / len(numbers)  # counts stay ints


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a seed or comma-separated seeds such as 0,1,2, got {text!r}")
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"a seed appears twice in {text!r}")
    return seeds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes", type=int_at_least(MIN_SCENES), default=400,
                        help=f"training scenes per style, at least {MIN_SCENES} (15 %% more are generated for the "
                             "own-domain val split)")
    parser.add_argument("--epochs", type=int_at_least(1), default=6)
    parser.add_argument("--size", type=_size, default=(128, 192), help="training size HxW (multiples of 32)")
    parser.add_argument("--out", default=str(RESULTS), help="folder for sim2real.json and sim2real_scenes.png")
    parser.add_argument("--data", default=str(SHARED_DATA), help=f"folder holding {' and '.join(EVAL_FOLDERS)}")
    parser.add_argument("--workdir", default=None, help="keep the generated scenes here (default: a temp folder)")
    parser.add_argument("--styles", type=lambda v: v.split(","), default=list(STYLES),
                        help="comma-separated generator styles to train (default: realistic,simple side by side)")
    parser.add_argument("--seed", "--seeds", dest="seeds", type=_seeds, default=[SEED],
                        help="scenes, split, initial weights and batch order; a comma-separated list (0,1,2) "
                             "trains every style once per seed and reports the mean and each seed's mIoU")
    parser.add_argument("--loss", choices=LOSSES, default=RECIPE_LOSS,
                        help=f"training loss (default {RECIPE_LOSS}, the recipe's); another one measures a variant "
                             "of the recipe, recorded as such in the JSON (--merge will not mix them)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs (seed x style) trained at once, each in its own process with an equal share of "
                             "the cores; worth it with a GPU or many cores (default 1: one after another)")
    parser.add_argument("--save-models", action="store_true",
                        help="also write <out>/<style>/model.pt (a lunartune checkpoint, ~70 MB each)")
    parser.add_argument("--merge", nargs="+", metavar="JSON", type=Path,
                        help="train nothing: combine the sim2real.json of several runs of one recipe (disjoint "
                             "seeds, or the other style of a seed) into <out>/sim2real.json, tables and targets")
    args = parser.parse_args(argv)
    output_dir(parser, "--out", args.out)  # a file there would fail only after the training
    if args.merge:
        return merge_and_report(parser, args.merge, Path(args.out))
    try:  # arguments first, then the data: a bad flag is reported wherever the data is
        validate_image_size(recipe(args.epochs)[0], args.size)
    except ConfigError as err:
        parser.error(f"--size: {err}")
    if args.jobs < 1:
        parser.error(f"--jobs: expected an integer >= 1, got {args.jobs}")
    unknown = [s for s in args.styles if s not in STYLES]
    if unknown:
        parser.error(f"--styles: unknown {', '.join(unknown)}; expected some of {', '.join(STYLES)}")
    if args.workdir:
        output_dir(parser, "--workdir", args.workdir)
    try:
        resolve_device(args.device)
    except ConfigError as err:
        parser.error(f"--device: {err}")
    missing = [f for f in EVAL_FOLDERS if not (Path(args.data) / f).is_dir()]
    if missing:
        parser.error(f"{args.data}: lacks {', '.join(missing)} (the shared real data; see --data)")
    try:
        results = run(args)
    except (CliError, ConfigError, dp.DataError) as err:  # e.g. unreadable real data: one line, no traceback
        print(f"sim2real.py: {err}", file=sys.stderr)
        return 1
    report(results)
    print(f"\nwrote {Path(args.out) / 'sim2real.json'} and {Path(args.out) / 'sim2real_scenes.png'}", file=sys.stderr)
    return 0


def merge_and_report(parser, files: list[Path], out: Path) -> int:
    try:
        results = merge(files)
    except ValueError as err:
        parser.error(str(err))
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "sim2real.json", results)
    report(results)
    print(f"\nwrote {out / 'sim2real.json'} (merged from {len(files)} runs)", file=sys.stderr)
    return 0


def report(results: dict) -> None:
    print(format_table(results))
    print(format_recall(results))
    print(format_targets(results))


if __name__ == "__main__":
    sys.exit(main())
