"""Tiny HMR2.0 and a synthetic SMPL in 4D-Humans' cache layout and file formats.

Writes, under ``roots.hmr2``:

* ``data/smpl/SMPL_NEUTRAL.pkl``: a synthetic body model in the format of 4D-Humans' converted
  SMPL pickle (the 14 keys of the release, ``shapedirs`` as a ``chumpy.ch.Ch`` object and the
  regressors as scipy CSC matrices), written without chumpy installed;
* ``data/SMPL_to_J19.pkl``, ``data/smpl_mean_params.npz``;
* ``logs/train/multiruns/hmr2/0/model_config.yaml`` and the Lightning checkpoint beside it,
  with the training-only discriminator keys a real checkpoint carries.

The mesh is a closed tube-like body (6890 vertices, 13776 faces, like SMPL) with a plausible
skeleton, so projected joints and crops look like a standing person. Weights are random.
"""

from __future__ import annotations

import copyreg
import io
import pickle
from pathlib import Path

import numpy as np
import torch
import yaml
from scipy import sparse

from ..models.hmr2 import files as hmr2_files
from ..models.hmr2.config import hmr2_tiny
from ..models.hmr2.model import HMR2
from ..models.smpl import NUM_FACES, NUM_JOINTS, NUM_VERTICES
from ..weights import CacheRoots

# The SMPL kinematic tree (parent of each of the 24 joints; the root's parent is stored as 2**32-1).
SMPL_PARENTS = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21)

# Rough rest positions of the 24 SMPL joints (metres; y up, +x = the subject's left, +z front).
_REST_JOINTS = np.array(
    [
        [0.0, -0.22, 0.0], [0.07, -0.31, 0.0], [-0.07, -0.31, 0.0], [0.0, -0.1, -0.01],
        [0.11, -0.69, 0.0], [-0.11, -0.69, 0.0], [0.0, 0.03, 0.0], [0.12, -1.1, -0.03],
        [-0.12, -1.1, -0.03], [0.0, 0.09, 0.02], [0.12, -1.16, 0.09], [-0.12, -1.16, 0.09],
        [0.0, 0.3, -0.01], [0.08, 0.2, 0.0], [-0.08, 0.2, 0.0], [0.0, 0.45, 0.03],
        [0.18, 0.23, -0.01], [-0.18, 0.23, -0.01], [0.44, 0.22, -0.03], [-0.44, 0.22, -0.03],
        [0.69, 0.23, -0.02], [-0.69, 0.23, -0.02], [0.77, 0.22, -0.02], [-0.77, 0.22, -0.02],
    ],
    dtype=np.float64,
)  # fmt: skip

_RINGS, _SEGMENTS = 82, 84  # 82 * 84 + 2 poles = 6890 vertices, 2 * 82 * 84 = 13776 faces


class _ChumpyArray:
    """Written as ``chumpy.ch.Ch`` with the state layout chumpy pickles (the array in ``x``)."""

    def __init__(self, x: np.ndarray) -> None:
        self.state = {"x": x, "_dirty_vars": set(), "_itr": None, "_depends_on_deps": {}}

    def __reduce_ex__(self, protocol: int):  # type: ignore[override]
        return (copyreg.__newobj__, (type(self),), self.state)  # type: ignore[attr-defined]  # exists at runtime; typeshed's copyreg omits it


class _SMPLPickler(pickle._Pickler):
    """Names `_ChumpyArray` as ``chumpy.ch.Ch`` without importing chumpy."""

    def save_global(self, obj, name=None):
        if obj is _ChumpyArray:
            self.save("chumpy.ch")
            self.save("Ch")
            self.write(pickle.STACK_GLOBAL)
            self.memoize(obj)
            return
        super().save_global(obj, name)


def synthetic_body(seed: int = 0) -> dict[str, np.ndarray]:
    """A closed, consistently oriented body-like mesh with SMPL's vertex/face counts and rig."""
    rng = np.random.default_rng(seed)
    # A tube around the vertical axis, its radius shaped like a body (legs, hips, chest, head).
    ys = np.linspace(0.53, -1.2, _RINGS)
    profile = np.interp(ys, [-1.2, -0.75, -0.3, 0.0, 0.25, 0.33, 0.45, 0.53], [0.06, 0.1, 0.17, 0.14, 0.2, 0.06, 0.1, 0.02])
    angles = np.linspace(0, 2 * np.pi, _SEGMENTS, endpoint=False)
    ring = np.stack([np.sin(angles), np.zeros_like(angles), np.cos(angles)], axis=1)
    verts = [np.array([0.0, 0.56, 0.0])]
    for y, r in zip(ys, profile):
        verts.extend(ring * [r * 1.4, 0.0, r] + [0.0, y, 0.0])
    verts.append(np.array([0.0, -1.23, 0.0]))
    v = np.asarray(verts, dtype=np.float64)
    faces = []
    top, bottom = 0, NUM_VERTICES - 1
    for s in range(_SEGMENTS):
        faces.append([top, 1 + (s + 1) % _SEGMENTS, 1 + s])
    for r in range(_RINGS - 1):
        a0, b0 = 1 + r * _SEGMENTS, 1 + (r + 1) * _SEGMENTS
        for s in range(_SEGMENTS):
            s1 = (s + 1) % _SEGMENTS
            faces.append([a0 + s, a0 + s1, b0 + s])
            faces.append([a0 + s1, b0 + s1, b0 + s])
    last = 1 + (_RINGS - 1) * _SEGMENTS
    for s in range(_SEGMENTS):
        faces.append([bottom, last + s, last + (s + 1) % _SEGMENTS])
    f = np.asarray(faces, dtype=np.uint32)
    assert v.shape == (NUM_VERTICES, 3) and f.shape == (NUM_FACES, 3)
    v = np.float32(v).astype(np.float64)  # float32-representable, as the release

    # Skinning: each vertex to its two nearest joints, weights by inverse distance.
    d = np.linalg.norm(v[:, None, :] - _REST_JOINTS[None], axis=2)
    near = np.argsort(d, axis=1)[:, :2]
    inv = 1.0 / (np.take_along_axis(d, near, axis=1) + 1e-3)
    weights = np.zeros((NUM_VERTICES, NUM_JOINTS))
    np.put_along_axis(weights, near, inv / inv.sum(1, keepdims=True), axis=1)
    # Joint regressor: the 8 vertices nearest to each rest joint, equal weights (rows sum to 1).
    j_reg = np.zeros((NUM_JOINTS, NUM_VERTICES))
    for j in range(NUM_JOINTS):
        j_reg[j, np.argsort(d[:, j])[:8]] = 1.0 / 8
    shapedirs = rng.normal(0, 0.01, (NUM_VERTICES, 3, 10)) * np.abs(v[:, None, :1] + 0.3)
    posedirs = rng.normal(0, 0.002, (NUM_VERTICES, 3, 9 * (NUM_JOINTS - 1)))
    extra = np.zeros((19, NUM_VERTICES))
    for i in range(19):
        extra[i, rng.choice(NUM_VERTICES, 6, replace=False)] = 1.0 / 6
    kintree = np.array([[p if p >= 0 else 2**32 - 1 for p in SMPL_PARENTS], list(range(NUM_JOINTS))], dtype=np.int64)
    f32 = lambda a: np.float32(a).astype(np.float64)  # noqa: E731
    return {
        "v_template": v,
        "f": f,
        "weights": f32(weights),
        "J_regressor": f32(j_reg),
        "kintree_table": kintree,
        "shapedirs": f32(shapedirs),
        "posedirs": f32(posedirs),
        "joint_regressor_extra": f32(extra),
    }


def _smpl_pickle_bytes(body: dict[str, np.ndarray]) -> bytes:
    j_reg = sparse.csc_matrix(body["J_regressor"])
    data = {
        "J_regressor_prior": j_reg.copy(),
        "f": body["f"],
        "J_regressor": j_reg,
        "kintree_table": body["kintree_table"],
        "J": body["J_regressor"] @ body["v_template"],
        "weights_prior": body["weights"],
        "weights": body["weights"],
        "vert_sym_idxs": np.arange(NUM_VERTICES, dtype=np.int64),
        "posedirs": body["posedirs"],
        "pose_training_info": {"gender": "neutral", "bs_type": "lrotmin", "bs_style": "lbs"},
        "bs_style": "lbs",
        "v_template": body["v_template"],
        "shapedirs": _ChumpyArray(body["shapedirs"]),
        "bs_type": "lrotmin",
    }
    buf = io.BytesIO()
    _SMPLPickler(buf, protocol=4).dump(data)
    return buf.getvalue()


def mean_params(seed: int = 0) -> dict[str, np.ndarray]:
    """Mean pose (24 x [first column, second column] of each rotation), shape and camera."""
    rng = np.random.default_rng(seed + 1)
    pose = np.tile(np.array([1.0, 0, 0, 0, 1.0, 0]), 24) + rng.normal(0, 0.05, 144)
    pose[:6] = [1.0, 0, 0, 0, -1.0, 0]  # root: half turn about x, an upright person facing the camera
    return {"pose": pose, "shape": rng.normal(0, 0.4, 10), "cam": np.array([0.9, 0.0, 0.0])}


def model_config_dict() -> dict:
    """The parts of 4D-Humans' model_config.yaml the model reads, with the tiny ViT/decoder sizes."""
    cfg = hmr2_tiny()
    return {
        "SMPL": {
            "DATA_DIR": "data/",
            "MODEL_PATH": cfg.smpl_model_path,
            "GENDER": cfg.smpl_gender,
            "NUM_BODY_JOINTS": cfg.head.num_body_joints,
            "JOINT_REGRESSOR_EXTRA": cfg.joint_regressor_extra,
            "MEAN_PARAMS": cfg.mean_params,
        },
        "EXTRA": {"FOCAL_LENGTH": int(cfg.focal_length), "PELVIS_IND": 39},
        "MODEL": {
            "IMAGE_SIZE": cfg.image_size,
            "IMAGE_MEAN": list(cfg.image_mean),
            "IMAGE_STD": list(cfg.image_std),
            "BACKBONE": {
                "TYPE": "vit",
                "EMBED_DIM": cfg.backbone.embed_dim,
                "DEPTH": cfg.backbone.depth,
                "NUM_HEADS": cfg.backbone.num_heads,
                "MLP_RATIO": int(cfg.backbone.mlp_ratio),
            },
            "SMPL_HEAD": {
                "TYPE": "transformer_decoder",
                "IN_CHANNELS": 2048,
                "TRANSFORMER_DECODER": {
                    "depth": cfg.head.depth,
                    "heads": cfg.head.heads,
                    "mlp_dim": cfg.head.mlp_dim,
                    "dim_head": cfg.head.dim_head,
                    "dropout": 0.0,
                    "emb_dropout": 0.0,
                    "norm": "layer",
                    "context_dim": cfg.head.context_dim,
                    "dim": cfg.head.dim,
                },
            },
        },
        "LOSS_WEIGHTS": {"ADVERSARIAL": 0.0005},
    }


def _discriminator_state(gen: torch.Generator) -> dict[str, torch.Tensor]:
    """The adversarial prior's tensors (training only), at their real shapes."""
    shapes = {"D_conv1.weight": (32, 9, 1, 1), "D_conv1.bias": (32,), "D_conv2.weight": (32, 32, 1, 1), "D_conv2.bias": (32,)}
    for j in range(23):
        shapes[f"pose_out.{j}.weight"] = (1, 32)
        shapes[f"pose_out.{j}.bias"] = (1,)
    shapes.update({
        "betas_fc1.weight": (10, 10), "betas_fc1.bias": (10,), "betas_fc2.weight": (5, 10), "betas_fc2.bias": (5,),
        "betas_out.weight": (1, 5), "betas_out.bias": (1,),
        "D_alljoints_fc1.weight": (1024, 736), "D_alljoints_fc1.bias": (1024,),
        "D_alljoints_fc2.weight": (1024, 1024), "D_alljoints_fc2.bias": (1024,),
        "D_alljoints_out.weight": (1, 1024), "D_alljoints_out.bias": (1,),
    })  # fmt: skip
    return {f"discriminator.{k}": torch.randn(s, generator=gen) * 0.02 for k, s in shapes.items()}


def tiny_state_dict(body: dict[str, np.ndarray], means: dict[str, np.ndarray], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tiny HMR2 weights with SMPL and mean-parameter buffers filled as a checkpoint has them."""
    gen = torch.Generator().manual_seed(seed)
    torch_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = HMR2(hmr2_tiny())
    finally:
        torch.random.set_rng_state(torch_state)
    with torch.no_grad():
        model.backbone.pos_embed.normal_(0, 0.02, generator=gen)
        model.smpl_head.transformer.pos_embedding.normal_(0, 1.0, generator=gen)
        for layer in (model.smpl_head.decpose, model.smpl_head.decshape, model.smpl_head.deccam):
            layer.weight.mul_(0.05)  # small corrections around the mean parameters
            layer.bias.zero_()
        model.smpl_head.init_body_pose.copy_(torch.from_numpy(means["pose"]).float()[None])
        model.smpl_head.init_betas.copy_(torch.from_numpy(means["shape"]).float()[None])
        model.smpl_head.init_cam.copy_(torch.from_numpy(means["cam"]).float()[None])
    model.smpl.fill_from_pickles(
        {
            "shapedirs": body["shapedirs"], "f": body["f"], "v_template": body["v_template"],
            "J_regressor": body["J_regressor"], "posedirs": body["posedirs"],
            "kintree_table": body["kintree_table"], "weights": body["weights"],
        },
        body["joint_regressor_extra"],
    )  # fmt: skip
    state = {"initialized": torch.tensor(False)}
    state.update(model.state_dict())
    state.update(_discriminator_state(gen))
    return state


def write_tiny_hmr2(roots: CacheRoots, seed: int = 0) -> list[Path]:
    """Write every 4D-Humans cache file for the tiny model; returns the paths written."""
    root = roots.hmr2
    body = synthetic_body(seed)
    means = mean_params(seed)
    paths = {
        "smpl": root / hmr2_files.SMPL_NEUTRAL,
        "regressor": root / hmr2_files.JOINT_REGRESSOR,
        "means": root / hmr2_files.MEAN_PARAMS,
        "config": root / hmr2_files.MODEL_CONFIG,
        "ckpt": root / hmr2_files.CHECKPOINT,
    }
    for p in paths.values():
        p.parent.mkdir(parents=True, exist_ok=True)
    paths["smpl"].write_bytes(_smpl_pickle_bytes(body))
    with open(paths["regressor"], "wb") as fh:
        pickle.dump(body["joint_regressor_extra"], fh, protocol=2)
    np.savez(paths["means"], allow_pickle=True, **means)  # the default; spelled out so **means cannot fill it (mypy)
    cfg = model_config_dict()
    paths["config"].write_text(yaml.safe_dump(cfg, sort_keys=False))
    checkpoint = {
        "epoch": 35,
        "global_step": 1000000,
        "pytorch-lightning_version": "2.6.6",
        "state_dict": tiny_state_dict(body, means, seed),
        "loops": {},
        "callbacks": {},
        "optimizer_states": [],
        "lr_schedulers": [],
        "hparams_name": "kwargs",
        "hyper_parameters": {"cfg": cfg},
    }
    torch.save(checkpoint, paths["ckpt"])
    return list(paths.values())
