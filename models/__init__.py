"""lunartune models: tensors in, logits and metrics out. No data-set files, Ray or MLflow here.

The package import stays light (torch only): smp/timm load when an smp model is built, and the
training, checkpoint, inference and export modules are imported by name when needed.
"""
from models.config import ConfigError, ModelConfig, TrainConfig, validate_train
from models.registry import (
    ALIASES,
    available_archs,
    available_backbones,
    build,
    build_skeleton,
    canonical_backbone,
    check_weights_file,
    validate,
    validate_image_size,
)
from models.weights import WeightsError

__all__ = [
    "ALIASES", "ConfigError", "ModelConfig", "TrainConfig", "WeightsError", "available_archs",
    "available_backbones", "build", "build_skeleton", "canonical_backbone", "check_weights_file", "validate",
    "validate_image_size", "validate_train",
]
