"""One real, tiny, finished sweep per test session, shared by test_promote/test_export/test_report.

The sweep (local Ray, Optuna + ASHA, SQLite MLflow, real checkpoints) runs once, into a folder under the
session's base temp dir; each test module gets its own COPY of that run dir (MLflow DB + Optuna DB), so
one module's registry changes never leak into another's. Artifacts stay in the original folder (the DB
names it by absolute path): copies read checkpoints from there, and their new runs write there under
new run ids, which never collide.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from tuner.settings import RunPaths

EXPERIMENT = "promo"
# vgg11 + the hand-built U-Net; the two points make sure both backbones get a trial whatever TPE draws
SPACE = """
description: tests of promote/export/report - vgg11 + hand-built U-Net
params:
  backbone: {choices: [unet_scratch, vgg11]}
  lr: {low: 1.0e-3, high: 3.0e-2, log: true}
  optimizer: {choices: [adam, sgd]}
  momentum: {low: 0.8, high: 0.95, when: {optimizer: sgd}}
fixed: {encoder_weights: none, arch: unet, loss: ce, batch_size: 8, scratch_width: 4, scratch_depth: 3}
points_to_evaluate:
  - {backbone: vgg11, optimizer: adam, lr: 1.0e-3}
  - {backbone: unet_scratch, optimizer: adam, lr: 3.0e-3}
"""


@dataclass(frozen=True)
class Sweep:
    paths: RunPaths  # this module's copy of the run dir
    scenes: Path  # the data the sweep trained on
    experiment: str
    experiment_id: str
    parent_run_id: str
    template: Path  # the shared run dir the sweep wrote (read only: copy its DBs)


def _run_once(base: Path, scenes: Path) -> dict:
    """Run the sweep into base/run unless a previous module already did; returns its summary."""
    done = base / "done.json"
    if done.is_file():
        return json.loads(done.read_text())
    from tuner.sweep import SweepConfig, run_sweep

    shutil.rmtree(base, ignore_errors=True)  # a half-finished earlier attempt
    base.mkdir(parents=True)
    (base / "space.yaml").write_text(SPACE)
    cfg = SweepConfig(space=str(base / "space.yaml"), data=str(scenes), samples=4, max_epochs=2, grace_epochs=1,
                      concurrency=2, cpus_per_trial=1.0, seed=0, experiment=EXPERIMENT, device="cpu")
    result = run_sweep(cfg, RunPaths(root=base / "run"))
    assert not result.interrupted, result.statuses
    summary = {"experiment_id": result.experiment_id, "parent_run_id": result.parent_run_id}
    done.write_text(json.dumps(summary))
    return summary


def finished_sweep(tmp_path_factory, scenes: Path, module_name: str) -> Sweep:
    summary = _run_once(tmp_path_factory.getbasetemp() / "shared-promote-sweep", scenes)
    source = tmp_path_factory.getbasetemp() / "shared-promote-sweep" / "run"
    copy = tmp_path_factory.mktemp(module_name) / "run"
    copy.mkdir()
    for name in ("mlflow.db", "optuna.db"):
        shutil.copy2(source / name, copy / name)
    return Sweep(RunPaths(root=copy), Path(scenes), EXPERIMENT, summary["experiment_id"], summary["parent_run_id"],
                 source)
