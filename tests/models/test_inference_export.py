import numpy as np
import pytest
import torch

from blobs import MEAN, STD, blob_scene
from models import ModelConfig, build
from models.export import ExportError, export_onnx, export_torchscript, verify_onnx, verify_torchscript
from models.inference import predict_mask, predict_masks


@pytest.fixture(scope="module")
def scratch():
    torch.manual_seed(0)
    return build(ModelConfig(backbone="unet_scratch", scratch_width=4, scratch_depth=2)).eval()


def test_predict_mask_at_model_size_is_argmax_of_the_logits(scratch):
    image, _ = blob_scene(np.random.default_rng(0), 32)
    x = (torch.from_numpy(image).permute(2, 0, 1).float() / 255 - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(
        STD).view(3, 1, 1)
    expected = scratch(x[None])[0].argmax(0).numpy()
    mask = predict_mask(scratch, image, (32, 32), MEAN, STD, "cpu")
    assert mask.dtype == np.uint8 and np.array_equal(mask, expected)


def test_predictions_come_back_at_each_images_own_size(scratch):
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(50, 70), (96, 64), (32, 32)]]
    masks = predict_masks(scratch, images, (32, 32), MEAN, STD, "cpu", batch_size=2)
    assert [m.shape for m in masks] == [(50, 70), (96, 64), (32, 32)]
    assert all(m.max() < 4 for m in masks)
    assert np.array_equal(masks[1], predict_mask(scratch, images[1], (32, 32), MEAN, STD, "cpu"))
    # the logits are resized to the image, then the argmax taken (not the class map resized): smooth borders
    x = torch.from_numpy(images[0]).permute(2, 0, 1)[None].float() / 255
    x = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    logits = torch.nn.functional.interpolate(scratch(x), size=(50, 70), mode="bilinear", align_corners=False)
    assert np.array_equal(masks[0], logits[0].argmax(0).numpy())


def test_inference_sees_the_inputs_training_saw():
    """Training reads images resized by the decode cache (PIL, uint8); inference resizes them itself (torch,
    float): the two must agree to rounding, else models are served other inputs than they learned on."""
    from data_pipeline import IMAGENET_MEAN, IMAGENET_STD, normalize_image, resize_image
    from data_pipeline.synth import render_scene
    from models.inference import _to_input

    image = render_scene(0, 1, (480, 720)).image  # a detailed scene: regolith grain, rock edges, noise
    for size in ((128, 192), (480, 720), (512, 768)):  # down, same, up
        trained_on = normalize_image(resize_image(image, size))
        served = _to_input(image, size, IMAGENET_MEAN, IMAGENET_STD).numpy()
        grey_levels = np.abs(trained_on - served) * np.array(IMAGENET_STD)[:, None, None] * 255
        assert grey_levels.max() <= 1.001, (size, grey_levels.max())  # uint8 rounding, and no more


def test_predict_rejects_non_uint8_rgb(scratch):
    with pytest.raises(ValueError, match="image 0: expected an H x W x 3 uint8"):
        predict_mask(scratch, np.zeros((8, 8), dtype=np.uint8), (32, 32), MEAN, STD)


def needs_onnxruntime():
    # the numeric ONNX check needs onnxruntime (a dev/optional extra); without it only onnx.checker runs
    pytest.importorskip("onnxruntime", reason="onnxruntime not installed: pip install '.[onnxruntime]'")


@pytest.mark.parametrize("backbone", ["unet_scratch", "vgg11"])
def test_exports_match_pytorch_with_a_dynamic_batch(tmp_path, backbone):
    needs_onnxruntime()
    model = build(ModelConfig(backbone=backbone)).eval()
    example = torch.randn(1, 3, 64, 64)
    ts = export_torchscript(model, tmp_path / "m.pt", example)
    onnx_report = export_onnx(model, tmp_path / "m.onnx", example)
    assert ts["verify_batch"] == 2 and ts["max_abs_diff"] <= 1e-4
    assert onnx_report["runtime"].startswith("onnxruntime") and onnx_report["max_abs_diff"] <= 1e-4
    assert onnx_report["verify_batch"] == 2  # the example had batch 1: the batch axis is dynamic


def test_verification_catches_a_model_that_differs(tmp_path, scratch):
    needs_onnxruntime()
    example = torch.randn(1, 3, 32, 32)
    export_torchscript(scratch, tmp_path / "m.pt", example)
    export_onnx(scratch, tmp_path / "m.onnx", example)
    other = build(ModelConfig(backbone="unet_scratch", scratch_width=4, scratch_depth=2)).eval()
    with pytest.raises(ExportError, match=r"m\.pt: outputs differ"):
        verify_torchscript(other, tmp_path / "m.pt", example)
    with pytest.raises(ExportError, match=r"m\.onnx: outputs differ"):
        verify_onnx(other, tmp_path / "m.onnx", example)
