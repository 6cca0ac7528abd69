"""Fixtures shared by every test folder: one local Ray per test session (never a cluster someone else
started), generated scenes, a tiny search space, a run directory."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def local_ray():
    """A private 2-CPU Ray for the whole session; shut down at the end even if tests fail."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    try:
        yield ray
    finally:
        ray.shutdown()


SCENES = 24  # 16 train / 4 val / 4 test at the default fractions: a few batches per epoch
# A space of the hand-built U-Net only (smallest model, ~1 MB checkpoints): for tests about the sweep
# machinery rather than the models; the end-to-end test uses the shipped smoke space.
TINY_SPACE = """
description: tests - hand-built U-Net only
params:
  lr: {low: 1.0e-3, high: 3.0e-2, log: true}
  optimizer: {choices: [adam, sgd]}
  momentum: {low: 0.8, high: 0.95, when: {optimizer: sgd}}
fixed: {backbone: unet_scratch, encoder_weights: none, batch_size: 8, scratch_width: 4, scratch_depth: 3}
"""


@pytest.fixture(scope="session")
def scenes(tmp_path_factory):
    """24 generated 64x64 scenes in the Kaggle layout, shared by every test of the session."""
    from data_pipeline import synth

    return synth.generate(tmp_path_factory.mktemp("scenes") / "lunar", SCENES, seed=0, size=(64, 64),
                          workers=1, progress=False)


@pytest.fixture
def tiny_space(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_SPACE)
    return str(path)


@pytest.fixture
def run_paths(tmp_path):
    from tuner.settings import RunPaths

    return RunPaths(root=tmp_path / "run")
