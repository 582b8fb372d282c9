"""RegNetY trunk and FPN (detectron2 ``modeling/backbone/regnet.py`` and ``fpn.py``).

Every norm is a BatchNorm used with its running statistics (the checkpoint's SyncBN is exactly
that in eval mode). Module names follow the model-zoo state dict: ``bottom_up.stem.{conv,bn}``,
``bottom_up.s{i}.b{j}.{proj,bn,f.*}``, ``fpn_lateral{2..5}``, ``fpn_output{2..5}``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import RegNetYConfig

TRUNK_LEVELS: tuple[str, ...] = ("s1", "s2", "s3", "s4")
PYRAMID_LEVELS: tuple[str, ...] = ("p2", "p3", "p4", "p5", "p6")


class ConvBN(nn.Conv2d):
    """Bias-free convolution followed by a BatchNorm child named ``norm`` (detectron2
    ``layers.Conv2d`` with ``norm="BN"``/``"SyncBN"``), optionally a ReLU."""

    def __init__(self, cin: int, cout: int, kernel: int, *, eps: float, relu: bool = False) -> None:
        super().__init__(cin, cout, kernel, padding=kernel // 2, bias=False)
        self.norm = nn.BatchNorm2d(cout, eps=eps)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(super().forward(x))
        return F.relu(x) if self.relu else x


class Stem(nn.Module):
    """3x3 stride-2 conv, BN, ReLU (detectron2 ``SimpleStem``)."""

    def __init__(self, width: int, eps: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, stride=2, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class SqueezeExcitation(nn.Module):
    """``x * sigmoid(conv(relu(conv(avgpool(x)))))``; ``f_ex`` indices as in the checkpoint
    (0 and 2 are the convolutions, 1 the ReLU, 3 the sigmoid)."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.f_ex = nn.Sequential(
            nn.Conv2d(channels, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, channels, 1), nn.Sigmoid()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.f_ex(F.adaptive_avg_pool2d(x, 1))


class BottleneckTransform(nn.Module):
    """1x1 conv, BN, ReLU; grouped 3x3 conv (stride here), BN, ReLU; SE; 1x1 conv, BN."""

    def __init__(self, w_in: int, w_out: int, stride: int, groups: int, se_width: int, cfg: RegNetYConfig) -> None:
        super().__init__()
        w_b = int(round(w_out * cfg.bottleneck_ratio))
        eps = cfg.bn_eps
        self.a = nn.Conv2d(w_in, w_b, 1, bias=False)
        self.a_bn = nn.BatchNorm2d(w_b, eps=eps)
        self.b = nn.Conv2d(w_b, w_b, 3, stride=stride, padding=1, groups=groups, bias=False)
        self.b_bn = nn.BatchNorm2d(w_b, eps=eps)
        self.se = SqueezeExcitation(w_b, se_width)
        self.c = nn.Conv2d(w_b, w_out, 1, bias=False)
        self.c_bn = nn.BatchNorm2d(w_out, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.a_bn(self.a(x)))
        x = F.relu(self.b_bn(self.b(x)))
        return self.c_bn(self.c(self.se(x)))


class ResBottleneckBlock(nn.Module):
    """``relu(shortcut(x) + f(x))``; the shortcut is a strided 1x1 conv + BN where the width or
    the resolution changes (the first block of each stage), the identity otherwise."""

    def __init__(self, w_in: int, w_out: int, stride: int, groups: int, cfg: RegNetYConfig) -> None:
        super().__init__()
        self.proj: nn.Module | None = None
        self.bn: nn.Module | None = None
        if w_in != w_out or stride != 1:
            self.proj = nn.Conv2d(w_in, w_out, 1, stride=stride, bias=False)
            self.bn = nn.BatchNorm2d(w_out, eps=cfg.bn_eps)
        self.f = BottleneckTransform(w_in, w_out, stride, groups, cfg.se_width(w_in), cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.proj is None or self.bn is None else self.bn(self.proj(x))
        return F.relu(shortcut + self.f(x))


class RegNet(nn.Module):
    """Stem and stages ``s1..s4`` (strides 4, 8, 16, 32), blocks ``b1..`` in each."""

    def __init__(self, cfg: RegNetYConfig) -> None:
        super().__init__()
        self.stem = Stem(cfg.stem_width, cfg.bn_eps)
        specs = cfg.stage_specs()
        if len(specs) != len(TRUNK_LEVELS):
            raise ValueError(f"expected RegNet parameters giving {len(TRUNK_LEVELS)} stages, they give {len(specs)}")
        w_in = cfg.stem_width
        for name, spec in zip(TRUNK_LEVELS, specs):
            stage = nn.Sequential()
            for j in range(spec.depth):
                stage.add_module(f"b{j + 1}", ResBottleneckBlock(w_in, spec.width, 2 if j == 0 else 1, spec.groups, cfg))
                w_in = spec.width
            self.add_module(name, stage)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.stem(x)
        out = {}
        for name in TRUNK_LEVELS:
            x = getattr(self, name)(x)
            out[name] = x
        return out


class RegNetFPN(nn.Module):
    """Top-down FPN on ``s1..s4``: 1x1 lateral and 3x3 output convs with BN and no activation,
    nearest x2 upsampling and sum, ``p6`` a stride-2 subsample of ``p5``.

    The convs are registered before the trunk, level by level, as detectron2's ``FPN`` does, so
    the state dict's key order is the checkpoint's.
    """

    def __init__(self, cfg: RegNetYConfig) -> None:
        super().__init__()
        c = cfg.fpn_channels
        for level, width in zip(range(2, 6), cfg.stage_widths):
            self.add_module(f"fpn_lateral{level}", ConvBN(width, c, 1, eps=cfg.bn_eps))
            self.add_module(f"fpn_output{level}", ConvBN(c, c, 3, eps=cfg.bn_eps))
        self.bottom_up = RegNet(cfg)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.pyramid(self.bottom_up(x))

    def pyramid(self, trunk: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``p2..p6`` from the trunk's ``s1..s4``."""
        levels = list(range(2, 6))
        prev = getattr(self, "fpn_lateral5")(trunk[TRUNK_LEVELS[-1]])
        out = {"p5": getattr(self, "fpn_output5")(prev)}
        for level, name in zip(reversed(levels[:-1]), reversed(TRUNK_LEVELS[:-1])):
            lateral = getattr(self, f"fpn_lateral{level}")(trunk[name])
            prev = lateral + F.interpolate(prev, scale_factor=2.0, mode="nearest")
            out[f"p{level}"] = getattr(self, f"fpn_output{level}")(prev)
        out["p6"] = F.max_pool2d(out["p5"], kernel_size=1, stride=2, padding=0)
        return {name: out[name] for name in PYRAMID_LEVELS}
