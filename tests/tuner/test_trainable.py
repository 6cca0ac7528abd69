"""The trainable's edge: Ray's flat dict -> frozen configs, in one function."""
from __future__ import annotations

import pytest

from data_pipeline import DataConfig
from models import ConfigError, ModelConfig, TrainConfig
from tuner.trainable import TrialSetup, configs_from_trial, epoch_metrics
from tuner.tracking import TrackingTarget

SETUP = TrialSetup(data=DataConfig(root="/data", batch_size=8, augment=True), model=ModelConfig(),
                   train=TrainConfig(epochs=3, seed=7), objective="val_miou",
                   tracking=TrackingTarget("sqlite:///x.db", "1", "parent"))


def test_searched_and_fixed_values_land_in_the_right_configs():
    data, model, train = configs_from_trial(
        {"backbone": "mobilenetv3-large", "dropout": 0.2, "lr": 0.01, "optimizer": "sgd", "momentum": 0.85,
         "batch_size": 4, "augment": False}, SETUP)
    assert (model.backbone, model.dropout) == ("tu-mobilenetv3_large_100", 0.2)  # alias resolved
    assert (train.lr, train.optimizer, train.momentum, train.batch_size, train.epochs, train.seed) == \
        (0.01, "sgd", 0.85, 4, 3, 7)
    assert (data.batch_size, data.augment, data.seed, data.root, data.progress) == (4, False, 7, "/data", False)


def test_absent_conditional_params_keep_the_config_defaults():
    _, _, train = configs_from_trial({"optimizer": "adam"}, SETUP)
    assert train.momentum == TrainConfig().momentum and train.nesterov is False


def test_a_bad_value_names_the_field():
    with pytest.raises(ConfigError, match="TrainConfig.optimizer"):
        configs_from_trial({"optimizer": "lion"}, SETUP)
    with pytest.raises(ConfigError, match="ModelConfig.dropout"):
        configs_from_trial({"dropout": 1.5}, SETUP)


def test_epoch_metrics_names():
    metrics = epoch_metrics({"loss": 1.0, "lr": 0.1, "seconds": 2.0},
                            {"loss": 0.5, "miou": 0.4, "rock_miou": 0.2, "iou_sky": 0.9}, epoch=2)
    assert metrics == {"train_loss": 1.0, "lr": 0.1, "epoch_seconds": 2.0, "epoch": 2, "val_loss": 0.5,
                       "val_miou": 0.4, "val_rock_miou": 0.2, "val_iou_sky": 0.9}
