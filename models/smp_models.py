"""segmentation-models-pytorch architectures with a Dropout2d in front of the segmentation head.

smp is imported inside the functions so that `import models` stays light.
"""
from __future__ import annotations

from torch import nn

# Our arch names (lower case, as the CLI and search spaces write them) -> smp class names.
SMP_ARCHS = {
    "unet": "Unet",
    "unetplusplus": "UnetPlusPlus",
    "fpn": "FPN",
    "deeplabv3plus": "DeepLabV3Plus",
    "linknet": "Linknet",
}


def build_smp(arch: str, encoder: str, *, in_channels: int, num_classes: int, dropout: float,
              timm_kwargs: dict | None = None) -> nn.Module:
    """A randomly initialised smp model; encoder weights are loaded afterwards by models.weights.

    `timm_kwargs` go to timm.create_model for `tu-` encoders (models.weights uses it to point timm at a
    cached pretrained file, which is timm's own, network-free way of loading one).
    """
    import segmentation_models_pytorch as smp

    extra = {}
    # our `dropout` must be the only one: FPN's own default is 0.2, DeepLabV3+'s ASPP drops 0.5
    if arch == "fpn":
        extra["decoder_dropout"] = 0.0
    if arch == "deeplabv3plus":
        extra["decoder_aspp_dropout"] = 0.0
    model = getattr(smp, SMP_ARCHS[arch])(
        encoder_name=encoder,
        encoder_weights=True if timm_kwargs else None,  # smp defaults to imagenet: always explicit
        in_channels=in_channels,
        classes=num_classes,
        **extra,
        **(timm_kwargs or {}),
    )
    model.segmentation_head = nn.Sequential(nn.Dropout2d(dropout), *model.segmentation_head)
    return model
