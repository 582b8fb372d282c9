"""Tiny PHALP files in PHALP's cache layout and formats (random weights, small widths).

Writes under ``roots.phalp``: ``weights/hmar_v2_weights.pth`` (``{'model': {'HMAR.*': ...}}``,
encoder plus a few of the HMAR keys tracking ignores), ``weights/pose_predictor.pth`` (a
Lightning-style dict with ``encoder.*`` keys, unused parts included),
``weights/pose_predictor.yaml``, ``3D/mean_std.npy`` and a UV atlas ``3D/bmap_256.npy`` /
``3D/fmap_256.npy`` over the SMPL faces (read from the tiny HMR2 SMPL when present).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import yaml

from ..models.phalp import files as phalp_files
from ..models.phalp.config import AppearanceEncoderConfig, PosePredictorConfig
from ..models.phalp.encoder import PhalpAppearanceEncoder
from ..models.phalp.predictor import PhalpPoseTransformer
from ..weights import CacheRoots

TINY_ENCODER = AppearanceEncoderConfig(channels=(4, 8, 8, 8, 8, 16))
TINY_PREDICTOR = PosePredictorConfig(
    in_feat=16, frame_length=125, mid_dim=32, depth=2, heads=2, dim_head=8, mlp_dim=32, num_action_classes=60
)
NUM_SMPL_FACES = 13776


def _yaml_dict(c: PosePredictorConfig) -> dict:
    return {
        "configs": {
            "in_feat": c.in_feat,
            "frame_length": c.frame_length,
            "max_people": 5,
            "num_smpl_heads": c.num_smpl_heads,
            "mask_type_test": "zero",
            "extra_feat": {"enable": "", "pose_shape": {"dim": c.pose_dim, "mid_dim": c.mid_dim, "en_dim": c.in_feat}},
            "transformer": {
                "depth": c.depth, "heads": c.heads, "mlp_dim": c.mlp_dim, "dim_head": c.dim_head,
                "dropout": 0.1, "emb_dropout": 0.1, "droppath": 0.4,
                "conv": {"pad": c.conv_pad, "stride": c.conv_stride},
            },
            "ava": {"num_action_classes": 80, "num_valid_action_classes": c.num_action_classes, "predict_valid": True},
        }
    }


def _randomise(module: torch.nn.Module, gen: torch.Generator, scale: float = 1.0) -> dict[str, torch.Tensor]:
    state = {}
    for k, v in module.state_dict().items():
        fan_in = v[0].numel() if v.ndim > 1 else 1
        state[k] = torch.randn(v.shape, generator=gen) * (scale / max(fan_in, 1) ** 0.5 if v.ndim > 1 else 0.02)
    return state


def _atlas(n_faces: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A UV atlas: a disc of texels, each on a random face with random barycentric weights."""
    yy, xx = np.mgrid[0:size, 0:size]
    inside = (xx - size / 2 + 0.5) ** 2 + (yy - size / 2 + 0.5) ** 2 < (0.48 * size) ** 2
    fmap = np.where(inside, rng.integers(0, n_faces, (size, size)), -1).astype(np.int64)
    w = rng.random((size, size, 3)) + 0.05
    bmap = (w / w.sum(-1, keepdims=True)).astype(np.float32)
    return bmap, fmap


def write_tiny_phalp(roots: CacheRoots, seed: int = 0) -> list[Path]:
    """Write tiny versions of every PHALP file the tracking path reads; returns their paths."""
    root = roots.phalp
    gen = torch.Generator().manual_seed(seed + 5000)
    rng = np.random.default_rng(seed + 5000)
    paths = {f.key: root / f.path for f in phalp_files.FILES}
    for p in paths.values():
        p.parent.mkdir(parents=True, exist_ok=True)

    encoder = PhalpAppearanceEncoder(TINY_ENCODER)
    enc_state = _randomise(encoder, gen, scale=2.0**0.5)
    model = {f"HMAR.encoding_head.{k}": v for k, v in enc_state.items()}
    # Keys of HMAR that tracking ignores, so the loader's ignore list is exercised.
    model["HMAR.encoding_head.t_conv5_1.weight"] = torch.zeros(4, 16, 3, 3)
    model["HMAR.backbone.conv1.weight"] = torch.zeros(4, 3, 3, 3)
    model["HMAR.smplx_head.fc1.bias"] = torch.zeros(4)
    torch.save({"model": model}, paths["phalp.hmar_weights"])

    net = PhalpPoseTransformer(TINY_PREDICTOR)
    state = _randomise(net, gen)
    c = TINY_PREDICTOR
    init_pose = torch.zeros(1, 6 * (c.num_body_joints + 1))
    init_pose[0, 0::6] = 1.0  # identity rotations in 6D
    init_pose[0, 4::6] = 1.0
    state["smpl_head.0.init_body_pose"] = init_pose
    state["smpl_head.0.init_betas"] = torch.zeros(1, 10)
    state["smpl_head.0.init_cam"] = torch.tensor([[0.9, 0.0, 0.0]])
    for k in list(state):
        if "norm.weight" in k:
            state[k] = torch.ones_like(state[k])
        if k.endswith("dec" + "pose.weight") or k.endswith("decshape.weight") or k.endswith("deccam.weight"):
            state[k] = state[k] * 0.01
    ckpt_state = {f"encoder.{k}": v for k, v in state.items()}
    # Parts of lart_transformer that predict_next never runs (ignored by the loader).
    ckpt_state["encoder.class_token"] = torch.zeros(1, 1, c.in_feat)
    ckpt_state["encoder.pos_embedding"] = torch.zeros(c.frame_length, c.in_feat)
    ckpt_state["encoder.pe"] = torch.zeros(c.frame_length, c.in_feat)
    ckpt_state["encoder.transformer.layers.0.0.norm.weight"] = torch.ones(c.in_feat)
    ckpt_state["encoder.action_head_ava.0.0.weight"] = torch.zeros(c.num_action_classes, c.in_feat)
    ckpt_state["encoder.action_head_ava.0.0.bias"] = torch.zeros(c.num_action_classes)
    torch.save(
        {"epoch": 0, "global_step": 0, "pytorch-lightning_version": "2.0.0", "state_dict": ckpt_state},
        paths["phalp.pose_predictor"],
    )
    paths["phalp.pose_predictor_config"].write_text(yaml.safe_dump(_yaml_dict(c), sort_keys=False))

    mean = np.zeros((1, 226), np.float32)
    mean[0, :216] = np.tile(np.eye(3, dtype=np.float32).reshape(-1), 24) * 0.5
    std = np.full((1, 226), 0.3, np.float32)
    np.save(paths["phalp.mean_std"], np.stack([mean, std]))

    n_faces = NUM_SMPL_FACES
    smpl = roots.hmr2 / "data" / "smpl" / "SMPL_NEUTRAL.pkl"
    if smpl.is_file():
        from ..models.smpl import read_smpl_pickle

        n_faces = int(np.asarray(read_smpl_pickle(smpl)["f"]).shape[0])
    bmap, fmap = _atlas(n_faces, 256, rng)
    np.save(paths["phalp.bmap"], bmap)
    np.save(paths["phalp.fmap"], fmap)
    return [paths[f.key] for f in phalp_files.FILES]
