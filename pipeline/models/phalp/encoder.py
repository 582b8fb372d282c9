"""PHALP's appearance encoder: a UV texture map -> a 16x16x16 appearance embedding.

Corresponds to the encoder branch of PHALP's ``EncodingHead`` (``HMAR.encoding_head`` called as
``HMAR.autoencoder_hmar(x, en=True)``), which is the only part of HMAR the 4D-Humans tracking
path runs: HMR2.0 replaces HMAR's backbone and SMPL head, the texture sampler its texture head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import AppearanceEncoderConfig


class PhalpAppearanceEncoder(nn.Module):
    """``EncodingHead(en=True)``: six 3x3 convs with ReLU, 2x2 max-pool after the first four.

    Input (B, 4, 256, 256): a processed UV map (`process_uv_image`); output (B, 16, 16, 16).
    Parameter names are those of ``EncodingHead`` so HMAR's weights load key for key.
    """

    def __init__(self, config: AppearanceEncoderConfig | None = None) -> None:
        super().__init__()
        self.config = config or AppearanceEncoderConfig()
        c = self.config.channels
        self.conv1x = nn.Conv2d(self.config.in_channels, c[0], 3, padding=1)
        self.conv2 = nn.Conv2d(c[0], c[1], 3, padding=1)
        self.conv3 = nn.Conv2d(c[1], c[2], 3, padding=1)
        self.conv4 = nn.Conv2d(c[2], c[3], 3, padding=1)
        self.conv5 = nn.Conv2d(c[3], c[4], 3, padding=1)
        self.conv5_1 = nn.Conv2d(c[4], c[5], 3, padding=1)

    def forward(self, uv: torch.Tensor) -> torch.Tensor:
        # Channels-last activations: ~1.5x faster convolutions on CPU (oneDNN's native layout),
        # the same sums up to float rounding; the output's logical order is unchanged.
        x = uv.contiguous(memory_format=torch.channels_last)
        x = F.max_pool2d(F.relu(self.conv1x(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.max_pool2d(F.relu(self.conv3(x)), 2)
        x = F.max_pool2d(F.relu(self.conv4(x)), 2)
        x = F.relu(self.conv5(x))
        return F.relu(self.conv5_1(x))

    @torch.no_grad()
    def embed(self, uv: torch.Tensor) -> torch.Tensor:
        """(B, 4, H, W) processed UV maps -> (B, D) embeddings flattened in (channel, row, col) order."""
        return self(uv).flatten(1)


def process_uv_image(uv_image: torch.Tensor) -> torch.Tensor:
    """HMAR ``process_uv_image``: sampled texture -> the encoder's input units.

    Channels 0-2 are ImageNet-normalised RGB, channel 3 the sampled visibility/mask value (0 where
    not seen). Seen texels keep RGB / 5 and get mask +1; unseen texels get RGB 0 and mask -1.
    """
    if uv_image.ndim != 4 or uv_image.shape[1] != 4:
        raise ValueError(f"expected UV images of shape (B, 4, H, W), got {tuple(uv_image.shape)}")
    seen = uv_image[:, 3:4] != 0
    rgb = torch.where(seen, uv_image[:, :3] / 5.0, torch.zeros((), dtype=uv_image.dtype, device=uv_image.device))
    mask = torch.where(seen, 1.0, -1.0).to(uv_image.dtype)
    return torch.cat([rgb, mask], dim=1)
