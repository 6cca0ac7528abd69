"""What "best" means, in one place: a trial keeps its checkpoint/best.pt by it, Ray ranks the trial's
checkpoints and ASHA/Optuna compare trials by the score the trial reports, and sweep, promote and report
find a trial's best epoch in its history by it. Rules that differ register the weights of one epoch
with the score of another.

An objective (val_miou, val_rock_miou) is NaN when a class it averages is absent from val in truth and
in prediction (see models.metrics); it scores 0.0 so that ASHA and Optuna can compare it. The best
epoch is the first one with the highest score.
"""
from __future__ import annotations

import math
from typing import Iterable


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
