"""Will a sweep's checkpoints fit on the disk? An estimate, checked before Ray starts.

A trial that cannot save its checkpoint fails every try and ends `errored` (`OSError: [Errno 28] ... No
space left on device`): CI's disk once filled up that way in the middle of a test run. So the driver
warns up front when the worst case does not fit; it does not refuse, since pruned trials write less.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, fields
from pathlib import Path

from models import ModelConfig, build_skeleton

OPTIMIZER_STATE = {"adam": 2, "adamw": 2, "sgd": 1}  # tensors the optimizer keeps per weight (SGD: momentum)
_MODEL_FIELDS = frozenset(f.name for f in fields(ModelConfig))


def weight_bytes(cfg: ModelConfig) -> int:
    """The state dict (weights and BatchNorm statistics) of the model `cfg` describes, in bytes."""
    return sum(t.numel() * t.element_size() for t in build_skeleton(cfg).state_dict().values())


def possible_values(space, name: str, default) -> list:
    """Every value `name` can take in the space: its choices, its fixed value, else the default (a range
    gives both ends)."""
    for param in space.params:
        if param.name == name:
            return list(param.choices) if param.choices else [param.low, param.high]
    return [space.fixed_values.get(name, default)]


@dataclass(frozen=True)
class CheckpointBytes:
    """Worst case of what a sweep writes, by where it goes."""

    ray: int  # Ray's results: each trial's kept checkpoints (weights + optimizer state)
    mlflow: int  # MLflow's artifact store: each trial's best weights
    staging: int  # the temp folder: the checkpoint each running trial writes before Ray copies it


def sweep_checkpoint_bytes(space, samples: int, max_epochs: int, kept: int, concurrency: int) -> CheckpointBytes:
    """Worst case of what the sweep writes: per trial, up to `kept` + 1 checkpoints in Ray's results (the
    best `kept` and the latest), each the weights plus the optimizer's state, and the best weights in
    MLflow; one checkpoint per running trial at a time in the temp folder; of the largest model and the
    hungriest optimizer the space allows."""
    fixed = {k: v for k, v in space.fixed_values.items() if k in _MODEL_FIELDS}
    default = ModelConfig()
    models = [ModelConfig(**{**fixed, "backbone": backbone, "arch": arch, "scratch_width": width,
                             "scratch_depth": depth})
              for backbone in possible_values(space, "backbone", default.backbone)
              for arch in possible_values(space, "arch", default.arch)
              for width in possible_values(space, "scratch_width", fixed.get("scratch_width", default.scratch_width))
              for depth in possible_values(space, "scratch_depth", fixed.get("scratch_depth", default.scratch_depth))]
    weights = max(weight_bytes(m) for m in models)
    checkpoint = weights * (1 + max(OPTIMIZER_STATE.get(o, 2) for o in possible_values(space, "optimizer", "adamw")))
    return CheckpointBytes(ray=samples * min(max_epochs, kept + 1) * checkpoint, mlflow=samples * weights,
                           staging=min(concurrency, samples) * checkpoint)


def existing(folder: Path) -> Path:
    """`folder`, or its nearest existing parent: where it will be created, so on the same disk."""
    folder = Path(folder).expanduser().resolve()
    while not folder.exists():
        folder = folder.parent
    return folder


def free_bytes(folder: Path) -> int:
    """Free space on the disk that holds `folder` (or would: its nearest existing parent)."""
    return shutil.disk_usage(existing(folder)).free


def by_disk(needs: dict[Path, int]) -> list[tuple[list[Path], int]]:
    """Group `folder: bytes` by the disk (filesystem) that holds each folder: ([folders], bytes in all).
    Ray's results and MLflow's artifacts fill one disk when they share it, two when they do not."""
    groups: dict[int, tuple[list[Path], int]] = {}
    for folder, need in needs.items():
        device = os.stat(existing(folder)).st_dev
        folders, total = groups.get(device, ([], 0))
        groups[device] = (folders + [Path(folder)], total + need)
    return list(groups.values())


def disk_warnings(needs: dict[Path, int]) -> list[str]:
    """One warning per disk on which the `folder: bytes` that go to it may not fit."""
    warnings = []
    for folders, need in by_disk(needs):
        warning = disk_warning(need, free_bytes(folders[0]), folders)
        if warning:
            warnings.append(warning)
    return warnings


def disk_warning(need: int, free: int, folders: list[Path]) -> str | None:
    """The warning to print when `need` bytes may not fit in the `free` bytes of the disk holding `folders`,
    else None."""
    if need <= free:
        return None
    return (f"this sweep may write up to {need / 1e9:.1f} GB of checkpoints, but only {free / 1e9:.1f} GB are "
            f"free on the disk of {' and '.join(map(str, folders))}: a trial that cannot save one ends errored "
            f"(No space left on device). Free some space, give --storage on a larger disk, or run fewer --samples")
