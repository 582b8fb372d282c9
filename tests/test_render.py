"""Overlay rendering: silhouettes against an independent fill, occlusion, colours, the CLI's files,
and byte ranges of served files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import pytest
import torch
from videos import write_video

from pipeline.cli import main
from pipeline.render.overlay import MeshRenderer, RenderConfig, SMPLMeshes, track_colour
from pipeline.weights import CacheRoots

FLIP = np.diag([1.0, -1.0, -1.0])  # SMPL's y-up body turned into the camera's y-down frame


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny synthetic SMPL (and the rest of HMR2's files) in 4D-Humans' layout."""
    from pipeline.tiny.hmr2 import write_tiny_hmr2

    base = tmp_path_factory.mktemp("render_cache")
    write_tiny_hmr2(CacheRoots.under(base))
    return base


@pytest.fixture(scope="module")
def meshes(cache_dir: Path) -> SMPLMeshes:
    return SMPLMeshes.from_cache(CacheRoots.under(cache_dir), device="cpu", download=False)


def rodrigues(axis_angle: tuple[float, float, float]) -> np.ndarray:
    return cv2.Rodrigues(np.asarray(axis_angle, np.float64))[0]


def person(t_full, *, track_id=None, index=0, orient=FLIP, bends=(), focal=900.0) -> dict[str, Any]:
    """A result's person: SMPL rotations (``bends``: (joint, axis-angle) of body joints), camera."""
    pose = [np.eye(3) for _ in range(23)]
    for joint, aa in bends:
        pose[joint - 1] = rodrigues(aa)
    return {
        "person_index": index,
        "track_id": track_id,
        "smpl": {"global_orient": np.asarray(orient).tolist(), "body_pose": [p.tolist() for p in pose], "betas": [0.0] * 10},
        "camera": {"t_full": list(map(float, t_full)), "focal_length_full": focal},
    }


def filled_triangles(vertices: np.ndarray, faces: np.ndarray, focal: float, hw: tuple[int, int]) -> np.ndarray:
    """Pixels whose centre lies in some projected triangle: edge functions in float64 over a
    fixed square window per triangle (windows grouped by size), independent of the renderer
    (no depth, no z-buffer, no bounding-box expansion)."""
    h, w = hw
    v = np.asarray(vertices, np.float64)
    uv = np.stack([focal * v[:, 0] / v[:, 2] + w / 2, focal * v[:, 1] / v[:, 2] + h / 2], axis=1)
    tri = uv[faces]  # (T, 3, 2)
    lo = np.floor(tri.min(axis=1)).astype(np.int64)
    size = (np.ceil(tri.max(axis=1)).astype(np.int64) - lo + 1).max(axis=1)
    assert size.max() <= 512, "triangles of the test meshes span a few pixels"
    mask = np.zeros((h, w), bool)
    smaller = 0
    for k in (4, 8, 16, 32, 64, 128, 256, 512):
        sel = (size > smaller) & (size <= k)
        smaller = k
        if not sel.any():
            continue
        t, o = tri[sel], lo[sel]
        gx = o[:, 0, None, None] + np.arange(k)[None, None, :]
        gy = o[:, 1, None, None] + np.arange(k)[None, :, None]
        px, py = gx + 0.5, gy + 0.5

        def edge(i: int, j: int) -> np.ndarray:
            p, q = t[:, i, :, None, None], t[:, j, :, None, None]
            return (q[:, 0] - p[:, 0]) * (py - p[:, 1]) - (q[:, 1] - p[:, 1]) * (px - p[:, 0])

        e0, e1, e2 = edge(0, 1), edge(1, 2), edge(2, 0)
        inside = ((e0 >= 0) & (e1 >= 0) & (e2 >= 0)) | ((e0 <= 0) & (e1 <= 0) & (e2 <= 0))
        inside &= (gx >= 0) & (gx < w) & (gy >= 0) & (gy < h)
        gx, gy = np.broadcast_to(gx, inside.shape), np.broadcast_to(gy, inside.shape)
        mask[gy[inside], gx[inside]] = True
    return mask


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def direction(bgr) -> np.ndarray:
    v = np.asarray(bgr, np.float64)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


POSES = {
    "rest": dict(orient=FLIP),
    "turned": dict(orient=FLIP @ rodrigues((0.0, 0.7, 0.0))),
    "bent": dict(orient=FLIP @ rodrigues((0.2, -0.4, 0.1)), bends=[(1, (-0.9, 0.0, 0.2)), (5, (1.1, 0.0, 0.0)), (16, (0.0, 0.0, -1.0)), (18, (0.0, -1.2, 0.0))]),
}


# (t_full, focal): a short lens, and HMR2's (5000 / 256 * 360 px: the body over 100 m away)
SCALES = {"near": ((0.3, 0.1, 4.5), 900.0), "hmr2": ((0.4, 0.2, 110.0), 5000.0 / 256.0 * 360)}


@pytest.mark.parametrize("pose", sorted(POSES))
@pytest.mark.parametrize("scale", sorted(SCALES))
def test_silhouette_matches_an_independent_fill_of_the_projected_triangles(meshes: SMPLMeshes, pose: str, scale: str) -> None:
    hw = (240, 360)  # not square: the principal point is (W / 2, H / 2)
    t_full, focal = SCALES[scale]
    people = [person(t_full, track_id=3, focal=focal, **POSES[pose])]
    verts, focal = meshes.camera_vertices(people)
    renderer = MeshRenderer(meshes.faces, RenderConfig(alpha=1.0, labels=False), device="cpu")
    black = np.zeros((*hw, 3), np.uint8)
    drawn = renderer.render(black, verts, focal, [3])
    silhouette = drawn.any(axis=2)
    want = filled_triangles(verts[0].numpy(), meshes.faces, focal, hw)
    assert want.sum() > 1000, "the body should cover a good part of the image"
    assert iou(silhouette, want) >= 0.99


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_the_nearer_person_hides_the_farther_whatever_their_order(meshes: SMPLMeshes, order: tuple[int, int]) -> None:
    hw = (240, 320)
    near = person((-0.1, 0.0, 4.0), track_id=1)
    far = person((0.15, 0.05, 6.0), track_id=2, orient=FLIP @ rodrigues((0.0, 0.5, 0.0)))
    people = [[near, far][i] for i in order]
    verts, focal = meshes.camera_vertices(people)
    renderer = MeshRenderer(meshes.faces, RenderConfig(alpha=1.0, labels=False), device="cpu")
    drawn = renderer.render(np.zeros((*hw, 3), np.uint8), verts, focal, [p["track_id"] for p in people])
    masks = {p["track_id"]: filled_triangles(v.numpy(), meshes.faces, focal, hw) for p, v in zip(people, verts)}
    overlap = cv2.erode((masks[1] & masks[2]).astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    only_far = cv2.erode((masks[2] & ~masks[1]).astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    assert overlap.sum() > 500 and only_far.sum() > 100
    seen = direction(drawn[overlap])
    near_dir, far_dir = direction(track_colour(1)), direction(track_colour(2))
    assert (seen @ near_dir > 0.995).all()
    assert (seen @ near_dir > seen @ far_dir).all()
    assert (direction(drawn[only_far]) @ far_dir > 0.995).all()


def test_track_colours_are_a_function_of_the_id(meshes: SMPLMeshes) -> None:
    colours = [track_colour(k) for k in range(20)]
    assert len(colours) == 20
    for i in range(20):
        for j in range(i + 1, 20):
            assert np.abs(np.subtract(colours[i], colours[j])).max() >= 24, (i, j)
    b, g, r = track_colour(None)
    assert b == g == r  # untracked people are grey
    # id 5 drawn in two frames, with different company and places, keeps its colour
    renderer = MeshRenderer(meshes.faces, RenderConfig(alpha=1.0, labels=False), device="cpu")
    first = [person((-0.6, 0.0, 5.0), track_id=3), person((0.5, 0.0, 5.0), track_id=5)]
    second = [person((0.0, 0.2, 7.0), track_id=5, orient=FLIP @ rodrigues((0.0, 1.0, 0.0)))]
    found = []
    for people in (first, second):
        verts, focal = meshes.camera_vertices(people)
        drawn = renderer.render(np.zeros((240, 320, 3), np.uint8), verts, focal, [p["track_id"] for p in people])
        where = cv2.erode(filled_triangles(verts[-1].numpy(), meshes.faces, focal, (240, 320)).astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        found.append(direction(drawn[where]).mean(0))
    assert float(direction(found[0]) @ direction(found[1])) > 0.999


def test_side_view_panel_shows_each_body_turned_where_it_stands(meshes: SMPLMeshes) -> None:
    hw = (240, 320)
    people = [person((-0.8, 0.0, 5.0), track_id=4), person((0.7, 0.1, 6.0), track_id=5, orient=FLIP @ rodrigues((0.0, 0.4, 0.0)))]
    verts, focal = meshes.camera_vertices(people)
    renderer = MeshRenderer(meshes.faces, RenderConfig(alpha=1.0, labels=False, side_view=True, side_background=(0, 0, 0)), device="cpu")
    drawn = renderer.render(np.zeros((*hw, 3), np.uint8), verts, focal, [4, 5])
    assert drawn.shape == (hw[0], 2 * hw[1], 3)
    # each body turned 90 degrees about the vertical axis through its own centre, by hand
    want = np.zeros(hw, bool)
    for v in verts.numpy().astype(np.float64):
        centre = (v.min(0) + v.max(0)) / 2
        x, y, z = (v - centre).T
        one = filled_triangles(np.stack([z, y, -x], axis=1) + centre, meshes.faces, focal, hw)
        assert one.sum() > 300
        want |= one
    assert iou(drawn[:, hw[1] :].any(axis=2), want) >= 0.99


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_gpu_overlay_matches_cpu(meshes: SMPLMeshes) -> None:
    people = [person((-0.3, 0.0, 4.0), track_id=1), person((0.3, 0.1, 5.0), track_id=2)]
    verts, focal = meshes.camera_vertices(people)
    image = np.full((240, 320, 3), 80, np.uint8)
    cpu = MeshRenderer(meshes.faces, device="cpu").render(image, verts, focal, [1, 2], ["1", "2"])
    gpu = MeshRenderer(meshes.faces, device="cuda").render(image, verts.cuda(), focal, [1, 2], ["1", "2"])
    assert (np.abs(cpu.astype(int) - gpu.astype(int)) > 2).mean() < 1e-3


# -- the streamed result reader ---------------------------------------------------------------------


def video_document(frames: list[dict[str, Any]], size: tuple[int, int]) -> dict[str, Any]:
    return {
        "schema_version": "1.0",
        "video": {"width": size[1], "height": size[0], "fps": 10.0, "frame_count": len(frames), "duration_s": None, "rotation": 0},
        "frames": frames,
        "tracks": [],
        "models": {},
    }


# -- the command line -------------------------------------------------------------------------------


def published(folder: Path, document: dict[str, Any]) -> Path:
    """A document as `pipeline.video.results` publishes it: result.jsonl + result-meta.json."""
    folder.mkdir()
    (folder / "result.jsonl").write_text("".join(json.dumps(f) + "\n" for f in document["frames"]))
    (folder / "result-meta.json").write_text(json.dumps({k: v for k, v in document.items() if k != "frames"}))
    return folder


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any]]:
    code = main(argv)
    return code, json.loads(capsys.readouterr().out)


def test_render_command_writes_an_h264_mp4_with_every_frame(cache_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    size = (240, 320)
    clip_frames = [np.full((*size, 3), (60 + 10 * i, 120, 180 - 10 * i), np.uint8) for i in range(6)]
    clip = write_video(tmp_path / "clip.mp4", clip_frames, fps=10)
    tracked = {0: [1], 1: [1, 2], 3: [2], 4: [1, 2], 5: [2]}  # frame 2 is absent: nobody drawn there
    frames = [
        {"frame_index": i, "time_s": i / 10, "people": [person((-0.5 + 0.6 * (t - 1), 0.0, 5.0), track_id=t, index=k) for k, t in enumerate(ids)]}
        for i, ids in tracked.items()
    ]
    result = tmp_path / "result.json"
    result.write_text(json.dumps(video_document(frames, size)))
    out = tmp_path / "overlay.mp4"
    code, answer = run_cli(["render", str(clip), str(result), "--out", str(out), "--cache-dir", str(cache_dir), "--device", "cpu", "--side-view"], capsys)
    assert code == 0, answer
    assert answer["frames"] == 6 and answer["people"] == 7 and (answer["width"], answer["height"]) == (640, 240)
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.codec_context.pix_fmt == "yuv420p"
        assert stream.average_rate == 10
        decoded = [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]
    assert len(decoded) == 6
    assert all(f.shape == (240, 640, 3) for f in decoded)
    for i, (got, src) in enumerate(zip(decoded, clip_frames)):
        differs = np.abs(got[:, :320].astype(int) - src.astype(int)).max(axis=2) > 40
        if i == 2:
            assert differs.mean() < 0.002  # the frame without people is the clip's own
        else:
            assert differs.mean() > 0.02  # bodies drawn
    # the same from the published files of `video --out-dir` (JSON Lines + meta)
    folder = published(tmp_path / "published", video_document(frames, size))
    code, answer = run_cli(["render", str(clip), str(folder), "--out", str(tmp_path / "lines.mp4"), "--cache-dir", str(cache_dir), "--device", "cpu"], capsys)
    assert code == 0 and answer["frames"] == 6 and answer["people"] == 7 and answer["width"] == 320


def test_render_command_errors(cache_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    clip = write_video(tmp_path / "clip.mp4", [np.zeros((64, 64, 3), np.uint8)] * 2, fps=10)
    too_many = tmp_path / "result.json"
    too_many.write_text(json.dumps(video_document([{"frame_index": i, "time_s": 0.0, "people": []} for i in range(3)], (64, 64))))
    other_size = tmp_path / "other.json"
    other_size.write_text(json.dumps(video_document([{"frame_index": 0, "time_s": 0.0, "people": []}], (48, 64))))
    image_result = tmp_path / "image.json"
    image_result.write_text(json.dumps({"schema_version": "1.0", "image": {"width": 64, "height": 64}, "people": [], "models": {}}))
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    common = ["--cache-dir", str(cache_dir), "--device", "cpu"]
    cases = [
        ([str(clip), str(too_many), "--out", str(tmp_path / "o.mp4")], "result_mismatch"),
        ([str(clip), str(other_size), "--out", str(tmp_path / "o.mp4")], "result_mismatch"),
        ([str(clip), str(image_result), "--out", str(tmp_path / "o.mp4")], "result_unreadable"),
        ([str(clip), str(tmp_path / "missing.json"), "--out", str(tmp_path / "o.mp4")], "result_not_found"),
        ([str(text), str(too_many), "--out", str(tmp_path / "o.mp4")], "media_unsupported"),
        ([str(clip), str(too_many), "--out", str(tmp_path / "o.png")], "output_format_unsupported"),
    ]
    for argv, code_name in cases:
        code, answer = run_cli(["render", *argv, *common], capsys)
        assert code == 2 and answer["error"]["code"] == code_name, answer
    assert len(cases) == 6
    assert not any(p.name.startswith(("o.", ".o.")) for p in tmp_path.iterdir())  # nothing half-written


def test_a_cancelled_render_writes_nothing(cache_dir: Path, tmp_path: Path) -> None:
    from pipeline.errors import PoseError
    from pipeline.render.overlay import OverlayRenderer, render_video

    clip = write_video(tmp_path / "clip.mp4", [np.zeros((64, 64, 3), np.uint8)] * 4, fps=10)
    result = published(tmp_path / "result", video_document([{"frame_index": i, "time_s": 0.0, "people": []} for i in range(4)], (64, 64)))
    renderer = OverlayRenderer.from_cache(CacheRoots.under(cache_dir), device="cpu", download=False)
    asked = []
    with pytest.raises(PoseError) as info:
        render_video(clip, result, tmp_path / "overlay.mp4", renderer, chunk_size=2, should_stop=lambda: bool(asked.append(1)) or len(asked) == 2)
    assert info.value.code == "cancelled" and len(asked) == 2  # asked after each chunk
    assert [p.name for p in tmp_path.iterdir() if "overlay" in p.name] == []


def test_render_command_for_an_image(cache_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    photo = tmp_path / "photo.png"
    cv2.imwrite(str(photo), np.full((200, 300, 3), 200, np.uint8))
    people = [person((-0.4, 0.0, 5.0), index=0), person((0.4, 0.0, 5.5), index=1)]
    result = tmp_path / "result.json"
    result.write_text(json.dumps({"schema_version": "1.0", "image": {"width": 300, "height": 200}, "people": people, "models": {}}))
    out = tmp_path / "overlay.png"
    code, answer = run_cli(["render", str(photo), str(result), "--out", str(out), "--cache-dir", str(cache_dir), "--device", "cpu"], capsys)
    assert code == 0, answer
    drawn = cv2.imread(str(out))
    assert drawn.shape == (200, 300, 3)
    assert (np.abs(drawn.astype(int) - 200).max(axis=2) > 40).mean() > 0.02
    wrong = tmp_path / "small.png"
    cv2.imwrite(str(wrong), np.zeros((100, 100, 3), np.uint8))
    code, answer = run_cli(["render", str(wrong), str(result), "--out", str(out), "--cache-dir", str(cache_dir), "--device", "cpu"], capsys)
    assert code == 2 and answer["error"]["code"] == "result_mismatch"


def test_render_per_person_views_as_4d_humans_demo(cache_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--per-person --side-view``: per person, the network's crop | its mesh by the crop camera
    | the mesh turned 90 degrees on white, S x S each, as demo.py writes ``<stem>_<i>.png``. The
    crop window is recovered from the result's cameras; here it is checked against the window
    HMR2's own preprocessing cut, and the meshes against an independent fill of the projected
    triangles of the vertices HMR2 returned."""
    from pipeline.image import ImageRunner
    from pipeline.tiny.vitdet import draw_figures

    image = draw_figures([160, 400])
    photo = tmp_path / "photo.png"
    cv2.imwrite(str(photo), image)
    boxes = [[133.0, 58.0, 187.0, 325.0], [373.0, 58.0, 427.0, 325.0]]
    runner = ImageRunner.from_cache(CacheRoots.under(cache_dir), detect=False, device="cpu", download=False)
    (outcome,) = runner.run([photo], boxes=[boxes], vertices=True)
    assert outcome.result is not None
    result = tmp_path / "result.json"
    result.write_text(json.dumps(outcome.result))
    out = tmp_path / "views" / "person.png"
    common = ["--cache-dir", str(cache_dir), "--device", "cpu"]
    code, answer = run_cli(["render", str(photo), str(result), "--out", str(out), "--per-person", "--side-view", *common], capsys)
    assert code == 0, answer
    assert answer["out"] is None and not out.exists()  # the views only, as demo.py without --full_frame
    assert answer["per_person"] == [str(out.parent / f"person_{i}.png") for i in range(2)]
    crops = runner.hmr2.prepare(image, np.asarray(boxes, np.float32))  # the network's crop windows
    s = crops.img.shape[-1]
    checked = 0
    for i, person in enumerate(outcome.result["people"]):
        view = cv2.imread(answer["per_person"][i])
        assert view.shape == (s, 3 * s, 3)
        crop, mesh, side = view[:, :s], view[:, s : 2 * s], view[:, 2 * s :]
        window = cv2.warpAffine(image, crops.affine[i], (s, s), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        assert np.abs(crop.astype(int) - window.astype(int)).mean() < 1.0
        v = np.asarray(person["vertices"], np.float64) + np.asarray(person["camera"]["t_crop"])
        f = person["camera"]["focal_length_crop"]
        want = filled_triangles(v, meshes_faces(cache_dir), f, (s, s))
        assert want.sum() > 500
        drawn = np.abs(mesh.astype(int) - crop.astype(int)).max(axis=2) > 12
        assert iou(drawn, want) >= 0.9
        centre = (v.min(0) + v.max(0)) / 2
        x, y, z = (v - centre).T
        turned = filled_triangles(np.stack([z, y, -x], axis=1) + centre, meshes_faces(cache_dir), f, (s, s))
        assert iou(np.abs(side.astype(int) - 255).max(axis=2) > 30, turned) >= 0.9
        checked += 1
    assert checked == 2
    # --full-frame: the frame with everyone too, twice as wide with the side view
    code, answer = run_cli(["render", str(photo), str(result), "--out", str(out), "--per-person", "--full-frame", "--side-view", *common], capsys)
    assert code == 0 and answer["out"] == str(out) and len(answer["per_person"]) == 2
    assert cv2.imread(str(out)).shape == (image.shape[0], 2 * image.shape[1], 3)


def meshes_faces(cache_dir: Path) -> np.ndarray:
    return SMPLMeshes.from_cache(CacheRoots.under(cache_dir), device="cpu", download=False).faces


def test_render_takes_a_folder_result(cache_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``image DIR --out all.json`` then ``render DIR/b.png all.json``: the entry of that file."""
    photo = tmp_path / "b.png"
    cv2.imwrite(str(photo), np.full((200, 300, 3), 200, np.uint8))
    people = [person((-0.4, 0.0, 5.0), index=0)]
    entry = {"schema_version": "1.0", "image": {"width": 300, "height": 200}, "people": people, "models": {}}
    error = {"file": "c.png", "error": {"code": "image_unreadable", "message": "corrupt"}}
    document = {"images": [{"file": "a.png", **entry, "people": []}, {"file": "b.png", **entry}, error]}
    result = tmp_path / "all.json"
    result.write_text(json.dumps(document))
    common = ["--cache-dir", str(cache_dir), "--device", "cpu"]
    code, answer = run_cli(["render", str(photo), str(result), "--out", str(tmp_path / "b-overlay.png"), *common], capsys)
    assert code == 0 and answer["people"] == 1
    for name in ("c.png", "d.png"):  # an entry that is an error, no entry
        other = tmp_path / name
        cv2.imwrite(str(other), np.full((200, 300, 3), 200, np.uint8))
        code, answer = run_cli(["render", str(other), str(result), "--out", str(tmp_path / "x.png"), *common], capsys)
        assert code == 2 and answer["error"]["code"] == "result_mismatch"


# -- byte ranges of served files ----------------------------------------------------------------------


def test_range_requests_get_the_bytes_asked_for(tmp_path: Path) -> None:
    httpx = pytest.importorskip("httpx")
    from fastapi import FastAPI

    from service.api.files import ranged_file_response

    data = np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    path = tmp_path / "overlay.mp4"
    path.write_bytes(data)
    app = FastAPI()

    @app.get("/file")
    async def file() -> Any:
        return ranged_file_response(path, "video/mp4")

    n = len(data)
    cases = {"bytes=0-99": (0, 99), "bytes=1000-1999": (1000, 1999), "bytes=4990-": (4990, n - 1), "bytes=-16": (n - 16, n - 1), "bytes=4000-99999": (4000, n - 1)}
    refusals = (("bytes=5000-5010", 416, "range_not_satisfiable"), ("bytes=900-100", 400, "range_invalid"), ("bytes=x-y", 400, "range_invalid"))

    async def check() -> int:
        checked = 0
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            whole = await client.get("/file")
            assert whole.status_code == 200 and whole.content == data
            assert whole.headers["accept-ranges"] == "bytes"
            assert whole.headers["content-type"] == "video/mp4"
            for header, (first, last) in cases.items():
                part = await client.get("/file", headers={"Range": header})
                assert part.status_code == 206, header
                assert part.headers["content-range"] == f"bytes {first}-{last}/{n}", header
                assert part.content == data[first : last + 1], header
                assert int(part.headers["content-length"]) == last - first + 1
                checked += 1
            for header, status, code in refusals:
                bad = await client.get("/file", headers={"Range": header})
                assert bad.status_code == status, header
                assert bad.headers["content-type"] == "application/json"
                assert bad.json()["error"]["code"] == code, header
                if status == 416:
                    assert bad.headers["content-range"] == f"bytes */{n}"
                checked += 1
        return checked

    import asyncio

    assert asyncio.run(check()) == len(cases) + len(refusals)
