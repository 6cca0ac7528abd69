"""A diverging trial ends as `diverged` once (no retry) and the sweep goes on with the others.
tests/tuner/test_sweep.py covers a lone diverged trial; this one checks it beside a healthy one."""
from __future__ import annotations

import optuna
import pytest

from fault_helpers import child_statuses, trial_rows
from tuner.sweep import SweepConfig, run_sweep

SPACE = """params:
  lr: {choices: [1.0e+37, 1.0e-2]}
fixed: {backbone: unet_scratch, optimizer: sgd, encoder_weights: none, scratch_width: 4, scratch_depth: 3}
points_to_evaluate:
  - {lr: 1.0e+37}
  - {lr: 1.0e-2}
"""


@pytest.mark.slow
def test_diverged_trial_is_not_retried_and_the_sweep_goes_on(local_ray, scenes, tmp_path, run_paths):
    space = tmp_path / "diverge.yaml"
    space.write_text(SPACE)
    result = run_sweep(SweepConfig(space=str(space), data=str(scenes), samples=2, max_epochs=2, concurrency=1,
                                   use_asha=False, device="cpu", experiment="nan2"), run_paths)
    assert result.statuses == {"completed": 1, "diverged": 1} and not result.interrupted
    assert sorted(child_statuses(run_paths.tracking_uri, "nan2").values()) == ["completed", "diverged"]
    rows = trial_rows(run_paths.ray_results)
    diverged = [r for r in rows.values() if r[-1]["diverged"]]
    assert len(diverged) == 1 and len(diverged[0]) == 1, "a diverged trial reports once and is never retried"
    study = optuna.load_study(study_name="nan2", storage=f"sqlite:///{run_paths.optuna_db}")
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE", "PRUNED"]
