"""The SMPL body model as HMR2.0 uses it, read from the original pickles without chumpy.

Corresponds to smplx's ``SMPLLayer`` (rotation-matrix input, linear blend skinning) wrapped by
4D-Humans' ``hmr2.models.smpl_wrapper.SMPL``, which reorders joints to OpenPose BODY_25 and
appends 19 joints regressed from the posed mesh: 44 keypoints in all.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import WeightsError
from ..safe_pickle import Opaque, load_pickle

logger = logging.getLogger(__name__)

NUM_VERTICES = 6890
NUM_FACES = 13776
NUM_JOINTS = 24  # root + 23 body joints
NUM_BETAS = 10

# smplx's vertex ids (its "smplh" table) for the 21 keypoints appended to the 24 joints:
# nose, right/left eye, right/left ear, left big toe/small toe/heel, right big toe/small toe/heel,
# then finger tips thumb, index, middle, ring, pinky of the left and of the right hand.
EXTRA_VERTEX_IDS = (
    332, 6260, 2800, 4071, 583,
    3216, 3226, 3387, 6617, 6624, 6787,
    2746, 2319, 2445, 2556, 2673,
    6191, 5782, 5905, 6016, 6133,
)  # fmt: skip

# 4D-Humans' ``smpl_to_openpose``: indices into the 45 joints, in OpenPose BODY_25 order.
OPENPOSE_JOINT_MAP = (24, 12, 17, 19, 21, 16, 18, 20, 0, 2, 5, 8, 1, 4, 7, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34)


class _ChumpyArray(Opaque):
    """Stand-in for ``chumpy.ch.Ch``: the array lives in the pickled state under ``x``."""


class _SparseCSC(Opaque):
    """Stand-in for scipy's ``csc_matrix`` (old and new module paths); densified on read."""


SMPL_STAND_INS = {
    ("chumpy.ch", "Ch"): _ChumpyArray,
    ("scipy.sparse.csc", "csc_matrix"): _SparseCSC,
    ("scipy.sparse._csc", "csc_matrix"): _SparseCSC,
}


def _as_array(value: Any) -> Any:
    if isinstance(value, _ChumpyArray):
        state = value.state or {}
        if "x" not in state:
            raise ValueError("chumpy object without an 'x' array")
        return np.asarray(state["x"])
    if isinstance(value, _SparseCSC):
        st = value.state or {}
        rows, cols = st["_shape"]
        dense = np.zeros((rows, cols), dtype=np.asarray(st["data"]).dtype)
        indptr = np.asarray(st["indptr"])
        indices = np.asarray(st["indices"])
        data = np.asarray(st["data"])
        for c in range(cols):
            lo, hi = indptr[c], indptr[c + 1]
            dense[indices[lo:hi], c] = data[lo:hi]
        return dense
    return value


def read_smpl_pickle(path: str | Path) -> dict[str, Any]:
    """Every entry of an SMPL model pickle, chumpy and sparse objects turned into numpy arrays.

    Reads both the original release (Python 2 pickle, ``basicModel_neutral_lbs_10_207_0_v1.0.0.pkl``)
    and 4D-Humans' converted ``SMPL_NEUTRAL.pkl``.
    """
    try:
        raw = load_pickle(path, encoding="latin1", stand_ins=SMPL_STAND_INS)
    except Exception as exc:
        raise WeightsError("smpl_unreadable", f"{path} is not a readable SMPL model pickle: {exc}") from exc
    if not isinstance(raw, dict):
        raise WeightsError("smpl_unreadable", f"{path}: expected a dict of arrays, got {type(raw).__name__}")
    data = {k: _as_array(v) for k, v in raw.items()}
    required = {"v_template": (NUM_VERTICES, 3), "f": (NUM_FACES, 3), "J_regressor": (NUM_JOINTS, NUM_VERTICES),
                "kintree_table": (2, NUM_JOINTS), "weights": (NUM_VERTICES, NUM_JOINTS),
                "posedirs": (NUM_VERTICES, 3, 9 * (NUM_JOINTS - 1))}  # fmt: skip
    for key, shape in required.items():
        if key not in data:
            raise WeightsError("smpl_unreadable", f"{path}: key {key!r} missing; is this an SMPL model file?")
        if tuple(np.shape(data[key])) != shape:
            raise WeightsError("smpl_unreadable", f"{path}: {key} has shape {np.shape(data[key])}, expected {shape}")
    shapedirs: Any = data.get("shapedirs")  # None when missing: its shape is then ()
    sd = np.shape(shapedirs)
    if len(sd) != 3 or sd[:2] != (NUM_VERTICES, 3) or sd[2] < NUM_BETAS:
        raise WeightsError("smpl_unreadable", f"{path}: shapedirs has shape {sd}, expected (6890, 3, >=10)")
    return data


def read_joint_regressor(path: str | Path) -> np.ndarray:
    """``SMPL_to_J19.pkl``: a (19, 6890) regressor of extra joints from the posed mesh."""
    try:
        value = _as_array(load_pickle(path, encoding="latin1", stand_ins=SMPL_STAND_INS))
    except Exception as exc:
        raise WeightsError("smpl_unreadable", f"{path} is not a readable joint regressor pickle: {exc}") from exc
    value = np.asarray(value)
    if value.ndim != 2 or value.shape[1] != NUM_VERTICES:
        raise WeightsError("smpl_unreadable", f"{path}: expected a (J, 6890) regressor, got shape {value.shape}")
    return value


def smpl_buffers_from_pickles(smpl: dict[str, Any], joint_regressor_extra: np.ndarray, *, num_betas: int = NUM_BETAS) -> dict[str, torch.Tensor]:
    """`read_smpl_pickle` / `read_joint_regressor` data -> `SMPLBodyModel` buffers, as smplx builds them.

    float32 (int64 for faces and parents) CPU tensors keyed like the HMR2 checkpoint's ``smpl.*``.
    """
    parents = np.asarray(smpl["kintree_table"][0]).astype(np.int64)
    parents[0] = -1  # the root is stored as 2**32 - 1
    posedirs = np.asarray(smpl["posedirs"], dtype=np.float64)
    floats = {
        "shapedirs": np.asarray(smpl["shapedirs"])[:, :, :num_betas],
        "v_template": smpl["v_template"],
        "J_regressor": smpl["J_regressor"],
        "posedirs": posedirs.reshape(-1, posedirs.shape[-1]).T,
        "lbs_weights": smpl["weights"],
        "joint_regressor_extra": joint_regressor_extra,
    }
    out = {name: torch.as_tensor(np.ascontiguousarray(value)).to(torch.float32) for name, value in floats.items()}
    out["faces_tensor"] = torch.from_numpy(np.ascontiguousarray(np.asarray(smpl["f"]).astype(np.int64)))
    out["parents"] = torch.from_numpy(parents)
    return out


@dataclass
class SMPLOutput:
    vertices: torch.Tensor  # (B, 6890, 3) metres
    joints: torch.Tensor  # (B, 44, 3): BODY_25 order + regressed extras
    joints_smplx45: torch.Tensor  # (B, 45, 3): 24 SMPL joints + 21 vertex keypoints


class SMPLBodyModel(nn.Module):
    """SMPL with rotation-matrix input and the 44-joint output of 4D-Humans.

    Buffers are named as in the HMR2 checkpoint (``smpl.*``), so the checkpoint fills them; the
    pickles are only needed to build the model without a checkpoint (see `from_files`).
    """

    shapedirs: torch.Tensor  # buffers
    faces_tensor: torch.Tensor
    v_template: torch.Tensor
    J_regressor: torch.Tensor
    posedirs: torch.Tensor
    parents: torch.Tensor
    lbs_weights: torch.Tensor
    joint_regressor_extra: torch.Tensor
    joint_map: torch.Tensor

    def __init__(self, num_betas: int = NUM_BETAS, num_extra_joints: int = 19) -> None:
        super().__init__()
        f32 = torch.float32
        self.register_buffer("shapedirs", torch.zeros(NUM_VERTICES, 3, num_betas, dtype=f32))
        self.register_buffer("faces_tensor", torch.zeros(NUM_FACES, 3, dtype=torch.long))
        self.register_buffer("v_template", torch.zeros(NUM_VERTICES, 3, dtype=f32))
        self.register_buffer("J_regressor", torch.zeros(NUM_JOINTS, NUM_VERTICES, dtype=f32))
        self.register_buffer("posedirs", torch.zeros(9 * (NUM_JOINTS - 1), NUM_VERTICES * 3, dtype=f32))
        self.register_buffer("parents", torch.zeros(NUM_JOINTS, dtype=torch.long))
        self.register_buffer("lbs_weights", torch.zeros(NUM_VERTICES, NUM_JOINTS, dtype=f32))
        self.register_buffer("joint_regressor_extra", torch.zeros(num_extra_joints, NUM_VERTICES, dtype=f32))
        self.register_buffer("joint_map", torch.tensor(OPENPOSE_JOINT_MAP, dtype=torch.long))
        self.vertex_joint_selector = _VertexJointSelector()

    def constant_buffers(self) -> dict[str, torch.Tensor]:
        """The buffers fixed by the code, not by any file (the joint tables), on the CPU.

        Built here rather than read from ``self`` so that a model made on the meta device gets
        the real values.
        """
        return {
            "joint_map": torch.tensor(OPENPOSE_JOINT_MAP, dtype=torch.long, device="cpu"),
            "vertex_joint_selector.extra_joints_idxs": torch.tensor(EXTRA_VERTEX_IDS, dtype=torch.long, device="cpu"),
        }

    @torch.no_grad()
    def fill_from_pickles(self, smpl: dict[str, Any], joint_regressor_extra: np.ndarray) -> "SMPLBodyModel":
        """Set the buffers from `read_smpl_pickle` / `read_joint_regressor` data, as smplx does.

        Works on a model built on the meta device too: the tensors are adopted, not copied.
        """
        from .checkpoint import load_strict

        state = smpl_buffers_from_pickles(smpl, joint_regressor_extra, num_betas=self.shapedirs.shape[-1])
        own = self.state_dict()
        for name, tensor in state.items():
            if tensor.shape != own[name].shape:
                raise WeightsError("smpl_unreadable", f"SMPL {name}: expected shape {tuple(own[name].shape)}, got {tuple(tensor.shape)}")
        load_strict(self, {**state, **self.constant_buffers()}, source="SMPL pickles", assign=True)
        return self

    @property
    def faces(self) -> np.ndarray:
        return self.faces_tensor.cpu().numpy()

    def forward(self, global_orient: torch.Tensor, body_pose: torch.Tensor, betas: torch.Tensor) -> SMPLOutput:
        """Pose the mesh.

        global_orient (B, 1, 3, 3) and body_pose (B, 23, 3, 3) are rotation matrices; betas (B, 10).
        No translation is applied (the camera carries it). Always float32: autocast is switched
        off here, since half-precision blend shapes and skinning move vertices by millimetres.
        """
        with torch.autocast(device_type=betas.device.type, enabled=False):
            return self._pose(global_orient.float(), body_pose.float(), betas.float())

    def _pose(self, global_orient: torch.Tensor, body_pose: torch.Tensor, betas: torch.Tensor) -> SMPLOutput:
        batch = betas.shape[0]
        rot = torch.cat([global_orient.reshape(batch, 1, 3, 3), body_pose.reshape(batch, -1, 3, 3)], dim=1)
        # Shape blend shapes, then the rest joints from the shaped mesh.
        v_shaped = self.v_template + torch.einsum("bl,mkl->bmk", betas, self.shapedirs)
        rest_joints = torch.einsum("bik,ji->bjk", v_shaped, self.J_regressor)
        # Pose blend shapes driven by (R - I) of every non-root joint.
        eye = torch.eye(3, dtype=rot.dtype, device=rot.device)
        pose_feature = (rot[:, 1:] - eye).reshape(batch, -1)
        v_posed = v_shaped + torch.matmul(pose_feature, self.posedirs).reshape(batch, -1, 3)
        posed_joints, rel_transforms = _rigid_transforms(rot, rest_joints, self.parents)
        # Linear blend skinning.
        num_joints = rot.shape[1]
        skin = torch.matmul(self.lbs_weights.unsqueeze(0).expand(batch, -1, -1), rel_transforms.reshape(batch, num_joints, 16))
        skin = skin.reshape(batch, -1, 4, 4)
        v_homo = torch.cat([v_posed, torch.ones_like(v_posed[..., :1])], dim=2)
        vertices = torch.matmul(skin, v_homo.unsqueeze(-1))[:, :, :3, 0]
        joints45 = self.vertex_joint_selector(vertices, posed_joints)
        extra = torch.einsum("bik,ji->bjk", vertices, self.joint_regressor_extra)
        joints = torch.cat([joints45[:, self.joint_map], extra], dim=1)
        return SMPLOutput(vertices=vertices, joints=joints, joints_smplx45=joints45)

    @classmethod
    def from_files(cls, smpl_pkl: str | Path, joint_regressor_pkl: str | Path) -> "SMPLBodyModel":
        """The body model from the SMPL and extra-joint pickles, built without allocating zeros first."""
        extra = read_joint_regressor(joint_regressor_pkl)
        data = read_smpl_pickle(smpl_pkl)
        with torch.device("meta"):
            model = cls(num_extra_joints=extra.shape[0])
        return model.fill_from_pickles(data, extra)


class _VertexJointSelector(nn.Module):
    """smplx's ``VertexJointSelector``: appends keypoints taken from fixed mesh vertices."""

    extra_joints_idxs: torch.Tensor  # buffer

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("extra_joints_idxs", torch.tensor(EXTRA_VERTEX_IDS, dtype=torch.long))

    def forward(self, vertices: torch.Tensor, joints: torch.Tensor) -> torch.Tensor:
        return torch.cat([joints, torch.index_select(vertices, 1, self.extra_joints_idxs)], dim=1)


def _rigid_transforms(rot: torch.Tensor, joints: torch.Tensor, parents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward kinematics along ``parents`` (smplx's ``batch_rigid_transform``).

    Returns the posed joints (B, J, 3) and the per-joint transforms relative to the rest pose
    (B, J, 4, 4) that skinning applies.
    """
    batch, num_joints = rot.shape[:2]
    joints = joints.unsqueeze(-1)
    rel = joints.clone()
    rel[:, 1:] = rel[:, 1:] - joints[:, parents[1:]]
    local = torch.cat(
        [
            torch.nn.functional.pad(rot.reshape(-1, 3, 3), [0, 0, 0, 1]),
            torch.nn.functional.pad(rel.reshape(-1, 3, 1), [0, 0, 0, 1], value=1.0),
        ],
        dim=2,
    ).reshape(batch, num_joints, 4, 4)
    chain = [local[:, 0]]
    parent_list = parents.tolist()
    for i in range(1, num_joints):
        chain.append(torch.matmul(chain[parent_list[i]], local[:, i]))
    transforms = torch.stack(chain, dim=1)
    posed_joints = transforms[:, :, :3, 3]
    joints_h = torch.nn.functional.pad(joints, [0, 0, 0, 1])
    rel_transforms = transforms - torch.nn.functional.pad(torch.matmul(transforms, joints_h), [3, 0, 0, 0, 0, 0, 0, 0])
    return posed_joints, rel_transforms
