"""The one rule for "best" (tuner.objective) that the trial, sweep, promote and report share."""
import math

import pytest

from tuner.objective import best_epoch, score


def test_an_undefined_objective_scores_zero():
    assert score(math.nan) == 0.0 and score(0.25) == 0.25


@pytest.mark.parametrize("history, best", [
    ([(1, 0.3), (2, 0.5), (3, 0.5), (4, 0.4)], (0.5, 2)),  # ties: the first epoch at the top
    ([(1, math.nan), (2, 0.0), (3, 0.0)], (0.0, 1)),  # NaN is 0.0, as the trial reported it: epoch 1 kept
    ([(1, math.nan), (2, 0.1)], (0.1, 2)),
    ([(3, 0.2), (1, 0.2), (2, 0.1)], (0.2, 1)),  # by epoch, not by order of arrival
    ([(1, math.nan), (2, math.nan)], None),  # never defined
    ([], None),
])
def test_best_epoch(history, best):
    assert best_epoch(history) == best
    assert best_epoch(iter(history)) == best  # a one-pass iterable (zip over a frame's columns) too
