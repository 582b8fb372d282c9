"""The Wavefront OBJ writer, read back by an independent reader (trimesh)."""

from __future__ import annotations

import io

import numpy as np
import pytest

from pipeline.export.obj import obj_text

trimesh = pytest.importorskip("trimesh")


def load(text: str) -> "trimesh.Trimesh":
    # process=False: keep vertices and faces as written (no merging or reordering)
    return trimesh.load(io.BytesIO(text.encode()), file_type="obj", process=False, force="mesh")


def test_a_mesh_reads_back_with_its_vertices_and_faces() -> None:
    rng = np.random.default_rng(3)
    vertices = rng.normal(size=(40, 3)).astype(np.float32) * 0.3 + np.float32([0.1, -0.2, 25.0])
    faces = np.stack([rng.permutation(40)[:3] for _ in range(60)])
    mesh = load(obj_text(vertices, faces))
    assert mesh.vertices.shape == (40, 3) and mesh.faces.shape == (60, 3)
    np.testing.assert_array_equal(mesh.vertices.astype(np.float32), vertices)  # 9 digits: float32 exactly
    np.testing.assert_array_equal(mesh.faces, faces)  # 0-based again after the format's 1-based indices


def test_the_first_vertex_is_index_one_in_the_file() -> None:
    text = obj_text(np.eye(3), np.array([[0, 1, 2]]))
    assert text.splitlines()[-1] == "f 1 2 3"
    assert [line for line in text.splitlines() if line.startswith("v ")] == ["v 1 0 0", "v 0 1 0", "v 0 0 1"]


@pytest.mark.parametrize(
    "vertices, faces",
    [
        (np.zeros((3, 2)), np.array([[0, 1, 2]])),
        (np.zeros((3, 3)), np.array([[0, 1, 3]])),
        (np.zeros((3, 3)), np.array([[0.0, 1.0, 2.0]])),
        (np.array([[np.nan, 0, 0], [0, 0, 0], [0, 0, 1]]), np.array([[0, 1, 2]])),
    ],
)
def test_what_is_not_a_mesh_is_refused(vertices: np.ndarray, faces: np.ndarray) -> None:
    with pytest.raises(ValueError, match="expected"):
        obj_text(vertices, faces)
