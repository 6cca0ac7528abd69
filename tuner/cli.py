"""`lunartune` command line: argument parsing only.

Each subcommand's handler imports its heavy modules (torch, ray, mlflow) inside itself so that
`lunartune --help` answers instantly; the handler turns the parsed arguments into the module's frozen
config in one place and calls it.
"""
from __future__ import annotations

import argparse
import importlib
import os
import re
import signal
import sys
import threading
from typing import Callable, Sequence

from tuner.settings import RUN_DIR_ENV, TRACKING_URI_ENV, RunDirError, resolve_run_paths

EXIT_ERROR = 1  # a clear, expected error (bad input, missing data, ...)
EXIT_INCOMPLETE = 3  # the sweep finished but MLflow missed part of it (server away): `tune --resume` fills it in
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report it


class CliError(Exception):
    """An expected failure: printed as one clear line, exit code EXIT_ERROR (or .code)."""

    def __init__(self, message: str, code: int = EXIT_ERROR):
        super().__init__(message)
        self.code = code


MAX_IMAGE_SIDE = 8192  # the data set's images are 720 x 480; 8192 leaves room for any real camera


def _size(text: str) -> tuple[int, int]:
    """'128' -> (128, 128); '128x192' -> (128, 192) as HEIGHTxWIDTH."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or HxW (e.g. 128 or 128x192), got {text!r}")
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) <= 0:
        raise argparse.ArgumentTypeError(f"expected N or HxW with positive sizes, got {text!r}")
    if max(parts) > MAX_IMAGE_SIDE:  # a typo's 80000 asked for a 77 GB tensor, or a 240 GB decode cache
        raise argparse.ArgumentTypeError(f"expected sizes of at most {MAX_IMAGE_SIDE} px per side, got {text!r}")
    return parts[0], parts[1]


def _wxh(text: str) -> tuple[int, int]:
    """'720x480' (WIDTHxHEIGHT, as image sizes are usually written) -> (480, 720) as (H, W)."""
    try:
        h_w = _size(text)
    except argparse.ArgumentTypeError as err:  # _size's words, for the other order
        raise argparse.ArgumentTypeError(str(err).replace("HxW (e.g. 128 or 128x192)", "WIDTHxHEIGHT (e.g. 720x480)")
                                         .replace("N or HxW", "WIDTHxHEIGHT")) from None
    return h_w[1], h_w[0]


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration_seconds(text: str) -> float:
    """'90' or '90s' -> 90; '30m' -> 1800; '1h30m' -> 5400; '1.5h' -> 5400. Positive and finite."""
    parts = re.findall(r"(\d+(?:\.\d*)?|\.\d+)([smhd]?)", text.strip().lower())
    spelled = "".join(number + unit for number, unit in parts)
    if not parts or spelled != text.strip().lower() or (len(parts) > 1 and not all(u for _, u in parts)):
        raise argparse.ArgumentTypeError(f"expected a duration such as 90s, 30m, 2h or 1h30m, got {text!r}")
    seconds = sum(float(number) * _DURATION_UNITS[unit or "s"] for number, unit in parts)
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a duration above 0, got {text!r}")
    return seconds


def shown_duration(seconds: float) -> str:
    """5400 -> '1h30m', 90 -> '1m30s', 2.5 -> '2.5s': how durations are printed back."""
    whole, rest = divmod(seconds, 1)
    if rest:
        return f"{seconds:g}s"
    hours, minutes, secs = int(whole) // 3600, int(whole) % 3600 // 60, int(whole) % 60
    return "".join(f"{n}{u}" for n, u in ((hours, "h"), (minutes, "m"), (secs, "s")) if n) or "0s"


def _add_common(p: argparse.ArgumentParser, suppress: bool) -> None:
    default = argparse.SUPPRESS if suppress else None
    p.add_argument("--run-dir", default=default,
                   help=f"where every output goes (default ./lunartune-runs, env {RUN_DIR_ENV})")
    p.add_argument("--tracking-uri", default=default,
                   help=f"MLflow tracking URI (default sqlite:///<run-dir>/mlflow.db, env {TRACKING_URI_ENV})")


def _data_parser(sub) -> None:
    data = sub.add_parser("data", help="generate or check a data set in the Kaggle layout")
    # made like the commands (--run-dir and --tracking-uri after `data synth|check` too, defaults in --help)
    dsub = data.add_subparsers(dest="data_command", metavar="{synth,check}", required=True,
                               parser_class=sub._parser_class)
    synth = dsub.add_parser("synth", help="write procedural lunar scenes in the Kaggle layout")
    synth.add_argument("--out", required=True, help="output folder (gets images/render, images/clean, ...)")
    synth.add_argument("--count", type=int, default=200, help="number of scenes (default 200)")
    synth.add_argument("--seed", type=int, default=0, help="same seed, same scenes (default 0)")
    synth.add_argument("--size", type=_wxh, default=(480, 720), help="WIDTHxHEIGHT, 48 to 8192 px per side, or N for NxN (default 720x480; "
                       "note: --image-size elsewhere is HxW)")
    synth.add_argument("--style", choices=["realistic", "simple"], default="realistic",
                       help="'simple' is the flat baseline generator used by bench/sim2real.py")
    synth.add_argument("--workers", type=int, default=0, help="processes (default 0: all cores)")
    synth.set_defaults(handler="tuner.data_commands:synth")
    check = dsub.add_parser("check", help="validate a data set: counts, class balance, problems")
    check.add_argument("path", help="folder in the Kaggle layout")
    check.add_argument("--mask-source", choices=["clean", "ground"], default="clean",
                       help="which Kaggle masks to check: clean (default) or ground")
    check.add_argument("--allow-missing", action="store_true", help="skip renders without masks (and vice versa)")
    check.add_argument("--exclude-mismatches", action="store_true", help="drop frames in mismatch_IDs.txt")
    check.set_defaults(handler="tuner.data_commands:check")


def _train_args(p: argparse.ArgumentParser) -> None:
    """Flags shared by `train` (one config) and `tune` (fixed values outside the search space)."""
    p.add_argument("--data", default="synthetic",
                   help="Kaggle-layout folder, or 'synthetic' to generate scenes (default synthetic)")
    p.add_argument("--synthetic-count", type=int, default=None,
                   help="scenes to generate for --data synthetic (default 200; refused with a folder)")
    p.add_argument("--image-size", type=_size, default=(64, 64), help="training size N or HxW (default 64)")
    p.add_argument("--mask-source", choices=["clean", "ground"], default="clean",
                   help="which Kaggle masks label the renders: clean (default) or ground")
    p.add_argument("--allow-missing", action="store_true", help="skip renders without masks (and vice versa)")
    p.add_argument("--exclude-mismatches", action="store_true", help="drop frames in mismatch_IDs.txt")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes (default 0)")


def _train_parser(sub) -> None:
    p = sub.add_parser("train", help="train one configuration without Ray")
    _train_args(p)
    p.add_argument("--backbone", default="vgg11", help="model name from the registry (default vgg11; see models.available_backbones)")
    p.add_argument("--arch", default="unet", help="smp architecture: unet (default), unetplusplus, fpn, deeplabv3plus, linknet")
    p.add_argument("--encoder-weights", default="none", help="none | imagenet | PATH to a weights file")
    p.add_argument("--dropout", type=float, default=0.0, help="dropout before the segmentation head (default 0)")
    p.add_argument("--epochs", type=int, default=2, help="passes over the training split (default 2)")
    p.add_argument("--batch-size", type=int, default=8, help="images per step (default 8)")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (default 1e-3)")
    p.add_argument("--optimizer", default="adamw", choices=["adam", "adamw", "sgd"], help="default adamw")
    p.add_argument("--momentum", type=float, default=0.9, help="sgd only")
    p.add_argument("--nesterov", action="store_true", help="sgd only")
    p.add_argument("--weight-decay", type=float, default=0.0, help="default 0")
    p.add_argument("--loss", default="ce", help="ce (default) | weighted_ce | dice | ce_dice | focal")
    p.add_argument("--lr-schedule", default="none", choices=["none", "cosine", "onecycle"],
                   help="over the whole run (default none: constant)")
    p.add_argument("--bn-recalibration-batches", type=int, default=50,
                   help="after each epoch, recompute BatchNorm statistics over this many train batches (0 = off)")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True,
                   help="horizontal flips and brightness/contrast jitter of training images (default on)")
    p.add_argument("--seed", type=int, default=0, help="split, initial weights and batch order (default 0)")
    p.add_argument("--out", default=None, help="checkpoint folder (default <run-dir>/train/<backbone>)")
    p.set_defaults(handler="tuner.train:main")


def _tune_parser(sub) -> None:
    p = sub.add_parser("tune", help="hyperparameter sweep: Ray Tune + Optuna + ASHA, tracked in MLflow")
    _train_args(p)
    p.add_argument("--space", default="default",
                   help="search space: a name in search_spaces/ or a YAML path (default: search_spaces/default.yaml)")
    p.add_argument("--samples", type=int, default=8, help="number of trials")
    p.add_argument("--max-epochs", type=int, default=4, help="epochs of a trial that is never stopped")
    p.add_argument("--grace-epochs", type=int, default=1, help="ASHA: epochs before a trial may be stopped")
    p.add_argument("--reduction-factor", type=int, default=2, help="ASHA reduction factor")
    p.add_argument("--no-asha", action="store_true", help="run every trial to --max-epochs (for comparisons)")
    p.add_argument("--concurrency", type=int, default=2, help="trials running at once")
    p.add_argument("--cpus-per-trial", type=float, default=1.0, help="Ray CPUs each trial reserves")
    p.add_argument("--gpus-per-trial", type=float, default=0.0, help="fractions allowed, e.g. 0.5")
    p.add_argument("--objective", default="val_miou", choices=["val_miou", "val_rock_miou"],
                   help="validation score Optuna, ASHA and promote maximise")
    p.add_argument("--seed", type=int, default=0, help="seeds Optuna's sampler and every trial")
    p.add_argument("--time-budget", type=duration_seconds, default=None, metavar="DURATION",
                   help="end the sweep after this long (90s, 30m, 2h, 1h30m): trials then running end "
                        "unfinished, the rest never start (default: no limit)")
    p.add_argument("--startup-trials", type=int, default=None,
                   help="random trials before TPE models the study (default: a third of --samples, 2 to 10)")
    p.add_argument("--address", default=None,
                   help="join a Ray cluster: auto | HOST:PORT; local: a private local Ray (the default; --resume "
                        "rejoins the sweep's own cluster unless given)")
    p.add_argument("--storage", default=None, help="Ray results: PATH or s3://... (default <run-dir>/ray)")
    p.add_argument("--experiment", default="lunartune", help="MLflow experiment (also the Ray run name)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted sweep of --experiment")
    p.set_defaults(handler="tuner.sweep:main")


def _model_consumers(sub) -> None:
    promote = sub.add_parser("promote", help="register the best trial of a backbone; move aliases")
    promote.add_argument("--experiment", default="lunartune", help="MLflow experiment of the sweeps (default lunartune)")
    promote.add_argument("--backbone", default="vgg11", help="promote the best trial of this backbone (default vgg11)")
    promote.add_argument("--objective", default=None, choices=["val_miou", "val_rock_miou"],
                         help="ranks the trials (default: the objective the sweep optimised)")
    promote.add_argument("--model-name", default="lunar-unet", help="registered model name (default lunar-unet)")
    promote.add_argument("--real-data", default=None, help="Kaggle-layout folder with real photos + g_* masks")
    promote.add_argument("--force", action="store_true", help="move 'champion' even if it does not beat it")
    promote.set_defaults(handler="tuner.promote:main")

    export = sub.add_parser("export", help="export a model to TorchScript / ONNX, verified against PyTorch")
    export.add_argument("--model", required=True, help="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID, RUN_ID or "
                        "a checkpoint file")
    export.add_argument("--format", default="torchscript,onnx", help="comma list of torchscript, onnx")
    export.add_argument("--out", required=True, help="folder for the model files and model_card.json")
    export.set_defaults(handler="tuner.export:main")

    predict = sub.add_parser("predict", help="colour masks and overlays for images")
    predict.add_argument("--model", required=True, help="as for export")
    predict.add_argument("inputs", nargs="+", help="image files or folders")
    predict.add_argument("--out", required=True, help="folder for the masks and overlays")
    predict.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    predict.set_defaults(handler="tuner.predict:main")

    evaluate = sub.add_parser("evaluate", help="score a model on a Kaggle-layout folder (renders and real photos)")
    evaluate.add_argument("--model", required=True, help="as for export")
    evaluate.add_argument("--data", required=True, help="Kaggle-layout folder: render/mask pairs and/or real photos with g_* masks")
    evaluate.add_argument("--image-size", type=_size, default=None, help="override the checkpoint's input size")
    evaluate.add_argument("--json", default=None, help="write the metrics here")
    evaluate.add_argument("--out", default=None, help="confusion matrices and worst predictions (PNG)")
    evaluate.add_argument("--metric-prefix", default="real_",
                          help="prefix of the metrics logged to the model's MLflow run (real_renders_miou, ...)")
    evaluate.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    evaluate.add_argument("--exclude", default=None, metavar="NAMES",
                          help="render frames and photos to leave out, comma-separated (e.g. 5206,TCAM21)")
    evaluate.add_argument("--exclude-mismatches", action="store_true",
                          help="leave out the frames the data set's mismatch_IDs.txt lists")
    evaluate.set_defaults(handler="tuner.evaluate:main")

    report = sub.add_parser("report", help="PNG figures and report.md for a sweep")
    report.add_argument("--experiment", default="lunartune", help="MLflow experiment of the sweep (default lunartune)")
    report.add_argument("--out", default=None, help="default <run-dir>/report/<experiment>")
    report.set_defaults(handler="tuner.report:main")

    ui = sub.add_parser("ui", help="start the MLflow UI on this run directory's store (127.0.0.1)")
    ui.add_argument("--experiment", default="lunartune", help="experiment the printed links open (default lunartune)")
    ui.add_argument("--port", type=int, default=5000, help="first port tried (default 5000; the next free one if taken)")
    ui.add_argument("--host", default="127.0.0.1", help="bind address: loopback only (127.0.0.1, localhost, ::1); from another machine use ssh -L")
    ui.add_argument("--optuna", action="store_true", help="also start optuna-dashboard on the sweep's study")
    ui.set_defaults(handler="tuner.ui:main")

    demo = sub.add_parser("demo", help="the whole job on embedded defaults: data -> sweep -> promote -> export -> report")
    demo.add_argument("--experiment", default="lunartune-demo", help="MLflow experiment and Optuna study (default lunartune-demo)")
    demo.add_argument("--samples", type=int, default=6, help="trials of the sweep (default 6)")
    demo.set_defaults(handler="tuner.demo:main")


class _HelpWithDefaults(argparse.HelpFormatter):
    """Each flag's help ends with its default unless it names it already (argparse's own
    ArgumentDefaultsHelpFormatter also prints "default: None" and "default: False" for flags without one)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if not action.option_strings or "default" in text or action.default in (None, argparse.SUPPRESS) \
                or isinstance(action.default, bool):
            return text
        return f"{text} (default {action.default})"


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    _add_common(common, suppress=True)
    parser = argparse.ArgumentParser(
        prog="lunartune",
        description="Hyperparameter search for lunar-surface segmentation (Ray Tune + Optuna + ASHA + MLflow).",
    )
    _add_common(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                parser_class=lambda **kw: argparse.ArgumentParser(
                                    parents=[common], formatter_class=_HelpWithDefaults, **kw))
    _data_parser(sub)
    _train_parser(sub)
    _tune_parser(sub)
    _model_consumers(sub)
    return parser


def _load_handler(spec: str) -> Callable:
    """'tuner.train:main' -> the function, imported only when the command runs (keeps --help instant)."""
    module, function = spec.split(":")
    try:
        return getattr(importlib.import_module(module), function)
    except ModuleNotFoundError as err:
        if err.name != module:
            raise
        raise CliError(f"this command is not implemented yet ({module} is missing)", code=3) from None


# `timeout`, `kill` and job schedulers stop a command with SIGTERM, whose default ends it at once and leaves
# its staging folders (`.NAME.partial-*`) behind. These commands take it as Ctrl-C: the same clean-up runs.
# Not `tune` and `demo` (Ray's driver: a killed sweep is cleaned up by the next one) nor `ui` (its own handlers).
SIGTERM_AS_CTRL_C = ("data", "train", "promote", "export", "predict", "evaluate", "report")


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C raises KeyboardInterrupt."""


def _raise_terminated(signum, frame):
    raise Terminated()


def _default_sigterm_in_forked_child() -> None:
    """A forked worker (scene generation, DataLoader) must not inherit the handler: a pool stops its workers
    with SIGTERM, and a worker blocked on a lock never runs a Python handler (the pool then waited forever)."""
    if signal.getsignal(signal.SIGTERM) is _raise_terminated:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


os.register_at_fork(after_in_child=_default_sigterm_in_forked_child)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    paths = resolve_run_paths(args.run_dir, args.tracking_uri)
    takes_sigterm = args.command in SIGTERM_AS_CTRL_C and threading.current_thread() is threading.main_thread()
    before = signal.signal(signal.SIGTERM, _raise_terminated) if takes_sigterm else None
    try:
        return int(_load_handler(args.handler)(args, paths) or 0)
    except (CliError, RunDirError) as err:
        print(f"lunartune {args.command}: error: {err}", file=sys.stderr)
        return getattr(err, "code", EXIT_ERROR)
    except Terminated:
        print(f"lunartune {args.command}: terminated (SIGTERM); nothing half-written was kept", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print(f"lunartune {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if takes_sigterm:  # main() may run inside another program (the tests): its handler comes back
            signal.signal(signal.SIGTERM, signal.SIG_DFL if before is None else before)


if __name__ == "__main__":
    # Re-import so that `python -m tuner.cli` and the console script share one CliError class.
    from tuner.cli import main as _main

    sys.exit(_main())
