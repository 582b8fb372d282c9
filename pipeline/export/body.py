"""The SMPL skeleton and rest mesh the exporters rig, from the user's SMPL model file.

Animation tools need what the result does not carry: the joints' rest positions (BVH offsets,
glTF bind pose), the mesh with its skinning weights, and for OBJ the posed mesh itself. Both come from the SMPL file the user
provided, read by `pipeline.models.smpl.read_smpl_pickle`; the result's betas shape them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import WeightsError
from ..weights import CacheRoots, locate

logger = logging.getLogger(__name__)

# The 24 SMPL joints in the model's order (the names SMPL's own tools use).
JOINT_NAMES = (
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2", "left_ankle",
    "right_ankle", "spine3", "left_foot", "right_foot", "neck", "left_collar", "right_collar", "head",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hand", "right_hand",
)  # fmt: skip

# The result's body frame is the camera's (OpenCV: x right, y down, z forward). Exports turn it
# into the frame their tools expect, by one rotation of the whole scene about the camera centre.
CAMERA_TO_Y_UP = np.diag([1.0, -1.0, -1.0])  # x right, y up, z towards the camera (BVH, glTF)
CAMERA_TO_Z_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])  # x right, y away from the camera, z up (AMASS)


@dataclass(frozen=True)
class BodyModel:
    """SMPL's rig as plain arrays (float64; metres, SMPL's canonical frame: y up, facing +z)."""

    parents: np.ndarray  # (24,) int: parent joint of each joint, -1 for the root
    v_template: np.ndarray  # (6890, 3)
    shapedirs: np.ndarray  # (6890, 3, 10)
    j_regressor: np.ndarray  # (24, 6890)
    weights: np.ndarray  # (6890, 24) skinning weights
    faces: np.ndarray  # (13776, 3) vertex indices
    posedirs: np.ndarray  # (6890, 3, 207) pose blend shapes, driven by (R - I) of joints 1-23
    source: str = ""  # the file it was read from

    def vertices(self, betas: np.ndarray) -> np.ndarray:
        """The shaped rest mesh (6890, 3) for (10,) betas."""
        return self.v_template + self.shapedirs @ np.asarray(betas, np.float64)

    def joints(self, betas: np.ndarray) -> np.ndarray:
        """Rest joint positions (..., 24, 3) for (..., 10) betas: the regressor on the shaped mesh."""
        b = np.asarray(betas, np.float64)
        template = self.j_regressor @ self.v_template  # (24, 3)
        dirs = np.einsum("jv,vkl->jkl", self.j_regressor, self.shapedirs)  # (24, 3, 10)
        return template + np.einsum("jkl,...l->...jk", dirs, b)

    def posed_vertices(self, rotations: np.ndarray, betas: np.ndarray) -> np.ndarray:
        """The posed meshes (N, 6890, 3) float32, untranslated (the result's body frame), for
        (N, 24, 3, 3) rotations (global_orient, then the 23 body joints) and (N, 10) betas.

        Posed by the SMPL layer HMR2 uses (`pipeline.models.smpl`; pose correctives included),
        so they are the vertices the model itself output for these parameters.
        """
        import torch

        rot = torch.as_tensor(np.asarray(rotations, np.float32)).reshape(-1, 24, 3, 3)
        b = torch.as_tensor(np.asarray(betas, np.float32)).reshape(len(rot), -1)
        with torch.no_grad():
            out = self._layer(rot[:, :1], rot[:, 1:], b)
        return out.vertices.numpy()

    @cached_property
    def _layer(self) -> Any:
        """This rig as an `SMPLBodyModel` (no extra joints: only its mesh is used), built once."""
        from ..models.smpl import SMPLBodyModel

        data = {
            "kintree_table": np.stack([self.parents, np.arange(len(self.parents))]),
            "posedirs": self.posedirs,
            "shapedirs": self.shapedirs,
            "v_template": self.v_template,
            "J_regressor": self.j_regressor,
            "weights": self.weights,
            "f": self.faces,
        }
        layer = SMPLBodyModel(num_betas=self.shapedirs.shape[-1], num_extra_joints=0)
        return layer.fill_from_pickles(data, np.zeros((0, len(self.v_template)))).eval()

    @property
    def children(self) -> list[list[int]]:
        out: list[list[int]] = [[] for _ in self.parents]
        for j, p in enumerate(self.parents):
            if p >= 0:
                out[p].append(j)
        return out


def find_smpl(roots: CacheRoots) -> Path:
    """The SMPL neutral model in the cache roots (where the HMR2 loader looks), or `smpl_missing`."""
    from ..models.hmr2.files import FILES, SMPL_HOW_TO

    entry = next(f for f in FILES if f.key == "smpl.neutral")
    status = locate(entry, roots)
    if status.found is None:
        raise WeightsError(
            "smpl_missing",
            "this export rigs the SMPL body model, which was not found; looked for: "
            + "; ".join(str(p) for p in status.looked_in) + ". " + SMPL_HOW_TO,
            details={"looked_in": [str(p) for p in status.looked_in]},
        )
    return status.found


def load_body(path: str | Path) -> BodyModel:
    """The rig of an SMPL model pickle (the original release or 4D-Humans' converted file)."""
    from ..models.smpl import NUM_BETAS, read_smpl_pickle

    data = read_smpl_pickle(path)
    parents = np.asarray(data["kintree_table"][0]).astype(np.int64)
    parents[0] = -1  # stored as 2**32 - 1
    return BodyModel(
        parents=parents,
        v_template=np.asarray(data["v_template"], np.float64),
        shapedirs=np.asarray(data["shapedirs"], np.float64)[:, :, :NUM_BETAS],
        j_regressor=np.asarray(data["J_regressor"], np.float64),
        weights=np.asarray(data["weights"], np.float64),
        faces=np.asarray(data["f"]).astype(np.int64),
        posedirs=np.asarray(data["posedirs"], np.float64),
        source=str(path),
    )
