"""HMR2.0 configuration: the numbers the network and its pre/post-processing depend on.

Read at the edge from 4D-Humans' ``model_config.yaml`` (`from_model_config`); the published
file does not carry the ViT size (4D-Humans hard-codes ViT-H), so the optional keys
``MODEL.BACKBONE.EMBED_DIM/DEPTH/NUM_HEADS/MLP_RATIO`` default to ViT-H.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml

from ...errors import WeightsError


@dataclass(frozen=True)
class HMR2ViTConfig:
    """The ViT backbone (4D-Humans' ``vit()``, a ViTPose-style ViT without class token)."""

    img_size: tuple[int, int] = (256, 192)  # (height, width) of the backbone input
    patch_size: int = 16
    patch_padding: int = 2  # the conv pads by 2: the last 2 rows/columns are never seen
    embed_dim: int = 1280
    depth: int = 32
    num_heads: int = 16
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    norm_eps: float = 1e-6

    @property
    def grid(self) -> tuple[int, int]:
        return self.img_size[0] // self.patch_size, self.img_size[1] // self.patch_size


@dataclass(frozen=True)
class HMR2HeadConfig:
    """The SMPL transformer-decoder head (``SMPLTransformerDecoderHead``)."""

    dim: int = 1024  # token width (constructor default; the released config does not set it)
    depth: int = 6
    heads: int = 8
    dim_head: int = 64
    mlp_dim: int = 1024
    context_dim: int = 1280  # = backbone embed_dim
    ief_iters: int = 1  # iterative error feedback rounds
    joint_rep: Literal["6d"] = "6d"
    input_is_mean_shape: bool = False  # query token: zero scalar (False) or the current estimate
    norm_eps: float = 1e-5
    num_body_joints: int = 23

    @property
    def npose(self) -> int:
        return 6 * (self.num_body_joints + 1)


@dataclass(frozen=True)
class HMR2Config:
    backbone: HMR2ViTConfig = field(default_factory=HMR2ViTConfig)
    head: HMR2HeadConfig = field(default_factory=HMR2HeadConfig)
    image_size: int = 256  # side of the square person crop
    bbox_shape: tuple[int, int] = (192, 256)  # (w, h) aspect the person box is expanded to
    image_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # RGB, of [0, 1] pixels
    image_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    focal_length: float = 5000.0  # pixels, for an image of side `image_size`
    # SMPL files, relative to the 4D-Humans cache root as in the released config.
    smpl_model_path: str = "data/smpl"
    smpl_gender: str = "neutral"
    joint_regressor_extra: str = "data/SMPL_to_J19.pkl"
    mean_params: str = "data/smpl_mean_params.npz"

    @classmethod
    def from_model_config(cls, cfg: Mapping[str, Any]) -> "HMR2Config":
        """Translate 4D-Humans' ``model_config.yaml`` (as a plain mapping)."""
        try:
            model = cfg["MODEL"]
            smpl = cfg.get("SMPL", {})
            extra = cfg.get("EXTRA", {})
            bb = model.get("BACKBONE", {})
            head = model["SMPL_HEAD"]
            dec = dict(head.get("TRANSFORMER_DECODER", {}))
        except (KeyError, TypeError, AttributeError) as exc:
            raise WeightsError("model_config_invalid", f"model_config.yaml lacks the MODEL/SMPL_HEAD sections: {exc}") from exc
        if bb.get("TYPE", "vit") != "vit":
            raise WeightsError("model_config_invalid", f"expected MODEL.BACKBONE.TYPE 'vit', got {bb.get('TYPE')!r}")
        if head.get("TYPE", "transformer_decoder") != "transformer_decoder":
            raise WeightsError("model_config_invalid", f"expected SMPL_HEAD.TYPE 'transformer_decoder', got {head.get('TYPE')!r}")
        if head.get("JOINT_REP", "6d") != "6d":
            raise WeightsError("model_config_invalid", f"only the 6d joint representation is supported, got {head.get('JOINT_REP')!r}")
        vit = HMR2ViTConfig(
            embed_dim=int(bb.get("EMBED_DIM", 1280)),
            depth=int(bb.get("DEPTH", 32)),
            num_heads=int(bb.get("NUM_HEADS", 16)),
            mlp_ratio=float(bb.get("MLP_RATIO", 4)),
        )
        decoder = HMR2HeadConfig(
            dim=int(dec.get("dim", 1024)),
            depth=int(dec["depth"]),
            heads=int(dec["heads"]),
            dim_head=int(dec.get("dim_head", 64)),
            mlp_dim=int(dec["mlp_dim"]),
            context_dim=int(dec.get("context_dim", vit.embed_dim)),
            ief_iters=int(head.get("IEF_ITERS", 1)),
            input_is_mean_shape=head.get("TRANSFORMER_INPUT", "zero") == "mean_shape",
            num_body_joints=int(smpl.get("NUM_BODY_JOINTS", 23)),
        )
        bbox_shape = model.get("BBOX_SHAPE") or (192, 256)
        return cls(
            backbone=vit,
            head=decoder,
            image_size=int(model.get("IMAGE_SIZE", 256)),
            bbox_shape=(int(bbox_shape[0]), int(bbox_shape[1])),
            image_mean=tuple(float(v) for v in model.get("IMAGE_MEAN", (0.485, 0.456, 0.406))),  # type: ignore[arg-type]
            image_std=tuple(float(v) for v in model.get("IMAGE_STD", (0.229, 0.224, 0.225))),  # type: ignore[arg-type]
            focal_length=float(extra.get("FOCAL_LENGTH", 5000)),
            smpl_model_path=str(smpl.get("MODEL_PATH", "data/smpl")),
            smpl_gender=str(smpl.get("GENDER", "neutral")),
            joint_regressor_extra=str(smpl.get("JOINT_REGRESSOR_EXTRA", "data/SMPL_to_J19.pkl")),
            mean_params=str(smpl.get("MEAN_PARAMS", "data/smpl_mean_params.npz")),
        )

    @classmethod
    def from_yaml(cls, path: str | Path) -> "HMR2Config":
        try:
            with open(path) as fh:
                # Hydra interpolations (``${...}``) stay plain strings; none of them are read here.
                cfg = yaml.safe_load(fh)
        except (OSError, yaml.YAMLError) as exc:
            raise WeightsError("model_config_invalid", f"cannot read {path}: {exc}") from exc
        if not isinstance(cfg, dict):
            raise WeightsError("model_config_invalid", f"{path}: expected a YAML mapping, got {type(cfg).__name__}")
        return cls.from_model_config(cfg)


def hmr2_b() -> HMR2Config:
    """The released HMR2.0b: ViT-H backbone, 6-layer decoder of width 1024."""
    return HMR2Config()


def hmr2_tiny() -> HMR2Config:
    """Same architecture at test size (the sizes of the reference's tiny fixture)."""
    return HMR2Config(
        backbone=HMR2ViTConfig(embed_dim=96, depth=3, num_heads=4, mlp_ratio=4.0),
        head=HMR2HeadConfig(dim=64, depth=2, heads=4, dim_head=16, mlp_dim=128, context_dim=96),
    )
