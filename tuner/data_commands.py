"""`lunartune data synth|check`: join the parsed flags to data_pipeline; nothing else lives here."""
from __future__ import annotations

import argparse
from pathlib import Path

from data_pipeline.errors import DataError
from tuner.cli import EXIT_ERROR, CliError
from tuner.settings import RunPaths


def synth(args: argparse.Namespace, paths: RunPaths) -> int:
    """Write procedural scenes in the Kaggle layout to --out, then print where they are."""
    from data_pipeline.synth import MAX_SIZE, MIN_SIZE, already_generated, generate  # only this command needs it

    for flag, value, minimum in (("--count", args.count, 1), ("--seed", args.seed, 0), ("--workers", args.workers, 0)):
        if value < minimum:
            raise CliError(f"{flag}={value}: expected an integer >= {minimum}")
    if not (MIN_SIZE <= min(args.size) and max(args.size) <= MAX_SIZE):
        raise CliError(f"--size={args.size[1]}x{args.size[0]}: expected WIDTHxHEIGHT with {MIN_SIZE} to {MAX_SIZE} px "
                       f"per side")
    try:
        there = already_generated(Path(args.out), args.count, args.seed, tuple(args.size), args.style)
        out = generate(Path(args.out), count=args.count, seed=args.seed, size=tuple(args.size),
                       style=args.style, workers=args.workers, progress=True)
    except DataError as err:
        raise CliError(str(err)) from None
    what = f"{args.count} scenes ({args.size[1]}x{args.size[0]}, style {args.style}, seed {args.seed})"
    print(f"{out} already holds {what}: nothing written" if there else f"wrote {what} to {out}")
    return 0


def check(args: argparse.Namespace, paths: RunPaths) -> int:
    """Print counts, class balance and problems of a data set; exit 1 when there are problems."""
    from data_pipeline.check import check_dataset

    if not Path(args.path).is_dir():  # nothing to report on: one line, as every command's bad path
        raise CliError(f"{args.path}: " + ("not a folder (expected a data set folder in the Kaggle layout)"
                                           if Path(args.path).exists() else "no such folder"))
    report = check_dataset(Path(args.path), mask_source=args.mask_source, allow_missing=args.allow_missing,
                           exclude_mismatches=args.exclude_mismatches, progress=True)
    print(report.format())
    return 0 if report.ok else EXIT_ERROR
