"""Checkpoints that describe themselves: a model rebuilds from the file alone.

A checkpoint is a plain dict saved with torch.save and read with weights_only=True (tensors and plain
data only — no pickled objects): weights, the model and training configs as dicts, the class table
(list of {name, index, color}), image size (H, W), normalisation {mean, std}, epoch and metrics; optionally
optimizer/scheduler state and torch's RNG state for resuming. Saving writes a temp file in the same folder
and renames it over the target, so a kill mid-save leaves the old file (or none), never a truncated one.
"""
from __future__ import annotations

import dataclasses
import os
import pickle
import uuid
from pathlib import Path

import torch
from torch import nn

from models.config import ModelConfig, TrainConfig
from models.registry import build

FORMAT = "lunartune-checkpoint"
VERSION = 1
REQUIRED_KEYS = ("format", "version", "state_dict", "model_config", "train_config", "classes", "image_size",
                 "normalization", "epoch", "metrics")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read or is not ours; the message names the file."""


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def save_checkpoint(path, model: nn.Module, model_cfg: ModelConfig, train_cfg: TrainConfig, *, classes: list[dict],
                    image_size: tuple[int, int], normalization: dict, epoch: int, metrics: dict,
                    optimizer=None, scheduler=None, grad_scaler=None, extra: dict | None = None) -> Path:
    """Write the checkpoint atomically; returns its path. `extra` must be plain data (or tensors)."""
    path = Path(path)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
        "model_config": model_cfg.to_dict(),
        "train_config": train_cfg.to_dict(),
        "classes": [dict(c) for c in classes],
        "image_size": [int(s) for s in image_size],
        "normalization": {"mean": [float(v) for v in normalization["mean"]],
                          "std": [float(v) for v in normalization["std"]]},
        "epoch": int(epoch),
        "metrics": {k: float(v) for k, v in metrics.items()},
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "grad_scaler": grad_scaler.state_dict() if grad_scaler is not None else None,  # {} when disabled
        "rng": _rng_state(),
        "extra": extra or {},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")  # not mkstemp: its 0600 outlives the rename
    try:
        with open(tmp, "xb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the rename makes them visible
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path) -> dict:
    """The checkpoint dict (tensors on CPU); CheckpointError naming the file if missing, corrupt or foreign."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's own text is a page long and suggests weights_only=False
        raise CheckpointError(f"{path}: not a readable checkpoint (corrupt, or it pickles objects other than "
                              f"tensors and plain data, which are never loaded: loading them could run code)") from None
    except Exception as err:  # truncated zip, garbage bytes, ...
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise CheckpointError(f"{path}: not a readable checkpoint (corrupt or truncated?): "
                              f"{type(err).__name__}: {first_line}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a lunartune checkpoint (no format={FORMAT!r} marker)")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {', '.join(missing)}")
    for key, ok, expected in _field_checks(ckpt):
        if not ok:
            raise CheckpointError(f"{path}: checkpoint field {key} = {str(ckpt[key])[:80]!r}: expected {expected}")
    if ckpt["version"] > VERSION:
        raise CheckpointError(f"{path}: checkpoint version {ckpt['version']} is newer than this code's {VERSION}")
    return ckpt


def _field_checks(ckpt: dict):
    """(key, valid?, what is expected) for the fields inference and export read: a file that passes the
    format check but holds other shapes must be a CheckpointError, not a traceback deep in torch."""
    def numbers(v, n):
        return isinstance(v, (list, tuple)) and len(v) == n and all(isinstance(x, (int, float)) for x in v)

    norm, classes, size = ckpt["normalization"], ckpt["classes"], ckpt["image_size"]
    yield "version", isinstance(ckpt["version"], int), "an integer"
    yield "state_dict", isinstance(ckpt["state_dict"], dict) and all(
        isinstance(v, torch.Tensor) for v in ckpt["state_dict"].values()), "a dict of tensors"
    yield "model_config", isinstance(ckpt["model_config"], dict), "a dict of ModelConfig fields"
    yield "train_config", isinstance(ckpt["train_config"], dict), "a dict of TrainConfig fields"
    yield "image_size", numbers(size, 2) and all(isinstance(s, int) and s > 0 for s in size), "[height, width] > 0"
    yield "normalization", isinstance(norm, dict) and numbers(norm.get("mean"), 3) and numbers(norm.get("std"), 3) \
        and all(s > 0 for s in norm["std"]), "{mean: [r, g, b], std: [r, g, b] > 0}"
    yield "classes", isinstance(classes, list) and bool(classes) and all(
        isinstance(c, dict) and {"index", "name", "color"} <= set(c) for c in classes), \
        "a list of {index, name, color}"


def _config_from(cls, data: dict, source: str):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise CheckpointError(f"{source}: {cls.__name__} in the checkpoint has unknown fields {unknown}")
    return cls(**data)


def model_from_checkpoint(path_or_dict) -> tuple[nn.Module, dict]:
    """(model in eval mode with the checkpoint's weights, the checkpoint dict with configs as dataclasses).

    The model is built with encoder_weights="none": the checkpoint holds every weight, so neither the
    hub nor the original encoder file is needed on the machine that loads it.
    """
    source = "checkpoint" if isinstance(path_or_dict, dict) else str(path_or_dict)
    ckpt = path_or_dict if isinstance(path_or_dict, dict) else load_checkpoint(path_or_dict)
    model_cfg = _config_from(ModelConfig, ckpt["model_config"], source)
    model = build(dataclasses.replace(model_cfg, encoder_weights="none"))
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        raise CheckpointError(f"{source}: weights do not fit {model_cfg.backbone}: {err}") from None
    info = {**ckpt, "model_config": model_cfg, "train_config": _config_from(TrainConfig, ckpt["train_config"], source)}
    return model.eval(), info


def restore_rng(ckpt: dict) -> None:
    """Put torch's RNG back where the checkpoint left it (for a resumed run to continue the same stream)."""
    rng = ckpt.get("rng") or {}
    if "torch" in rng:
        torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def restore_training_state(ckpt: dict, optimizer=None, scheduler=None, grad_scaler=None) -> int:
    """Load optimizer/scheduler/loss-scaler state and torch's RNG from `ckpt`; returns the epoch to continue
    after. A checkpoint without a scaler state (fp32/bfloat16, or older) leaves `grad_scaler` as it is.

    Build the scheduler BEFORE calling this: constructing a LambdaLR rewrites the optimizer's lr, so the
    optimizer state must be loaded after it (then the scheduler's step count) to resume exactly.
    """
    if optimizer is not None and ckpt.get("optimizer") is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
    if scheduler is not None and ckpt.get("scheduler") is not None:
        scheduler.load_state_dict(ckpt["scheduler"])
    if grad_scaler is not None and ckpt.get("grad_scaler"):
        grad_scaler.load_state_dict(ckpt["grad_scaler"])
    restore_rng(ckpt)
    return int(ckpt["epoch"])
