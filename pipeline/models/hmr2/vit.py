"""ViT backbone of HMR2.0 (4D-Humans' ``hmr2.models.backbones.vit.ViT``, ViTPose style).

A plain pre-norm ViT over a 256x192 person crop: 16x12 patch tokens, no class token, absolute
position embedding, and a channels-first (C, 16, 12) feature map out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import HMR2ViTConfig


class HMR2PatchEmbed(nn.Module):
    """Conv patch embedding; note the padding of 2 the original uses with a 16-px kernel."""

    def __init__(self, cfg: HMR2ViTConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, cfg.embed_dim, kernel_size=cfg.patch_size, stride=cfg.patch_size, padding=cfg.patch_padding)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.proj(x)
        grid = (x.shape[2], x.shape[3])
        return x.flatten(2).transpose(1, 2), grid


class HMR2Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection split as [3][heads][head_dim]."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # scale 1/sqrt(head_dim)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class HMR2Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()  # exact (erf) form, as the original
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class HMR2Block(nn.Module):
    def __init__(self, cfg: HMR2ViTConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.attn = HMR2Attention(cfg.embed_dim, cfg.num_heads, cfg.qkv_bias)
        self.norm2 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.mlp = HMR2Mlp(cfg.embed_dim, int(cfg.embed_dim * cfg.mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class HMR2ViT(nn.Module):
    """Input (B, 3, 256, 192) normalised RGB crop; output (B, C, 16, 12) features."""

    def __init__(self, cfg: HMR2ViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        gh, gw = cfg.grid
        self.patch_embed = HMR2PatchEmbed(cfg)
        # One slot per patch plus the class-token slot of the pre-training layout.
        self.pos_embed = nn.Parameter(torch.zeros(1, gh * gw + 1, cfg.embed_dim))
        self.blocks = nn.ModuleList(HMR2Block(cfg) for _ in range(cfg.depth))
        self.last_norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        tokens, grid = self.patch_embed(x)
        # The original adds the class-token slot to every token as well (there is no class token).
        return tokens + self.pos_embed[:, 1:] + self.pos_embed[:, :1], grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens, (gh, gw) = self.embed(x)
        for block in self.blocks:
            tokens = block(tokens)
        tokens = self.last_norm(tokens)
        return tokens.transpose(1, 2).reshape(x.shape[0], -1, gh, gw).contiguous()
