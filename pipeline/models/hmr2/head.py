"""SMPL transformer-decoder head of HMR2.0 (4D-Humans' ``SMPLTransformerDecoderHead``).

One query token cross-attends to the 192 backbone tokens; three linear read-outs add to the
mean SMPL pose (6D per joint), shape and weak-perspective camera.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from .config import HMR2HeadConfig


def _split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, _ = t.shape
    return t.reshape(b, n, heads, -1).transpose(1, 2)  # (B, heads, N, dim_head), head-major split


def _merge_heads(t: torch.Tensor) -> torch.Tensor:
    b, h, n, d = t.shape
    return t.transpose(1, 2).reshape(b, n, h * d)


class HMR2SelfAttention(nn.Module):
    """``pose_transformer.Attention``: bias-free qkv, output projection with bias."""

    def __init__(self, dim: int, heads: int, dim_head: int) -> None:
        super().__init__()
        self.heads = heads
        inner = heads * dim_head
        self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (_split_heads(t, self.heads) for t in self.to_qkv(x).chunk(3, dim=-1))
        return self.to_out(_merge_heads(F.scaled_dot_product_attention(q, k, v)))


class HMR2CrossAttention(nn.Module):
    """``pose_transformer.CrossAttention``: ``to_kv`` gives [k | v] from the context."""

    def __init__(self, dim: int, context_dim: int, heads: int, dim_head: int) -> None:
        super().__init__()
        self.heads = heads
        inner = heads * dim_head
        self.to_kv = nn.Linear(context_dim, inner * 2, bias=False)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        k, v = self.to_kv(context).chunk(2, dim=-1)
        q, k, v = (_split_heads(t, self.heads) for t in (self.to_q(x), k, v))
        return self.to_out(_merge_heads(F.scaled_dot_product_attention(q, k, v)))


class HMR2FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        # Indices 0 and 3 as in the original Sequential (GELU and dropout in between).
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Identity(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class HMR2PreNorm(nn.Module):
    def __init__(self, dim: int, fn: nn.Module, eps: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.fn = fn

    def forward(self, x: torch.Tensor, **kwargs: torch.Tensor) -> torch.Tensor:
        return self.fn(self.norm(x), **kwargs)


class HMR2CrossAttnTransformer(nn.Module):
    """``TransformerCrossAttn``: per layer self-attention, cross-attention, feed-forward."""

    def __init__(self, cfg: HMR2HeadConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [
                    HMR2PreNorm(cfg.dim, HMR2SelfAttention(cfg.dim, cfg.heads, cfg.dim_head), cfg.norm_eps),
                    HMR2PreNorm(cfg.dim, HMR2CrossAttention(cfg.dim, cfg.context_dim, cfg.heads, cfg.dim_head), cfg.norm_eps),
                    HMR2PreNorm(cfg.dim, HMR2FeedForward(cfg.dim, cfg.mlp_dim), cfg.norm_eps),
                ]
            )
            for _ in range(cfg.depth)
        )

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        layers = cast("Iterable[tuple[HMR2PreNorm, HMR2PreNorm, HMR2PreNorm]]", self.layers)  # [self-attn, cross-attn, feed-forward]
        for self_attn, cross_attn, ff in layers:
            x = self_attn(x) + x
            x = cross_attn(x, context=context) + x
            x = ff(x) + x
        return x


class HMR2TransformerDecoder(nn.Module):
    """``TransformerDecoder``: token embedding + learned position, then the layer stack."""

    def __init__(self, cfg: HMR2HeadConfig) -> None:
        super().__init__()
        token_dim = cfg.npose + 10 + 3 if cfg.input_is_mean_shape else 1
        self.to_token_embedding = nn.Linear(token_dim, cfg.dim)
        self.pos_embedding = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.transformer = HMR2CrossAttnTransformer(cfg)

    def forward(self, token: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = self.to_token_embedding(token) + self.pos_embedding[:, : token.shape[1]]
        return self.transformer(x, context=context)


def rot6d_to_rotmat(x: torch.Tensor) -> torch.Tensor:
    """(..., 6) -> (..., 3, 3). The 6 numbers are the first two *columns* (a1 = x[0:3], a2 = x[3:6]);
    Gram-Schmidt gives b1, b2 and b3 = b1 x b2 as the columns of R."""
    a1, a2 = x[..., 0:3], x[..., 3:6]
    b1 = F.normalize(a1, dim=-1)
    b2 = F.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    b3 = torch.linalg.cross(b1, b2, dim=-1)
    return torch.stack((b1, b2, b3), dim=-1)


class HMR2SMPLHead(nn.Module):
    """Backbone features (B, C, H, W) -> SMPL rotations, betas and crop camera (s, tx, ty)."""

    init_body_pose: torch.Tensor  # buffers
    init_betas: torch.Tensor
    init_cam: torch.Tensor

    def __init__(self, cfg: HMR2HeadConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.transformer = HMR2TransformerDecoder(cfg)
        self.decpose = nn.Linear(cfg.dim, cfg.npose)
        self.decshape = nn.Linear(cfg.dim, 10)
        self.deccam = nn.Linear(cfg.dim, 3)
        # Mean parameters (smpl_mean_params.npz); the checkpoint holds the same values.
        self.register_buffer("init_body_pose", torch.zeros(1, cfg.npose))
        self.register_buffer("init_betas", torch.zeros(1, 10))
        self.register_buffer("init_cam", torch.zeros(1, 3))

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        batch = features.shape[0]
        context = features.flatten(2).transpose(1, 2)  # (B, H*W, C), row-major over the grid
        pose = self.init_body_pose.expand(batch, -1)
        betas = self.init_betas.expand(batch, -1)
        cam = self.init_cam.expand(batch, -1)
        token_out = context.new_zeros(batch, self.cfg.dim)
        for _ in range(self.cfg.ief_iters):
            if self.cfg.input_is_mean_shape:
                token = torch.cat([pose, betas, cam], dim=1)[:, None, :]
            else:
                token = context.new_zeros(batch, 1, 1)
            token_out = self.transformer(token, context=context)[:, 0]
            pose = self.decpose(token_out) + pose
            betas = self.decshape(token_out) + betas
            cam = self.deccam(token_out) + cam
        rotmats = rot6d_to_rotmat(pose.reshape(batch, -1, 6))
        return {
            "global_orient": rotmats[:, :1],
            "body_pose": rotmats[:, 1:],
            "betas": betas,
            "pred_cam": cam,
            "token_out": token_out,
        }
