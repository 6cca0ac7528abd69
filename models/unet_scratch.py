"""The reference report's hand-built U-Net, returning N x C x H x W logits like every smp model.

Encoder: `depth` blocks of two 3x3 conv + BatchNorm + ReLU; MaxPool 2x2 then Dropout2d between blocks.
Decoder: ConvTranspose 2x2 (stride 2) upsampling, the matching encoder output centre-cropped to the
upsampled size and concatenated, then another double-conv block. Head: Dropout2d + 1x1 conv.
Convs are padded ("same"), so with H and W divisible by 2**(depth - 1) the crop is a no-op and the
logits have the input's size; `registry.validate_image_size` enforces that divisibility.
Weights use He (Kaiming normal, fan_out, ReLU) initialisation, as the reference did.
"""
from __future__ import annotations

import torch
from torch import nn


def double_conv(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),  # bias is redundant before BatchNorm
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


def center_crop(skip: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Crop the centre height x width of an N x C x H' x W' skip tensor (H' >= height, W' >= width)."""
    top = (skip.shape[-2] - height) // 2
    left = (skip.shape[-1] - width) // 2
    return skip[..., top:top + height, left:left + width]


class UNetScratch(nn.Module):
    def __init__(self, in_channels: int = 3, num_classes: int = 4, width: int = 16, depth: int = 4,
                 dropout: float = 0.0):
        super().__init__()
        channels = [width * 2 ** i for i in range(depth)]
        self.encoder = nn.ModuleList([double_conv(in_channels, channels[0])])
        self.encoder.extend(double_conv(channels[i - 1], channels[i]) for i in range(1, depth))
        self.pool = nn.MaxPool2d(2)
        self.encoder_dropout = nn.Dropout2d(dropout)
        self.upsample = nn.ModuleList(
            nn.ConvTranspose2d(channels[i], channels[i - 1], 2, stride=2) for i in range(depth - 1, 0, -1))
        self.decoder = nn.ModuleList(
            double_conv(2 * channels[i - 1], channels[i - 1]) for i in range(depth - 1, 0, -1))
        # Named like smp's head so that code touching `segmentation_head` treats both model kinds alike.
        self.segmentation_head = nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(channels[0], num_classes, 1))
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.encoder):
            if i > 0:
                x = self.encoder_dropout(self.pool(x))
            x = block(x)
            skips.append(x)
        for up, block, skip in zip(self.upsample, self.decoder, reversed(skips[:-1])):
            x = up(x)
            x = block(torch.cat([center_crop(skip, x.shape[-2], x.shape[-1]), x], dim=1))
        return self.segmentation_head(x)
