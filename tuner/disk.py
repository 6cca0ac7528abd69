"""Will a sweep's checkpoints fit on the disk? An estimate, checked before Ray starts.

A trial that cannot save its checkpoint fails every try and ends `errored` (`OSError: [Errno 28] ... No
space left on device`): CI's disk once filled up that way in the middle of a test run. So the driver
warns up front when the worst case does not fit; it does not refuse, since pruned trials write less.
"""
from __future__ import annotations

import shutil
from dataclasses import fields
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


def sweep_checkpoint_bytes(space, samples: int, max_epochs: int, kept: int) -> int:
    """Worst case of what the sweep writes: per trial, up to `kept` + 1 checkpoints in Ray's results (the
    best `kept` and the latest), each the weights plus the optimizer's state, and the best weights in
    MLflow; of the largest model and the hungriest optimizer the space allows."""
    fixed = {k: v for k, v in space.fixed_values.items() if k in _MODEL_FIELDS}
    default = ModelConfig()
    models = [ModelConfig(**{**fixed, "backbone": backbone, "arch": arch})
              for backbone in possible_values(space, "backbone", default.backbone)
              for arch in possible_values(space, "arch", default.arch)]
    weights = max(weight_bytes(m) for m in models)
    state = max(OPTIMIZER_STATE.get(o, 2) for o in possible_values(space, "optimizer", "adamw"))
    checkpoints = min(max_epochs, kept + 1)
    return samples * (checkpoints * weights * (1 + state) + weights)


def free_bytes(folder: Path) -> int:
    """Free space on the disk that holds `folder` (or would: its nearest existing parent)."""
    folder = Path(folder).expanduser().resolve()
    while not folder.exists():
        folder = folder.parent
    return shutil.disk_usage(folder).free


def disk_warning(need: int, free: int, folder: Path) -> str | None:
    """The warning to print when `need` bytes may not fit in the `free` bytes under `folder`, else None."""
    if need <= free:
        return None
    return (f"this sweep may write up to {need / 1e9:.1f} GB of checkpoints, but only {free / 1e9:.1f} GB are "
            f"free under {folder}: a trial that cannot save one ends errored (No space left on device). "
            f"Free some space, give --storage on a larger disk, or run fewer --samples")
