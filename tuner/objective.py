"""What "best" means, in one place: a trial keeps its checkpoint/best.pt by it, Ray ranks the trial's
checkpoints by it, ASHA compares trials at a rung by the score each reports there, Optuna is told a
finished trial's best score (`best_<objective>`, which the trial reports and logs each epoch, so MLflow's
UI sorts by it too), and sweep, promote and report find a trial's best epoch in its history by it. Rules
that differ register the weights of one epoch with the score of another, or rank trials differently.

An objective (val_miou, val_rock_miou) is NaN when a class it averages is absent from val in truth and
in prediction (see models.metrics); it scores 0.0 so that ASHA and Optuna can compare it. The best
epoch is the first one with the highest score.
"""
from __future__ import annotations

import math
from typing import Iterable


BEST_EPOCH = "best_epoch"  # per-epoch metric: the trial's best epoch so far


def best_name(objective: str) -> str:
    """Per-epoch metric: the trial's best score of `objective` so far (MLflow's UI sorts runs by its latest)."""
    return f"best_{objective}"


def score(value: float) -> float:
    """The objective's value as the trial reports it: NaN (undefined) -> 0.0."""
    return value if math.isfinite(value) else 0.0


def best_epoch(history: Iterable[tuple[int, float]]) -> tuple[float, int] | None:
    """(score, epoch) of the first epoch with the highest score in (epoch, value) pairs; None if no value is
    finite: a trial whose objective was never defined has no best epoch to rank or report."""
    history = list(history)
    if not any(math.isfinite(value) for _, value in history):
        return None
    return max(((score(value), epoch) for epoch, value in history), key=lambda p: (p[0], -p[1]))
