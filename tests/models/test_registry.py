import numpy as np
import pytest
import torch

import models
from models import ConfigError, ModelConfig, TrainConfig, build, validate_image_size, validate_train


@pytest.mark.parametrize("backbone", models.available_backbones())
def test_every_backbone_maps_images_to_logits_and_backpropagates(backbone):
    model = build(ModelConfig(backbone=backbone, dropout=0.1)).train()
    x = torch.randn(2, 3, 64, 64)  # batch > 1: BatchNorm in train mode needs it for the deepest features
    logits = model(x)
    assert logits.shape == (2, 4, 64, 64)
    logits.mean().backward()
    grads = [p.grad for p in model.parameters()]
    # efficientnet-b0 keeps a few layers past its last feature map that get no gradient: allow those
    assert sum(g is not None for g in grads) >= 0.9 * len(grads)
    assert model.segmentation_head[-1 if backbone == "unet_scratch" else 1].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("arch", models.available_archs())
def test_every_smp_architecture_is_selectable(arch):
    model = build(ModelConfig(backbone="resnet18", arch=arch)).train()
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 4, 64, 64)


@pytest.mark.parametrize("backbone", ["vgg11", "vgg11_bn"])
def test_deeplabv3plus_with_a_vgg_encoder_is_refused_naming_the_pair(backbone):
    with pytest.raises(ConfigError, match=f"ModelConfig.arch='deeplabv3plus': expected an architecture other than "
                                          f"deeplabv3plus for {backbone}"):
        build(ModelConfig(backbone=backbone, arch="deeplabv3plus"))  # was smp's ValueError, as a traceback


def test_alias_resolves_to_registry_name():
    assert models.canonical_backbone("mobilenetv3-large") == "tu-mobilenetv3_large_100"
    assert models.validate(ModelConfig(backbone="mobilenetv3-large")).backbone == "tu-mobilenetv3_large_100"


def test_unknown_backbone_lists_valid_names():
    with pytest.raises(ConfigError, match="ModelConfig.backbone") as err:
        build(ModelConfig(backbone="vgg12"))
    assert "vgg11" in str(err.value) and "unet_scratch" in str(err.value)
    assert err.value.field == "ModelConfig.backbone"


@pytest.mark.parametrize("field, value", [("dropout", 1.0), ("dropout", -0.1), ("arch", "segformer"),
                                          ("encoder_weights", "/nonexistent/enc.pth"), ("scratch_depth", 1)])
def test_bad_model_config_names_the_field(field, value):
    with pytest.raises(ConfigError, match=f"ModelConfig.{field}"):
        models.validate(ModelConfig(**{field: value}))


def test_scratch_unet_rejects_pretrained_weights():
    with pytest.raises(ConfigError, match="encoder_weights"):
        models.validate(ModelConfig(backbone="unet_scratch", encoder_weights="imagenet"))


@pytest.mark.parametrize("field, value", [("lr", 0.0), ("lr", -1e-3), ("epochs", 0), ("batch_size", 1), ("seed", -1), ("seed", 2**32), ("optimizer", "lion"),
                                          ("loss", "lovasz"), ("lr_schedule", "step"), ("momentum", 1.0),
                                          ("bn_recalibration_batches", -1), ("bn_recalibration_batches", 2.5)])
def test_bad_train_config_names_the_field(field, value):
    with pytest.raises(ConfigError, match=f"TrainConfig.{field}"):
        validate_train(TrainConfig(**{field: value}))


def test_integer_fields_accept_numpy_integers():
    """Search spaces may hand numpy integers over (Optuna/Ray samplers)."""
    assert validate_train(TrainConfig(bn_recalibration_batches=np.int64(3))).bn_recalibration_batches == 3


def test_image_size_must_fit_the_model():
    assert validate_image_size(ModelConfig(backbone="vgg11"), (64, 96)) == (64, 96)
    with pytest.raises(ConfigError, match="image_size.*multiples of 32"):
        validate_image_size(ModelConfig(backbone="vgg11"), (64, 100))
    scratch = ModelConfig(backbone="unet_scratch", scratch_depth=4)  # 3 pools: multiples of 8
    assert validate_image_size(scratch, (72, 40)) == (72, 40)
    with pytest.raises(ConfigError, match="multiples of 8"):
        validate_image_size(scratch, (70, 40))


@pytest.mark.parametrize("backbone", ["unet_scratch", "resnet18"])
def test_dropout_is_active_in_training_and_off_in_eval(backbone):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    model = build(ModelConfig(backbone=backbone, dropout=0.5)).train()
    assert not torch.equal(model(x), model(x))  # two dropout masks
    model.eval()
    assert torch.equal(model(x), model(x))
    plain = build(ModelConfig(backbone=backbone, dropout=0.0)).train()
    assert torch.equal(plain(x), plain(x))  # without dropout training mode is deterministic


def test_scratch_unet_width_and_depth_are_configurable():
    small = build(ModelConfig(backbone="unet_scratch", scratch_width=4, scratch_depth=2))
    large = build(ModelConfig(backbone="unet_scratch", scratch_width=8, scratch_depth=3))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(small) < count(large)
    assert small(torch.randn(2, 3, 32, 32)).shape == (2, 4, 32, 32)


@pytest.mark.parametrize("arch", models.available_archs())
def test_the_configured_dropout_is_the_only_one(arch):
    """DeepLabV3+ kept smp's ASPP Dropout(0.5): --dropout 0 still dropped half the decoder's features."""
    model = build(ModelConfig(backbone="resnet18", arch=arch, dropout=0.0))
    rates = [m.p for m in model.modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd)]
    assert rates and set(rates) == {0.0}, rates
