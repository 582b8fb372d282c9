"""PHALP's temporal pose predictor: a track's recent SMPL poses -> its pose a few frames ahead.

Corresponds to PHALP's ``Pose_transformer_v2`` (``predict_next``) around LART's
``lart_transformer``; only the parts ``predict_next`` runs are built: the pose encoder, the
masked transformer, the convolutional bottleneck, the second transformer and the SMPL and
location read-out heads of head 0. Sub-module names follow ``lart_transformer`` so the published
checkpoint loads key for key (see `convert.convert_pose_predictor_state_dict`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import PosePredictorConfig


@dataclass(frozen=True)
class KeySlots:
    """Per row, the canvas slots that hold a detection: ``index`` (B, M), ``padding`` (B, M) True
    where a row has fewer than M such slots (padded with slot 0, masked like an empty slot)."""

    index: torch.Tensor
    padding: torch.Tensor

    @classmethod
    def of(cls, has_detection: torch.Tensor) -> "KeySlots":
        """From the (B, L) slot mask. When some row holds no detection at all every slot is kept
        and masked as in the reference (its attention is then uniform over the masked slots)."""
        counts = has_detection.sum(dim=1)
        b, length = has_detection.shape
        if b == 0 or int(counts.min()) == 0:
            index = torch.arange(length, device=has_detection.device).expand(b, -1)
            return cls(index, ~has_detection)
        m = int(counts.max())
        # Stable sort puts each row's detection slots first, in slot order.
        order = torch.sort((~has_detection).to(torch.int8), dim=1, stable=True).indices[:, :m]
        padding = torch.arange(m, device=counts.device)[None, :] >= counts[:, None]
        return cls(order.masked_fill(padding, 0), padding)


class PhalpPreNorm(nn.Module):
    """LART ``PreNorm``: LayerNorm then the wrapped block (``norm`` / ``fn`` keys)."""

    def __init__(self, dim: int, fn: nn.Module) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.norm(x))


class PhalpAttention(nn.Module):
    """LART ``Attention``: multi-head self-attention whose logits towards empty slots are -1000.

    The reference assigns -1000 (not -inf) to masked logits; kept for padded key slots, and for
    a row without any detection, where it makes the attention uniform as in the reference.
    """

    def __init__(self, dim: int, heads: int, dim_head: int) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.scale = dim_head**-0.5
        self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim))

    def forward(self, queries: torch.Tensor, context: torch.Tensor, keys: KeySlots | None = None) -> torch.Tensor:
        """``queries`` (B, Q, D) attend to ``context`` (B, N, D), or to the slots ``keys`` names.

        The reference computes all N queries, keys and values and masks the logits of empty
        slots to -1000. Leaving such a key out changes nothing: its logit is about 1000 below the
        others, so its softmax weight underflows to exactly 0 in float32. Computing K and V for
        the few slots that hold detections (at most 7 of 125 in tracking), and queries only
        where they are read, is what makes the predictor cheap.
        """
        b, nq, dim = queries.shape
        inner = self.to_qkv.out_features // 3
        w = self.to_qkv.weight
        if keys is not None:
            context = torch.gather(context, 1, keys.index[..., None].expand(-1, -1, dim))
        m = context.shape[1]
        k, v = F.linear(context, w[inner:]).chunk(2, dim=-1)
        k, v = (t.reshape(b, m, self.heads, -1).transpose(1, 2) for t in (k, v))  # (B, H, M, dh)
        if self.heads * m >= inner:
            q = F.linear(queries, w[:inner]).reshape(b, nq, self.heads, -1).transpose(1, 2)
            dots = torch.matmul(q, k.transpose(-1, -2)) * self.scale
            if keys is not None:
                dots = dots.masked_fill(keys.padding[:, None, None, :], -1e3)
            out = torch.matmul(dots.softmax(dim=-1), v)
            return self.to_out(out.transpose(1, 2).reshape(b, nq, -1))
        # Few keys: fold the query projection into the keys and the output projection into the
        # values (q.k = x.(Wq^T k), Wo(sum a v) = sum a (Wo v)), so each query costs
        # O(heads * keys * dim) instead of O(inner * dim) twice. The same products, reassociated.
        w_q = w[:inner].reshape(self.heads, -1, dim)  # (H, dh, D)
        keys_in = torch.matmul(k, w_q).reshape(b, self.heads * m, dim)  # (B, H*M, D)
        dots = torch.matmul(queries, keys_in.transpose(1, 2)).reshape(b, nq, self.heads, m) * self.scale
        if keys is not None:
            dots = dots.masked_fill(keys.padding[:, None, None, :], -1e3)
        out_proj = cast(nn.Linear, self.to_out[0])
        w_o = out_proj.weight.reshape(-1, self.heads, inner // self.heads).transpose(0, 1)  # (H, D, dh)
        values_out = torch.matmul(v, w_o.transpose(1, 2)).reshape(b, self.heads * m, -1)  # (B, H*M, D)
        attn = dots.softmax(dim=-1).reshape(b, nq, self.heads * m)
        return torch.matmul(attn, values_out) + out_proj.bias


class PhalpFeedForward(nn.Module):
    """LART ``FeedForward``: Linear, exact GELU, Linear (``net.0`` / ``net.3`` keys)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Identity(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class PhalpTransformer(nn.Module):
    """LART ``Transformer``: pre-norm residual attention + feed-forward layers (eval mode)."""

    def __init__(self, dim: int, depth: int, heads: int, dim_head: int, mlp_dim: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [
                    PhalpPreNorm(dim, PhalpAttention(dim, heads, dim_head)),
                    PhalpPreNorm(dim, PhalpFeedForward(dim, mlp_dim)),
                ]
            )
            for _ in range(depth)
        )

    def forward(
        self, x: torch.Tensor, keys: KeySlots | None = None, read: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, L, D) -> (B, L, D); keys are ``keys``' slots only (all slots when None).

        With ``read`` ((B,) one slot per row) the last layer computes only those rows' tokens and
        (B, D) is returned: nothing after it looks at the other slots.
        """
        last = len(self.layers) - 1
        layers = cast("Iterable[tuple[PhalpPreNorm, PhalpPreNorm]]", self.layers)  # [attention, feed-forward] pairs
        for i, (attn, ff) in enumerate(layers):
            context = attn.norm(x)
            if i == last and read is not None:
                rows = torch.arange(x.shape[0], device=x.device)
                x, queries = x[rows, read][:, None], context[rows, read][:, None]
            else:
                queries = context
            x = x + attn.fn(queries, context, keys)
            x = x + ff(x)
        return x[:, 0] if read is not None else x


def rot6d_to_rotmat(x: torch.Tensor) -> torch.Tensor:
    """(N, 6) -> (N, 3, 3), Gram-Schmidt on the two 3-vectors (PHALP ``smpl_head.rot6d_to_rotmat``).

    Columns are b1, b2, b3; the cross product is taken along the vector axis explicitly (the
    reference's ``torch.cross`` without ``dim`` would pick the batch axis for exactly 3 rows).
    """
    x = x.reshape(-1, 2, 3)
    a1, a2 = x[:, 0], x[:, 1]
    b1 = F.normalize(a1, dim=1)
    b2 = F.normalize(a2 - (b1 * a2).sum(dim=1, keepdim=True) * b1, dim=1)
    b3 = torch.linalg.cross(b1, b2, dim=1)
    return torch.stack((b1, b2, b3), dim=-1)


class PhalpSMPLHead(nn.Module):
    """PHALP ``SMPLHead`` with ``pool='pooled'``: iterative regression of 6D pose, betas, camera."""

    init_body_pose: torch.Tensor  # buffers
    init_betas: torch.Tensor
    init_cam: torch.Tensor

    def __init__(self, config: PosePredictorConfig) -> None:
        super().__init__()
        npose = 6 * (config.num_body_joints + 1)
        self.iterations = config.smpl_head_iterations
        self.num_joints = config.num_body_joints + 1
        self.fc1 = nn.Linear(config.in_feat + npose + 13, config.smpl_head_hidden)
        self.fc2 = nn.Linear(config.smpl_head_hidden, config.smpl_head_hidden)
        self.decpose = nn.Linear(config.smpl_head_hidden, npose)
        self.decshape = nn.Linear(config.smpl_head_hidden, 10)
        self.deccam = nn.Linear(config.smpl_head_hidden, 3)
        # Mean parameters; filled from the checkpoint (PHALP reads smpl_mean_params.npz at build).
        self.register_buffer("init_body_pose", torch.zeros(1, npose))
        self.register_buffer("init_betas", torch.zeros(1, 10))
        self.register_buffer("init_cam", torch.zeros(1, 3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, in_feat) -> rotation matrices (N, 24, 3, 3) and betas (N, 10)."""
        n = x.shape[0]
        pose = self.init_body_pose.expand(n, -1)
        betas = self.init_betas.expand(n, -1)
        cam = self.init_cam.expand(n, -1)
        for _ in range(self.iterations):
            h = F.relu(self.fc1(torch.cat([x, pose, betas, cam], dim=1)))
            h = F.relu(self.fc2(h))
            pose = self.decpose(h) + pose
            betas = self.decshape(h) + betas
            cam = self.deccam(h) + cam
        return rot6d_to_rotmat(pose).reshape(n, self.num_joints, 3, 3), betas


class PhalpPoseTransformer(nn.Module):
    """LART ``lart_transformer`` (pose-only, ``max_people = 1``) as ``predict_next`` runs it.

    Not built: the unused 16-layer ``transformer`` stack, the sinusoid tables, the class token
    (prepended and dropped again) and the action head; their checkpoint keys are listed as ignored.
    """

    def __init__(self, config: PosePredictorConfig | None = None) -> None:
        super().__init__()
        c = self.config = config or PosePredictorConfig()
        if c.frame_length % c.conv_stride != 0:
            raise ValueError(f"expected frame_length divisible by conv stride, got {c.frame_length}, {c.conv_stride}")
        self.mask_token = nn.Parameter(torch.zeros(c.in_feat))
        self.pos_embedding_learned1 = nn.Parameter(torch.zeros(1, c.frame_length, c.in_feat))
        self.pos_embedding_learned2 = nn.Parameter(torch.zeros(1, c.frame_length, c.in_feat))
        self.transformer1 = PhalpTransformer(c.in_feat, c.depth, c.heads, c.dim_head, c.mlp_dim)
        self.transformer2 = PhalpTransformer(c.in_feat, 1, c.heads, c.dim_head, c.mlp_dim)
        k = c.conv_kernel
        self.conv_en = nn.Conv1d(c.in_feat, c.in_feat, kernel_size=k, stride=c.conv_stride, padding=c.conv_pad)
        self.conv_de = nn.ConvTranspose1d(c.in_feat, c.in_feat, kernel_size=k, stride=c.conv_stride, padding=c.conv_pad)
        self.pose_shape_encoder = nn.Sequential(
            nn.Linear(c.pose_dim, c.mid_dim), nn.ReLU(), nn.Linear(c.mid_dim, c.in_feat)
        )
        self.smpl_head = nn.ModuleList(PhalpSMPLHead(c) for _ in range(c.num_smpl_heads))
        self.loca_head = nn.ModuleList(
            nn.Sequential(
                nn.Linear(c.in_feat, c.in_feat), nn.ReLU(), nn.Linear(c.in_feat, c.in_feat), nn.ReLU(),
                nn.Linear(c.in_feat, 3),
            )
            for _ in range(c.num_smpl_heads)
        )

    def forward(
        self, canvas: torch.Tensor, has_detection: torch.Tensor, read: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Normalised canvas (B, L, pose_dim) and (B, L) bool -> slot tokens (B, L, in_feat).

        With ``read`` ((B,) slot indices) only those tokens are computed at the end: (B, in_feat).
        """
        x = self.pose_shape_encoder(canvas)
        x = torch.where(has_detection[..., None], x, self.mask_token.to(x.dtype))
        x = x + self.pos_embedding_learned1
        x = self.transformer1(x, keys=KeySlots.of(has_detection))
        x = self.conv_de(self.conv_en(x.transpose(1, 2))).transpose(1, 2)
        x = x + self.pos_embedding_learned2
        return self.transformer2(x, read=read)

    def read_out(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens (N, in_feat) -> pose-camera vectors (N, 229): R_global (9), R_body (207), betas, camera."""
        rotmats, betas = self.smpl_head[0](tokens)
        cam = self.loca_head[0](tokens)
        return torch.cat([rotmats.flatten(1), betas, cam], dim=1)


class PhalpPosePredictor(nn.Module):
    """PHALP ``Pose_transformer_v2.predict_next``: history canvas, normalisation, read-out slot.

    Holds the network and the pose normalisation (``mean_std.npy``, padded to 229 with mean 0,
    std 1 for the camera entries).
    """

    mean: torch.Tensor  # buffers
    std: torch.Tensor

    def __init__(self, config: PosePredictorConfig | None = None) -> None:
        super().__init__()
        self.config = config or PosePredictorConfig()
        self.encoder = PhalpPoseTransformer(self.config)
        self.register_buffer("mean", torch.zeros(self.config.pose_dim))
        self.register_buffer("std", torch.ones(self.config.pose_dim))

    def set_mean_std(self, mean_std: np.ndarray) -> None:
        """Fill ``mean``/``std`` from ``mean_std.npy`` ((2, 1, K) or (2, K), K <= pose_dim)."""
        arr = np.asarray(mean_std, dtype=np.float64)
        if arr.shape[0] != 2 or arr.reshape(2, -1).shape[1] > self.config.pose_dim:
            raise ValueError(f"expected mean_std of shape (2, 1, K<= {self.config.pose_dim}), got {arr.shape}")
        arr = arr.reshape(2, -1)
        k = arr.shape[1]
        mean = np.zeros(self.config.pose_dim)
        std = np.ones(self.config.pose_dim)
        mean[:k], std[:k] = arr[0], arr[1]
        # Assigned, not copied, so a predictor built on the meta device gets real buffers.
        device = torch.device("cpu") if self.mean.is_meta else self.mean.device
        self.mean = torch.from_numpy(mean).to(device, torch.float32)
        self.std = torch.from_numpy(std).to(device, torch.float32)

    def build_canvas(
        self, history_pose: torch.Tensor, history_time: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Place each row's history on the slot canvas.

        Returns the normalised canvas (B, L, D), the slot mask (B, L) and each row's last slot.
        Slot of entry k = its time minus the row's first time, clamped to L-1, later entries
        overwriting earlier ones, as the reference. Histories spanning more than L-1 frames (the
        reference raises there) are anchored at ``t_last - (L-1)`` instead and entries older than
        that are left out, so the newest detections keep their own slots.
        """
        L = self.config.frame_length
        b, h, d = history_pose.shape
        times = history_time.to(torch.int64).cpu()
        first = times[:, :1]
        anchor = torch.maximum(first, times[:, -1:] - (L - 1))
        slots = (times - anchor).clamp(max=L - 1)
        keep = slots >= 0
        canvas = torch.zeros(b, L, d, dtype=torch.float32)
        has = torch.zeros(b, L, dtype=torch.bool)
        poses = history_pose.detach().to("cpu", torch.float32)
        for row in range(b):
            for k in range(h):  # in order: later entries overwrite earlier ones sharing a slot
                if keep[row, k]:
                    s = int(slots[row, k])
                    canvas[row, s] = poses[row, k]
                    has[row, s] = True
        last = slots[:, -1].clone()
        device = self.mean.device
        canvas = canvas.to(device)
        canvas = (canvas - self.mean) / (self.std + 1e-10)
        return canvas, has.to(device), last

    def target_slots(self, last_slot: torch.Tensor, time_since_update: torch.Tensor) -> torch.Tensor:
        """Slot read for each row: ``min(last + time_since_update + 1, L - 1)``."""
        return (last_slot + time_since_update.to(torch.int64).cpu() + 1).clamp(max=self.config.frame_length - 1)

    @torch.no_grad()
    def predict_next(
        self,
        history_pose: torch.Tensor,
        history_time: torch.Tensor,
        time_since_update: torch.Tensor,
        *,
        readout: Literal["first_row", "per_row"] = "first_row",
    ) -> torch.Tensor:
        """(B, H, 229) poses, (B, H) frame indices, (B,) frames since the last hit -> (B, 229).

        ``readout='first_row'`` reads every row at the first row's target slot, as the
        reference does (README of the fixtures, 9.2); ``'per_row'`` reads each row at its own.
        """
        if history_pose.shape[0] == 0:
            return torch.zeros(0, self.config.pose_dim)
        canvas, has, last = self.build_canvas(history_pose, history_time)
        slots = self.target_slots(last, time_since_update)
        if readout == "first_row":
            slots = slots[:1].expand_as(slots)
        picked = self.encoder(canvas, has, read=slots.to(canvas.device))
        return self.encoder.read_out(picked).float().cpu()

    @torch.no_grad()
    def decode_all(self, history_pose: torch.Tensor, history_time: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every slot's read-out (B, L, 229) plus the intermediates (for checks against the reference)."""
        canvas, has, last = self.build_canvas(history_pose, history_time)
        tokens = self.encoder(canvas, has)
        b, L, _ = tokens.shape
        decoded = self.encoder.read_out(tokens.reshape(b * L, -1)).reshape(b, L, -1)
        return {"canvas": canvas, "has_detection": has, "tokens": tokens, "decoded": decoded, "last_slot": last}
