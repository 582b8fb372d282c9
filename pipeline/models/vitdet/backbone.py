"""ViT trunk and simple feature pyramid of ViTDet (detectron2 ``modeling/backbone/vit.py``).

Tokens stay channels-last, (B, H, W, C), inside the trunk as in the original; the pyramid
works on NCHW. Attention goes through ``scaled_dot_product_attention`` with the decomposed
relative-position terms folded into the query and key features (see `VitDetAttention`), so
fused kernels are used where the device has them and no (HW, HW) bias is ever built.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import VitDetConfig


class VitDetChannelNorm(nn.Module):
    """LayerNorm over the channel dim of NCHW (detectron2 ``layers.LayerNorm``, the "LN" norm).

    Computed in float32 even under autocast: half-precision variance overflows on ViT-H features.
    """

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        x = self.weight.float()[:, None, None] * x + self.bias.float()[:, None, None]
        return x.to(dtype)


class VitDetConvNorm(nn.Conv2d):
    """Bias-free convolution followed by a channel LayerNorm (detectron2 ``layers.Conv2d`` with
    ``norm="LN"``), optionally a ReLU; the norm is a child named ``norm`` as in the checkpoint."""

    def __init__(self, cin: int, cout: int, kernel: int, *, eps: float, relu: bool = False) -> None:
        super().__init__(cin, cout, kernel, padding=kernel // 2, bias=False)
        self.norm = VitDetChannelNorm(cout, eps)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(super().forward(x))
        return F.relu(x) if self.relu else x


def _relative_table(size: int, table: torch.Tensor) -> torch.Tensor:
    """(size, size, head_dim) embeddings for query/key offsets, as detectron2's ``get_rel_pos``.

    Tables trained for another span are linearly resized first, like the original does.
    """
    span = 2 * size - 1
    if table.shape[0] != span:
        table = F.interpolate(table.t()[None].float(), size=span, mode="linear")[0].t().to(table.dtype)
    coords = torch.arange(size, device=table.device)
    offsets = coords[:, None] - coords[None, :] + (size - 1)
    return table[offsets]


class VitDetAttention(nn.Module):
    """Multi-head self-attention with decomposed relative positions (detectron2 ``vit.Attention``)."""

    def __init__(self, dim: int, num_heads: int, rel_span: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.zeros(rel_span, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(rel_span, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, H, W, C) tokens of one window (or the whole grid) -> same shape.

        The logit of query (i, j) for key (k, l) is ``q·k / sqrt(d) + q·Rh[i, k] + q·Rw[j, l]``
        (the original adds the relative terms with the *unscaled* query). Written out as a
        (HW, HW) bias per head, that is 1 GiB of float32 per image for each global block of
        ViT-H, built and read at every forward. Instead the relative terms become extra
        features: the query gets its H + W relative logits appended, each key a one-hot of its
        row and of its column, so one dot product gives the whole logit inside the fused
        attention kernel. Same sum, different rounding order only.
        """
        b, h, w, c = x.shape
        heads = self.num_heads
        d = c // heads
        qkv = self.qkv(x).reshape(b, h * w, 3, heads, d).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, HW, d)
        rq = q.reshape(b, heads, h, w, d)
        rh = _relative_table(h, self.rel_pos_h).to(q.dtype)  # (H, H_k, d)
        rw = _relative_table(w, self.rel_pos_w).to(q.dtype)  # (W, W_k, d)
        rel_h = torch.einsum("bnhwd,hkd->bnhwk", rq, rh).reshape(b, heads, h * w, h)
        rel_w = torch.einsum("bnhwd,wkd->bnhwk", rq, rw).reshape(b, heads, h * w, w)
        # Fused kernels want one head size for q, k and v, a multiple of 8 on GPUs.
        width = -(-(d + h + w) // 8) * 8
        pad = width - d - h - w
        keys = _key_positions(h, w, pad, q)
        q = torch.cat([q * d**-0.5, rel_h, rel_w, q.new_zeros(b, heads, h * w, pad)], dim=-1)
        k = torch.cat([k, keys.expand(b, heads, -1, -1)], dim=-1)
        v = F.pad(v, (0, width - d))
        out = F.scaled_dot_product_attention(q, k, v, scale=1.0)[..., :d]
        out = out.transpose(1, 2).reshape(b, h, w, c)
        return self.proj(out)


def _key_positions(h: int, w: int, pad: int, like: torch.Tensor) -> torch.Tensor:
    """(HW, H + W + pad) features of each key: one-hot of its row, one-hot of its column, zeros."""
    rows = torch.arange(h, device=like.device).repeat_interleave(w)
    cols = torch.arange(w, device=like.device).repeat(h)
    eye_h = torch.eye(h, dtype=like.dtype, device=like.device)
    eye_w = torch.eye(w, dtype=like.dtype, device=like.device)
    return torch.cat([eye_h[rows], eye_w[cols], like.new_zeros(h * w, pad)], dim=-1)


class VitDetMlp(nn.Module):
    """Linear -> exact GELU -> Linear (timm ``Mlp`` as detectron2's ViT uses it)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class VitDetBlock(nn.Module):
    """Pre-norm transformer block, windowed or global (detectron2 ``vit.Block``)."""

    def __init__(self, cfg: VitDetConfig, window_size: int) -> None:
        super().__init__()
        self.window_size = window_size
        span = 2 * (window_size if window_size > 0 else cfg.grid_size) - 1
        self.norm1 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.attn = VitDetAttention(cfg.embed_dim, cfg.num_heads, span)
        self.norm2 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.mlp = VitDetMlp(cfg.embed_dim, cfg.mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            b, h, w, c = x.shape
            ws = self.window_size
            # Zero-pad to whole windows; the padded tokens take part as keys, unmasked, as in
            # the original (the trained weights expect it).
            ph, pw = (-h) % ws, (-w) % ws
            x = F.pad(x, (0, 0, 0, pw, 0, ph))
            hp, wp = h + ph, w + pw
            x = x.view(b, hp // ws, ws, wp // ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws, ws, c)
            x = self.attn(x)
            x = x.view(b, hp // ws, wp // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)
            x = x[:, :h, :w, :]
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class VitDetPatchEmbed(nn.Module):
    """Non-overlapping patch projection to channels-last tokens (detectron2 ``PatchEmbed``)."""

    def __init__(self, cfg: VitDetConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, cfg.embed_dim, cfg.patch_size, stride=cfg.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class VitDetViT(nn.Module):
    """Plain ViT trunk with absolute + relative positions (detectron2 ``ViT``), stride 16."""

    def __init__(self, cfg: VitDetConfig) -> None:
        super().__init__()
        grid = cfg.pretrain_img_size // cfg.patch_size
        # pre-training grid plus the (unused at detection time) cls token position
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, cfg.embed_dim))
        self.patch_embed = VitDetPatchEmbed(cfg)
        windows = set(cfg.window_block_indexes)
        self.blocks = nn.ModuleList(
            VitDetBlock(cfg, cfg.window_size if i in windows else 0) for i in range(cfg.depth)
        )

    def abs_pos(self, h: int, w: int) -> torch.Tensor:
        """Pre-training position grid resized bicubically to (h, w), channels-last, as the original
        does at every forward."""
        pos = self.pos_embed[:, 1:]
        side = int(round(pos.shape[1] ** 0.5))
        pos = pos.reshape(1, side, side, -1)
        if (side, side) != (h, w):
            pos = F.interpolate(pos.permute(0, 3, 1, 2), size=(h, w), mode="bicubic", align_corners=False)
            pos = pos.permute(0, 2, 3, 1)
        return pos

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, H, W) normalised image -> (B, C, H/16, W/16) last feature map."""
        x = self.patch_embed(x)
        x = x + self.abs_pos(x.shape[1], x.shape[2])
        for block in self.blocks:
            x = block(x)
        return x.permute(0, 3, 1, 2)


class VitDetFeaturePyramid(nn.Module):
    """Simple feature pyramid p2..p6 from the single stride-16 map (detectron2
    ``SimpleFeaturePyramid`` with ``LastLevelMaxPool``).

    Stages are registered before the trunk so the state-dict order matches the checkpoint's.
    """

    def __init__(self, cfg: VitDetConfig) -> None:
        super().__init__()
        dim, out, eps = cfg.embed_dim, cfg.fpn_channels, cfg.norm_eps

        def head(cin: int) -> list[nn.Module]:
            return [VitDetConvNorm(cin, out, 1, eps=eps), VitDetConvNorm(out, out, 3, eps=eps)]

        self.simfp_2 = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 2, 2, stride=2),
            VitDetChannelNorm(dim // 2, eps),
            nn.GELU(),
            nn.ConvTranspose2d(dim // 2, dim // 4, 2, stride=2),
            *head(dim // 4),
        )
        self.simfp_3 = nn.Sequential(nn.ConvTranspose2d(dim, dim // 2, 2, stride=2), *head(dim // 2))
        self.simfp_4 = nn.Sequential(*head(dim))
        self.simfp_5 = nn.Sequential(nn.MaxPool2d(2, stride=2), *head(dim))
        self.net = VitDetViT(cfg)

    def pyramid(self, last: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, C, 64, 64) trunk output -> {"p2": stride 4, ..., "p6": stride 64}."""
        feats = {
            "p2": self.simfp_2(last),
            "p3": self.simfp_3(last),
            "p4": self.simfp_4(last),
            "p5": self.simfp_5(last),
        }
        feats["p6"] = F.max_pool2d(feats["p5"], kernel_size=1, stride=2)
        return feats

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.pyramid(self.net(x))
