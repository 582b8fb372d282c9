"""Exports (AMASS NPZ, BVH, GLB, MOT, OBJ, PHALP) of a result built from known SMPL parameters.

Every file is read back by a reader written here (or a third-party one: the Khronos glTF
validator, motmetrics' MOT loader, trimesh's OBJ loader, joblib), differently from the exporter: Euler channels composed by
scipy, quaternions and Rodrigues vectors turned into matrices by explicit formulas, the SMPL
joints regressed from the pickle with numpy. Angles must agree within 1e-4 rad.
"""

from __future__ import annotations

import io
import json
import pickle
import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from export_readers import parse_bvh, parse_glb, phalp_schema, rle_mask, validate_glb
from scipy.spatial.transform import Rotation

from pipeline.schema import VideoResult

REPO = Path(__file__).resolve().parents[1]
FPS = 25.0
FRAMES = 6
# The frames each confirmed track is detected in (track 7 misses frame 3), and one unconfirmed
# detection in frame 2.
TRACK_FRAMES = {3: [0, 1, 2, 3, 4, 5], 7: [1, 2, 4, 5]}
UNCONFIRMED_FRAME = 2
TOL_RAD = 1e-4
# The documented world frames: the camera (OpenCV) turned to y up (BVH, glTF) and to z up (AMASS).
Y_UP = np.diag([1.0, -1.0, -1.0])
Z_UP = np.array([[1.0, 0, 0], [0, 0, 1.0], [0, -1.0, 0]])


# -- the input ----------------------------------------------------------------------------------


def _person(rng: np.random.Generator, index: int, track_id: int | None, rot: np.ndarray) -> dict[str, Any]:
    x1, y1 = rng.uniform(10, 300), rng.uniform(10, 200)
    return {
        "person_index": index,
        "track_id": track_id,
        "bbox": [x1, y1, x1 + rng.uniform(40, 120), y1 + rng.uniform(100, 250)],
        "score": float(rng.uniform(0.5, 1.0)),
        "smpl": {"global_orient": rot[0].tolist(), "body_pose": rot[1:].tolist(), "betas": rng.normal(0, 0.5, 10).tolist()},
        "camera": {
            "pred_cam": [0.9, 0.0, 0.0],
            "t_crop": [0.0, 0.0, 20.0],
            "focal_length_crop": 5000.0,
            "t_full": [rng.uniform(-1, 1), rng.uniform(-0.5, 0.5), rng.uniform(4, 8)],
            "focal_length_full": 1250.0,
        },
        "keypoints_2d": np.zeros((44, 2)).tolist(),
        "keypoints_3d": rng.normal(0, 0.3, (44, 3)).tolist(),
    }


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    """A valid `VideoResult` with random rotations (seeded): 2 tracks and one unconfirmed detection."""
    rng = np.random.default_rng(11)
    frames = []
    for f in range(FRAMES):
        people = []
        for tid, seen in TRACK_FRAMES.items():
            if f in seen:
                rot = Rotation.random(24, random_state=int(rng.integers(1 << 30))).as_matrix()
                people.append(_person(rng, len(people), tid, rot))
        if f == UNCONFIRMED_FRAME:
            rot = Rotation.random(24, random_state=5).as_matrix()
            people.append(_person(rng, len(people), None, rot))
        frames.append({"frame_index": f, "time_s": f / FPS, "people": people})
    doc = {
        "schema_version": "1.0",
        "video": {"width": 640, "height": 480, "fps": FPS, "frame_count": FRAMES, "duration_s": FRAMES / FPS, "rotation": 0},
        "frames": frames,
        "tracks": [
            {"track_id": t, "first_frame": s[0], "last_frame": s[-1], "num_frames": len(s)} for t, s in TRACK_FRAMES.items()
        ],
        "models": {"detector": "vitdet_h_cascade", "mesh": "hmr2.0b", "tracker": "phalp"},
    }
    VideoResult.model_validate(doc)
    return doc


def detections(doc: dict[str, Any], track_id: int) -> list[tuple[int, dict[str, Any]]]:
    out = [(f["frame_index"], p) for f in doc["frames"] for p in f["people"] if p["track_id"] == track_id]
    assert out, f"track {track_id} has no detections in the test document"
    return out


@pytest.fixture(scope="module")
def sources(document: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The document as a JSON file (indented: the streaming reader must not rely on layout) and
    as the published folder (result.jsonl + result-meta.json)."""
    base = tmp_path_factory.mktemp("result")
    doc_path = base / "result.json"
    doc_path.write_text(json.dumps(document, indent=2))
    folder = base / "out"
    folder.mkdir()
    (folder / "result.jsonl").write_text("".join(json.dumps(f) + "\n" for f in document["frames"]))
    meta = {k: v for k, v in document.items() if k != "frames"}
    (folder / "result-meta.json").write_text(json.dumps(meta))
    return {"json": doc_path, "folder": folder}


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder with the synthetic tiny SMPL model (and tiny HMR2) in 4D-Humans' layout."""
    from pipeline.tiny.hmr2 import write_tiny_hmr2
    from pipeline.weights import CacheRoots

    base = tmp_path_factory.mktemp("cache")
    write_tiny_hmr2(CacheRoots.under(base))
    return base


class _Chumpy:
    """Stands in for ``chumpy.ch.Ch`` when the test reads the pickle: the array is state['x']."""

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.x = state["x"]


class _SMPLUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("chumpy.ch", "Ch"):
            return _Chumpy
        return super().find_class(module, name)


@pytest.fixture(scope="module")
def smpl_joints(tiny_cache: Path):
    """betas (..., 10) -> the 24 SMPL rest joints, regressed here from the pickle with numpy."""
    with open(tiny_cache / "4DHumans/data/smpl/SMPL_NEUTRAL.pkl", "rb") as fh:
        data = _SMPLUnpickler(fh, encoding="latin1").load()
    v_template = np.asarray(data["v_template"])
    shapedirs = np.asarray(data["shapedirs"].x)[:, :, :10]
    regressor = data["J_regressor"].toarray()
    parents = np.asarray(data["kintree_table"][0]).astype(np.int64)
    parents[0] = -1

    def joints(betas: np.ndarray) -> np.ndarray:
        return np.stack([regressor @ (v_template + shapedirs @ b) for b in np.atleast_2d(betas)])

    joints.parents = parents  # type: ignore[attr-defined]
    joints.data = data  # type: ignore[attr-defined]
    return joints


@pytest.fixture(scope="module")
def body(tiny_cache: Path):
    from pipeline.export.body import load_body

    return load_body(tiny_cache / "4DHumans/data/smpl/SMPL_NEUTRAL.pkl")


def geodesic(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angle (radians) of the rotation between matrices a and b."""
    rel = np.einsum("...ji,...jk->...ik", a, b)
    cos = (np.trace(rel, axis1=-2, axis2=-1) - 1) / 2
    return np.arccos(np.clip(cos, -1, 1))


def expected(doc: dict[str, Any], track_id: int, world: np.ndarray, smpl_joints) -> dict[str, Any]:
    """What an export of a track must hold at its detections: rotations (root turned into the
    world frame), the pelvis in the world frame, and the mean betas."""
    dets = detections(doc, track_id)
    rot = np.array([np.concatenate([[p["smpl"]["global_orient"]], p["smpl"]["body_pose"]]) for _, p in dets])
    rot[:, 0] = world @ rot[:, 0]
    betas = np.array([p["smpl"]["betas"] for _, p in dets])
    t_full = np.array([p["camera"]["t_full"] for _, p in dets])
    pelvis = (smpl_joints(betas)[:, 0] + t_full) @ world.T
    return {"frames": [f for f, _ in dets], "rot": rot, "pelvis": pelvis, "betas": betas.mean(0)}


@pytest.mark.parametrize("block", [7, 1 << 16])
def test_json_document_is_read_frame_by_frame_across_read_boundaries(document, sources, block, monkeypatch):
    from pipeline.export import source

    monkeypatch.setattr(source, "READ_BLOCK", block)  # 7: every number and key straddles reads
    reader = source.ResultReader(sources["json"])
    frames = list(reader.frames())
    assert frames == document["frames"]
    assert reader.meta == {k: v for k, v in document.items() if k != "frames"}


# -- BVH ------------------------------------------------------------------------------------------


def bvh_rotations(bvh: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Per frame each joint's rotation matrix (its channels composed by scipy, in the listed
    order, intrinsic) and the root position."""
    frames = len(bvh["motion"])
    rots = np.zeros((frames, len(bvh["joints"]), 3, 3))
    root = np.zeros((frames, 3))
    col = 0
    for j, joint in enumerate(bvh["joints"]):
        chans = joint["channels"]
        values = bvh["motion"][:, col : col + len(chans)]
        col += len(chans)
        rot_axes = "".join(c[0] for c in chans if c.endswith("rotation"))
        rot_vals = values[:, [k for k, c in enumerate(chans) if c.endswith("rotation")]]
        rots[:, j] = Rotation.from_euler(rot_axes.upper(), rot_vals, degrees=True).as_matrix()
        if "Xposition" in chans:
            root = values[:, [chans.index("Xposition"), chans.index("Yposition"), chans.index("Zposition")]]
    return rots, root


SMPL_NAMES = [
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2", "left_ankle", "right_ankle",
    "spine3", "left_foot", "right_foot", "neck", "left_collar", "right_collar", "head", "left_shoulder",
    "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hand", "right_hand",
]  # fmt: skip


@pytest.mark.parametrize("kind", ["json", "folder"])
def test_bvh_rotations_offsets_and_root_follow_the_input(kind, document, sources, body, smpl_joints):
    from pipeline.export import export

    files = list(export(sources[kind], "bvh", body=body))
    assert [f.name for f in files] == ["track-3.bvh", "track-7.bvh"]
    checked = 0
    for track_id, item in zip(TRACK_FRAMES, files):
        bvh = parse_bvh(item.data.decode())
        names = [j["name"] for j in bvh["joints"]]
        assert sorted(names) == sorted(SMPL_NAMES) and names[0] == "pelvis"
        by_name = {j["name"]: j for j in bvh["joints"]}
        for j, name in enumerate(SMPL_NAMES):  # the SMPL kinematic tree
            parent = smpl_joints.parents[j]
            got_parent = by_name[name]["parent"]
            assert (bvh["joints"][got_parent]["name"] if got_parent >= 0 else None) == (SMPL_NAMES[parent] if parent >= 0 else None)
        assert by_name["pelvis"]["channels"] == ["Xposition", "Yposition", "Zposition", "Zrotation", "Yrotation", "Xrotation"]
        assert bvh["frame_time"] == pytest.approx(1 / FPS, abs=1e-8)
        want = expected(document, track_id, Y_UP, smpl_joints)
        rest = smpl_joints(want["betas"])[0] * 100  # centimetres
        for j, name in enumerate(SMPL_NAMES[1:], 1):
            np.testing.assert_allclose(by_name[name]["offset"], rest[j] - rest[smpl_joints.parents[j]], atol=2e-6, err_msg=name)
        np.testing.assert_allclose(by_name["pelvis"]["offset"], 0.0)
        rots, root = bvh_rotations(bvh)
        first = want["frames"][0]
        assert len(rots) == want["frames"][-1] - first + 1  # every frame from the first to the last
        order = [names.index(n) for n in SMPL_NAMES]
        for k, frame in enumerate(want["frames"]):
            assert geodesic(rots[frame - first, order], want["rot"][k]).max() < TOL_RAD
            np.testing.assert_allclose(root[frame - first], want["pelvis"][k] * 100, atol=2e-6)
            checked += 1
        if track_id == 7:  # frame 3 is a gap: halfway between frames 2 and 4, joint by joint
            gap = rots[3 - first, order]
            before, after = want["rot"][want["frames"].index(2)], want["rot"][want["frames"].index(4)]
            np.testing.assert_allclose(geodesic(gap, before), geodesic(gap, after), atol=TOL_RAD)
            np.testing.assert_allclose(geodesic(gap, before) + geodesic(gap, after), geodesic(before, after), atol=TOL_RAD)
    assert checked == sum(len(v) for v in TRACK_FRAMES.values())


# -- AMASS ----------------------------------------------------------------------------------------


def rodrigues(aa: np.ndarray) -> np.ndarray:
    """Axis-angle (..., 3) -> matrices, by Rodrigues' formula."""
    theta = np.linalg.norm(aa, axis=-1, keepdims=True)
    k = aa / np.maximum(theta, 1e-12)
    kx = np.zeros(aa.shape[:-1] + (3, 3))
    kx[..., 0, 1], kx[..., 0, 2], kx[..., 1, 2] = -k[..., 2], k[..., 1], -k[..., 0]
    kx = kx - np.swapaxes(kx, -1, -2)
    s, c = np.sin(theta)[..., None], np.cos(theta)[..., None]
    return np.eye(3) + s * kx + (1 - c) * kx @ kx


def test_amass_npz_keys_shapes_and_poses(document, sources, body, smpl_joints):
    from pipeline.export import export

    files = {f.name: f for f in export(sources["folder"], "amass", body=body)}
    assert sorted(files) == ["track-3.npz", "track-7.npz"]
    checked = 0
    for track_id in TRACK_FRAMES:
        z = np.load(io.BytesIO(files[f"track-{track_id}.npz"].data), allow_pickle=False)
        want = expected(document, track_id, Z_UP, smpl_joints)
        n = want["frames"][-1] - want["frames"][0] + 1
        assert z["poses"].shape == (n, 72) and z["poses"].dtype == np.float64
        assert z["trans"].shape == (n, 3) and z["betas"].shape == (10,)
        assert float(z["mocap_framerate"]) == FPS and str(z["gender"]) == "neutral"
        np.testing.assert_allclose(z["betas"], want["betas"], atol=1e-12)
        assert z["frame_index"].tolist() == list(range(want["frames"][0], want["frames"][-1] + 1))
        assert z["detected"].tolist() == [f in want["frames"] for f in z["frame_index"]]
        mats = rodrigues(z["poses"].reshape(n, 24, 3))
        pelvis_rest = smpl_joints(want["betas"])[0, 0]
        for k, frame in enumerate(want["frames"]):
            row = frame - want["frames"][0]
            assert geodesic(mats[row], want["rot"][k]).max() < TOL_RAD
            # SMPL's transl: the mean-shaped body's pelvis plus trans is where the detection's pelvis was
            np.testing.assert_allclose(pelvis_rest + z["trans"][row], want["pelvis"][k], atol=1e-9)
            checked += 1
    assert checked == sum(len(v) for v in TRACK_FRAMES.values())


# -- GLB ------------------------------------------------------------------------------------------


def read_accessor(doc: dict[str, Any], binary: bytes, index: int) -> np.ndarray:
    acc = doc["accessors"][index]
    view = doc["bufferViews"][acc["bufferView"]]
    dtype = {5126: "<f4", 5121: "u1", 5123: "<u2", 5125: "<u4"}[acc["componentType"]]
    width = {"SCALAR": 1, "VEC3": 3, "VEC4": 4, "MAT4": 16}[acc["type"]]
    start = view["byteOffset"] + acc.get("byteOffset", 0)
    return np.frombuffer(binary, dtype=dtype, count=acc["count"] * width, offset=start).reshape(acc["count"], width)


def quat_matrix(q: np.ndarray) -> np.ndarray:
    """x, y, z, w -> matrix, via scipy (which takes the same scalar-last order)."""
    return Rotation.from_quat(q).as_matrix()


def test_glb_passes_the_khronos_validator_and_holds_the_input(document, sources, body, smpl_joints, gltf_validator, tmp_path):
    from pipeline.export import export

    files = list(export(sources["json"], "glb", body=body))
    assert [f.name for f in files] == ["track-3.glb", "track-7.glb"]
    checked = 0
    for track_id, item in zip(TRACK_FRAMES, files):
        path = tmp_path / item.name
        path.write_bytes(item.data)
        issues = validate_glb(gltf_validator, path)
        assert issues["numErrors"] == 0 and issues["numWarnings"] == 0, issues["messages"][:5]

        doc, binary = parse_glb(item.data)
        skin = doc["skins"][0]
        assert len(skin["joints"]) == 24
        names = [doc["nodes"][j]["name"] for j in skin["joints"]]
        assert names == SMPL_NAMES
        want = expected(document, track_id, Y_UP, smpl_joints)
        rest = smpl_joints(want["betas"])[0]
        for j in range(24):  # rest offsets from the parent, and bind matrices undoing the rest positions
            parent = smpl_joints.parents[j]
            offset = rest[j] - (rest[parent] if parent >= 0 else 0)
            np.testing.assert_allclose(doc["nodes"][skin["joints"][j]]["translation"], offset, atol=1e-9)
        ibm = read_accessor(doc, binary, skin["inverseBindMatrices"]).reshape(24, 4, 4)  # column-major
        np.testing.assert_allclose(ibm[:, 3, :3], -rest, atol=1e-6)
        np.testing.assert_allclose(ibm[:, :3, :3], np.broadcast_to(np.eye(3), (24, 3, 3)), atol=0)

        prim = doc["meshes"][0]["primitives"][0]
        positions = read_accessor(doc, binary, prim["attributes"]["POSITION"])
        data = smpl_joints.data
        shaped = np.asarray(data["v_template"]) + np.asarray(data["shapedirs"].x)[:, :, :10] @ want["betas"]
        np.testing.assert_allclose(positions, shaped, atol=1e-6)
        weights = read_accessor(doc, binary, prim["attributes"]["WEIGHTS_0"])
        joints = read_accessor(doc, binary, prim["attributes"]["JOINTS_0"])
        full = np.asarray(data["weights"])
        np.testing.assert_allclose(weights.sum(1), 1.0, atol=1e-6)
        # the tiny model skins each vertex to two joints: the top 4 hold them all, unchanged
        np.testing.assert_allclose(np.take_along_axis(full, joints.astype(int), 1)[weights > 0], weights[weights > 0], atol=1e-6)
        np.testing.assert_allclose(np.sort(full, 1)[:, -2:].sum(1), 1.0, atol=1e-6)

        anim = doc["animations"][0]
        by_target = {(c["target"]["node"], c["target"]["path"]): anim["samplers"][c["sampler"]] for c in anim["channels"]}
        times = read_accessor(doc, binary, by_target[(0, "rotation")]["input"])[:, 0]
        np.testing.assert_allclose(times, [f / FPS for f in want["frames"]], atol=1e-6)
        for j in range(24):
            q = read_accessor(doc, binary, by_target[(skin["joints"][j], "rotation")]["output"])
            assert geodesic(quat_matrix(q), want["rot"][:, j]).max() < TOL_RAD, SMPL_NAMES[j]
        moved = read_accessor(doc, binary, by_target[(0, "translation")]["output"])
        np.testing.assert_allclose(moved, want["pelvis"], atol=1e-5)
        assert doc["asset"]["extras"]["units"] == "metres" and doc["asset"]["extras"]["fps"] == FPS
        checked += 1
    assert checked == 2


# -- MOT ------------------------------------------------------------------------------------------


# motmetrics' loader subtracts a tuple from two pandas columns, which pandas deprecates
@pytest.mark.filterwarnings("ignore:Operation with tuple is deprecated")
def test_mot_file_reads_back_with_motmetrics(document, sources, tmp_path):
    mm = pytest.importorskip("motmetrics")
    from pipeline.export import export

    (item,) = export(sources["json"], "mot")
    path = tmp_path / item.name
    path.write_bytes(item.data)
    table = mm.io.loadtxt(str(path), fmt="mot15-2D")
    boxes = [(f["frame_index"] + 1, p["track_id"], p["bbox"], p["score"]) for f in document["frames"] for p in f["people"] if p["track_id"] is not None]
    assert len(table) == len(boxes) == sum(len(v) for v in TRACK_FRAMES.values())
    for frame, tid, (x1, y1, x2, y2), score in boxes:
        row = table.loc[(frame, tid)]
        # the loader takes MOTChallenge's 1-based pixels back to the result's 0-based ones
        np.testing.assert_allclose([row["X"], row["Y"], row["Width"], row["Height"]], [x1, y1, x2 - x1, y2 - y1], atol=1e-3)
        assert row["Confidence"] == pytest.approx(score, abs=1e-5)
    lines = item.data.decode().splitlines()
    assert all(line.endswith(",-1,-1,-1") for line in lines)

    (one,) = export(sources["folder"], "mot", track=7)
    assert [int(line.split(",")[1]) for line in one.data.decode().splitlines()] == [7] * len(TRACK_FRAMES[7])
    (every,) = export(sources["folder"], "mot", include_unconfirmed=True)
    extra = [line for line in every.data.decode().splitlines() if line.split(",")[1] == "-1"]
    assert [int(line.split(",")[0]) for line in extra] == [UNCONFIRMED_FRAME + 1]


def test_unconfirmed_detections_only_on_request(sources, body):
    from pipeline.export import export

    names = [f.name for f in export(sources["folder"], "bvh", body=body, include_unconfirmed=True)]
    assert names == ["track-3.bvh", "track-7.bvh", "unconfirmed-1.bvh"]
    (one,) = export(sources["folder"], "bvh", track=-1, body=body, include_unconfirmed=True)
    assert parse_bvh(one.data.decode())["motion"].shape[0] == 1


# -- OBJ ------------------------------------------------------------------------------------------


def _array(value: Any) -> np.ndarray:
    return np.asarray(getattr(value, "x", value))  # chumpy arrays keep theirs in .x


def smpl_mesh(data: dict[str, Any], rot: np.ndarray, betas: np.ndarray) -> np.ndarray:
    """SMPL's posed vertices (6890, 3), untranslated, written out here in float64 numpy: shape
    and pose blend shapes, forward kinematics along the tree, linear blend skinning."""
    shaped = _array(data["v_template"]) + _array(data["shapedirs"])[:, :, :10] @ betas
    rest = data["J_regressor"].toarray() @ shaped
    posed = shaped + _array(data["posedirs"]) @ (rot[1:] - np.eye(3)).reshape(-1)
    parents = np.asarray(data["kintree_table"][0]).astype(np.int64)
    world = np.zeros((24, 4, 4))
    for j in range(24):
        local = np.eye(4)
        local[:3, :3] = rot[j]
        local[:3, 3] = rest[j] - (rest[parents[j]] if j else 0.0)
        world[j] = world[parents[j]] @ local if j else local
    skin = world.copy()
    skin[:, :3, 3] -= np.einsum("jab,jb->ja", world[:, :3, :3], rest)  # relative to the rest pose
    blended = np.einsum("vj,jab->vab", _array(data["weights"]), skin)
    return np.einsum("vab,vb->va", blended[:, :3, :3], posed) + blended[:, :3, 3]


def test_obj_meshes_are_the_posed_bodies_in_the_y_up_scene(document, sources, body, smpl_joints):
    trimesh = pytest.importorskip("trimesh")
    from pipeline.export import export

    files = list(export(sources["json"], "obj", body=body))
    want_names = [f"track-{t}/frame-{f:06d}.obj" for t, frames in TRACK_FRAMES.items() for f in frames]
    assert [f.name for f in files] == want_names
    faces = np.asarray(smpl_joints.data["f"]).astype(np.int64)
    checked = 0
    for item in files:
        track_id, frame = int(item.name.split("/")[0][6:]), int(item.name[-10:-4])
        ((_, person),) = [(f, p) for f, p in detections(document, track_id) if f == frame]
        mesh = trimesh.load(io.BytesIO(item.data), file_type="obj", process=False, maintain_order=True)
        assert mesh.vertices.shape == (6890, 3) and mesh.faces.shape == (13776, 3)
        np.testing.assert_array_equal(mesh.faces, faces)
        rot = np.concatenate([[person["smpl"]["global_orient"]], person["smpl"]["body_pose"]])
        camera = smpl_mesh(smpl_joints.data, rot, np.asarray(person["smpl"]["betas"])) + person["camera"]["t_full"]
        # float32 posing in the exporter, 6 decimals in the file
        np.testing.assert_allclose(mesh.vertices, camera @ Y_UP.T, atol=2e-5, err_msg=item.name)
        checked += 1
    assert checked == sum(len(v) for v in TRACK_FRAMES.values())

    names = [f.name for f in export(sources["folder"], "obj", track=-1, body=body, include_unconfirmed=True)]
    assert names == [f"unconfirmed-1/frame-{UNCONFIRMED_FRAME:06d}.obj"]


# -- PHALP ----------------------------------------------------------------------------------------

MAX_AGE = 50  # PHALP's max_age_track: frames a confirmed track stays listed without a detection
SCHEMA = phalp_schema((REPO / "docs" / "exports.md").read_text())


def check_value(value: Any, spec: dict[str, Any], where: str) -> None:
    kind, dtype, shape = spec["type"], spec["dtype"], spec["shape"]
    if kind == "ndarray":
        assert isinstance(value, np.ndarray) and value.dtype == np.dtype(dtype) and value.shape == shape, (where, type(value), getattr(value, "dtype", None), getattr(value, "shape", None))
    elif kind.startswith("np."):
        assert type(value) is getattr(np, kind[3:]) and value.dtype == np.dtype(dtype), (where, type(value))
    else:
        assert type(value) is {"int": int, "float": float, "str": str, "list": list, "dict": dict}[kind], (where, type(value))
        if kind == "list" and shape is not None:
            assert len(value) == shape[0], (where, len(value))


def test_phalp_pickle_holds_every_documented_key_of_every_frame(document, sources):
    import joblib

    from pipeline.export import export

    assert len(SCHEMA) > 25 and {"tid", "smpl", "smpl.betas", "appe", "mask"} <= set(SCHEMA)
    top = {k: v for k, v in SCHEMA.items() if "." not in k}
    subkeys = {k.split(".", 1)[1]: v for k, v in SCHEMA.items() if k.startswith("smpl.")}
    (item,) = export(sources["json"], "phalp")
    assert item.name == "tracks.pkl"
    results = joblib.load(io.BytesIO(item.data))
    assert list(results) == [f"{f['frame_index'] + 1:06d}.jpg" for f in document["frames"]]
    checked = 0
    for name, entry in results.items():
        assert set(entry) == set(top), (name, set(entry) ^ set(top))
        count = {"track": len(entry["tid"]), "detected": len(entry["tracked_ids"])}
        for key, spec in top.items():
            if spec["per"] == "frame":
                check_value(entry[key], spec, f"{name} {key}")
                continue
            assert isinstance(entry[key], list) and len(entry[key]) == count[spec["per"]], (name, key)
            for i, value in enumerate(entry[key]):
                check_value(value, spec, f"{name} {key}[{i}]")
                if key == "smpl":
                    assert set(value) == set(subkeys)
                    for sub, subspec in subkeys.items():
                        check_value(value[sub], subspec, f"{name} smpl[{i}].{sub}")
                checked += 1
        assert all(type(t) is int for t in entry["tid"] + entry["tracked_ids"])
    assert checked > 0


def test_phalp_pickle_holds_the_results_tracks_and_numbers(document, sources):
    import joblib

    from pipeline.export import export

    (item,) = export(sources["folder"], "phalp")
    results = joblib.load(io.BytesIO(item.data))
    height, width = document["video"]["height"], document["video"]["width"]
    checked = 0
    for t, frame in enumerate(document["frames"]):
        entry = results[f"{frame['frame_index'] + 1:06d}.jpg"]
        assert entry["time"] == t and entry["shot"] == 0
        here = {p["track_id"]: p for p in frame["people"] if p["track_id"] is not None}
        # a track is listed from its first detection until MAX_AGE frames after its latest one
        last = {tid: max(f for f in seen if f <= frame["frame_index"]) for tid, seen in TRACK_FRAMES.items() if seen[0] <= frame["frame_index"]}
        assert entry["tid"] == sorted(tid for tid, f in last.items() if frame["frame_index"] - f <= MAX_AGE)
        assert entry["tracked_ids"] == sorted(here)
        assert entry["tracked_time"] == [frame["frame_index"] - last[tid] for tid in entry["tid"]]
        for i, tid in enumerate(entry["tid"]):
            ((f0, person),) = [(f, p) for f, p in detections(document, tid) if f == last[tid]]
            x1, y1, x2, y2 = person["bbox"]
            np.testing.assert_allclose(entry["bbox"][i], [x1, y1, x2 - x1, y2 - y1], rtol=1e-6)
            smpl = entry["smpl"][i]
            np.testing.assert_array_equal(smpl["global_orient"][0], np.float32(person["smpl"]["global_orient"]))
            np.testing.assert_array_equal(smpl["body_pose"], np.float32(person["smpl"]["body_pose"]))
            np.testing.assert_array_equal(smpl["betas"], np.float32(person["smpl"]["betas"]))
            np.testing.assert_array_equal(entry["camera_bbox"][i], np.float32(person["camera"]["pred_cam"]))
            np.testing.assert_array_equal(entry["3d_joints"][i][:44], np.float32(person["keypoints_3d"]))
            assert entry["conf"][i] == np.float32(person["score"]) and entry["extra_data"][i] == person["person_index"]
            assert entry["img_name"][i] == f"{f0 + 1:06d}.jpg" and entry["size"][i] == [height, width]
            assert np.isnan(entry["appe"][i]).all()
            # PHALP's vectors, by their definitions: the joints projected with focal 5000 in the
            # 256-px square frame (0-1 coordinates), then the camera three times; the pose vector
            cam = entry["camera"][i].astype(np.float64)
            pts = np.vstack([person["keypoints_3d"], np.zeros((1, 3))]) + cam
            joints_2d = 5000.0 / 256.0 * pts[:, :2] / pts[:, 2:] + 0.5
            np.testing.assert_allclose(entry["2d_joints"][i], joints_2d.reshape(-1), rtol=1e-5, atol=1e-6)
            np.testing.assert_array_equal(entry["loca"][i], np.concatenate([entry["2d_joints"][i], np.tile(entry["camera"][i], 3)]))
            pose = np.concatenate([np.ravel(person["smpl"]["global_orient"]), np.ravel(person["smpl"]["body_pose"]), person["smpl"]["betas"], cam * [1, 1, 1 / 200]])
            np.testing.assert_allclose(entry["pose"][i], pose, rtol=1e-6, atol=1e-7)
            # the box as a COCO mask: the pixels whose centres lie inside it
            mask = rle_mask(entry["mask"][i][0])
            cols, rows = np.arange(width) + 0.5, np.arange(height) + 0.5
            box = ((rows >= y1) & (rows < y2))[:, None] & ((cols >= x1) & (cols < x2))[None, :]
            np.testing.assert_array_equal(mask, box.astype(np.uint8))
            checked += 1
    assert checked == sum(len(v) for v in TRACK_FRAMES.values()) + 1  # + track 7 listed, missed, in frame 3

    # a track missed for good stays listed MAX_AGE frames, then is gone
    person = detections(document, 3)[0][1]
    lost = {**document, "frames": [{"frame_index": f, "time_s": f / FPS, "people": [person] if f == 0 else []} for f in range(MAX_AGE + 3)]}
    (item,) = export(lost, "phalp")
    listed = [(e["tid"], e["tracked_time"]) for e in joblib.load(io.BytesIO(item.data)).values()]
    assert listed == [([3], [f]) for f in range(MAX_AGE + 1)] + [([], [])] * 2

    (one,) = export(sources["json"], "phalp", track=7)
    assert one.name == "track-7.pkl"
    assert {t for e in joblib.load(io.BytesIO(one.data)).values() for t in e["tid"]} == {7}



# -- errors and the command line ------------------------------------------------------------------


def test_export_errors_have_stable_codes(sources, body, tmp_path):
    from pipeline.errors import PoseError
    from pipeline.export import export
    from pipeline.weights import CacheRoots

    def code(*args: Any, **kw: Any) -> tuple[str, int]:
        with pytest.raises(PoseError) as info:
            list(export(*args, **kw))
        return info.value.code, info.value.status

    assert code(sources["json"], "fbx") == ("export_format_unknown", 422)
    assert code(sources["json"], "bvh", track=99, body=body) == ("track_not_found", 404)
    assert code(sources["json"], "mot", track=99) == ("track_not_found", 404)
    assert code(sources["json"], "glb", roots=CacheRoots.under(tmp_path / "empty"))[0] == "smpl_missing"
    assert code(tmp_path / "nowhere.json", "mot") == ("result_not_found", 404)
    broken = tmp_path / "broken.json"
    broken.write_text('{"schema_version": "1.0", "frames": [{"frame_index": 0, "people": []}, {"frame_')
    assert code(broken, "mot") == ("result_unreadable", 400)


def test_cli_export(sources, tiny_cache, tmp_path, capsys):
    from pipeline.cli import main

    out = tmp_path / "walk.bvh"
    assert main(["export", str(sources["json"]), "--format", "bvh", "--track", "3", "--out", str(out), "--cache-dir", str(tiny_cache)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["files"] == ["track-3.bvh"] and summary["out"] == str(out)
    assert parse_bvh(out.read_text())["joints"][0]["name"] == "pelvis"

    archive = tmp_path / "all.zip"
    assert main(["export", str(sources["folder"]), "--format", "glb", "--out", str(archive), "--cache-dir", str(tiny_cache)]) == 0
    capsys.readouterr()
    with zipfile.ZipFile(archive) as zf:
        assert zf.namelist() == ["track-3.glb", "track-7.glb"]
        assert zf.read("track-7.glb")[:4] == b"glTF"

    meshes = tmp_path / "meshes.zip"  # OBJ: a zip even for one track
    assert main(["export", str(sources["json"]), "--format", "obj", "--track", "7", "--out", str(meshes), "--cache-dir", str(tiny_cache)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["zip"] is True and summary["files"] == [f"track-7/frame-{f:06d}.obj" for f in TRACK_FRAMES[7]]
    with zipfile.ZipFile(meshes) as zf:
        assert zf.namelist() == summary["files"]

    import joblib

    pkl = tmp_path / "demo_clip.pkl"  # PHALP: one file, and no SMPL model needed
    assert main(["export", str(sources["folder"]), "--format", "phalp", "--out", str(pkl), "--cache-dir", str(tmp_path / "no-models")]) == 0
    assert json.loads(capsys.readouterr().out)["zip"] is False
    assert len(joblib.load(pkl)) == FRAMES

    cases = [
        (["--format", "fbx"], "export_format_unknown"),
        (["--format", "bvh", "--track", "42", "--cache-dir", str(tiny_cache)], "track_not_found"),
        (["--format", "bvh", "--cache-dir", str(tmp_path / "no-models")], "smpl_missing"),
    ]
    for extra, want in cases:
        assert main(["export", str(sources["json"]), "--out", str(tmp_path / "x.out"), *extra]) == 2
        assert json.loads(capsys.readouterr().out)["error"]["code"] == want
    assert not (tmp_path / "x.out").exists()


# -- the HTTP route's logic (the served route: tests/test_serve_video.py) ---------------------------


def test_job_export_response(sources, tiny_cache, tmp_path):
    import asyncio

    pytest.importorskip("ray.serve")
    from pipeline.errors import PoseError
    from service.api.video_jobs import VideoJobs
    from service.settings import JobSettings, ModelSettings, VideoApiSettings

    models = ModelSettings(profile="full", weights_dir=str(tiny_cache))
    videos = VideoJobs(None, JobSettings(data_dir=str(tmp_path / "data")), VideoApiSettings(models=models))  # type: ignore[arg-type]
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"stands in for the video; nothing reads it here")
    job = videos.store.create("video", input_file=clip)

    def refused(j: Any, fmt: str, track: int | None = None) -> tuple[str, int]:
        with pytest.raises(PoseError) as info:
            asyncio.run(videos.export_response(j, fmt, track, False))
        return info.value.code, info.value.status

    assert refused(job, "bvh") == ("job_not_finished", 409)
    assert refused(job, "fbx") == ("export_format_unknown", 422)
    claimed = videos.store.claim_next()
    assert claimed is not None and claimed.id == job.id
    job_dir = videos.store.job_dir(job.id)
    for name in ("result.jsonl", "result-meta.json"):
        shutil.copy(sources["folder"] / name, job_dir / name)
    done = videos.store.finish(job.id, {"jsonl": "result.jsonl", "meta": "result-meta.json"}, token=claimed.attempts)
    assert refused(done, "glb", 12) == ("track_not_found", 404)

    response = asyncio.run(videos.export_response(done, "glb", 7, False))
    assert response.media_type == "model/gltf-binary"
    assert response.headers["content-disposition"] == f'attachment; filename="{job.id}-track-7.glb"'
    data = Path(response.path).read_bytes()
    assert parse_glb(data)[0]["asset"]["extras"]["track_id"] == 7
    asyncio.run(response.background())  # the temporary file goes once sent
    assert not Path(response.path).exists()

    zipped = asyncio.run(videos.export_response(done, "amass", None, False))
    assert zipped.media_type == "application/zip"
    with zipfile.ZipFile(zipped.path) as zf:
        assert zf.namelist() == ["track-3.npz", "track-7.npz"]

    without = VideoJobs(None, JobSettings(data_dir=str(tmp_path / "data")), VideoApiSettings())  # type: ignore[arg-type]
    with pytest.raises(PoseError) as info:
        asyncio.run(without.export_response(done, "bvh", None, False))
    assert (info.value.code, info.value.status) == ("smpl_missing", 503)
    mot = asyncio.run(without.export_response(done, "mot", None, False))  # MOT needs no body model
    assert mot.headers["content-disposition"].endswith('-tracks.txt"')
    pkl = asyncio.run(without.export_response(done, "phalp", 3, False))  # nor does PHALP's pickle
    assert pkl.media_type == "application/octet-stream"
    assert pkl.headers["content-disposition"] == f'attachment; filename="{job.id}-track-3.pkl"'
    meshes = asyncio.run(videos.export_response(done, "obj", 7, False))  # OBJ: a zip, even for one track
    assert meshes.media_type == "application/zip" and meshes.headers["content-disposition"].endswith('-obj.zip"')
    with zipfile.ZipFile(meshes.path) as zf:
        assert zf.namelist() == [f"track-7/frame-{f:06d}.obj" for f in TRACK_FRAMES[7]]
