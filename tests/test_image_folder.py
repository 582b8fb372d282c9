"""``python -m pipeline image`` on a folder (4D-Humans' demo.py --img_folder): one document per
image, the crops of all images regressed together, errors per image, OBJ meshes read back by an
independent reader (trimesh)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from pipeline.cli import main
from pipeline.tiny.vitdet import draw_figures

trimesh = pytest.importorskip("trimesh")


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, Any]:
    code = main(argv)
    return code, json.loads(capsys.readouterr().out)


def assert_same_people(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    """Equal up to float32 rounding: a different batch composition changes the last bits."""
    assert len(got) == len(want) > 0
    for g, w in zip(got, want):
        assert g["person_index"] == w["person_index"]
        assert g["score"] == pytest.approx(w["score"], abs=1e-5)
        for key in ("bbox", "keypoints_2d", "keypoints_3d"):
            np.testing.assert_allclose(g[key], w[key], rtol=1e-4, atol=1e-3, err_msg=key)
        for key in ("global_orient", "body_pose", "betas"):
            np.testing.assert_allclose(g["smpl"][key], w["smpl"][key], rtol=1e-4, atol=1e-4, err_msg=key)
        for key in ("pred_cam", "t_crop", "t_full"):
            np.testing.assert_allclose(g["camera"][key], w["camera"][key], rtol=1e-4, atol=1e-4, err_msg=key)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two photos of drawn figures (3 and 2 people, where the tiny detector is calibrated to find
    them: the demo-media photo, pipeline.tiny's calibration frame), a corrupt .jpg, a file and a folder that
    match no pattern."""
    base = tmp_path_factory.mktemp("imgs")
    cv2.imwrite(str(base / "b_three.jpg"), draw_figures([160, 340, 520]), [cv2.IMWRITE_JPEG_QUALITY, 95])
    cv2.imwrite(str(base / "a_two.png"), draw_figures([160, 400], size=(360, 640)))
    (base / "c_broken.jpg").write_bytes(b"not a jpeg at all")
    (base / "notes.txt").write_text("not an image")
    (base / "sub").mkdir()
    cv2.imwrite(str(base / "sub" / "inner.png"), draw_figures([100], size=(360, 200)))
    return base


@pytest.fixture(scope="module")
def folder_run(folder: Path, tiny_roots: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The folder once through the command: --out, --out-dir, --save-mesh and --vertices, with
    the tiny profile's detector settings (one box per drawn figure)."""
    out = tmp_path_factory.mktemp("out")
    argv = [
        "image", str(folder), "--cache-dir", str(tiny_roots.hmr2.parent), "--device", "cpu", "--offline", "--vertices",
        "--profile", "tiny", "--out", str(out / "all.json"), "--out-dir", str(out / "each"), "--save-mesh", str(out / "meshes"),
    ]
    assert main(argv) == 0
    return {"out": out, "document": json.loads((out / "all.json").read_text())}


def test_a_folder_answers_each_image_as_it_answers_it_alone(
    folder: Path, folder_run: dict[str, Any], tiny_roots: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    entries = folder_run["document"]["images"]
    # demo.py's patterns (*.jpg *.png), sorted; the text file and the sub-folder are not images
    assert [e["file"] for e in entries] == ["a_two.png", "b_three.jpg", "c_broken.jpg"]
    assert entries[2]["error"]["code"] == "image_unsupported_format" and "people" not in entries[2]
    compared = 0
    for entry, people in zip(entries[:2], (2, 3)):
        code, alone = run_cli(["image", str(folder / entry["file"]), "--cache-dir", str(tiny_roots.hmr2.parent), "--device", "cpu", "--offline", "--vertices", "--profile", "tiny"], capsys)
        assert code == 0 and "file" not in alone and "images" not in alone  # one file: the document as before
        assert len(alone["people"]) == people  # the tiny detector finds every drawn figure
        assert {k: entry[k] for k in ("schema_version", "image", "models")} == {k: alone[k] for k in ("schema_version", "image", "models")}
        assert_same_people(entry["people"], alone["people"])
        compared += 1
    assert compared == 2
    # one box on each drawn figure (the tiny detector's boxes are its template's: centred, shorter)
    centres = sorted((p["bbox"][0] + p["bbox"][2]) / 2 for p in entries[1]["people"])
    np.testing.assert_allclose(centres, [160, 340, 520], atol=5)


def test_out_dir_holds_one_document_per_image(folder_run: dict[str, Any]) -> None:
    each = folder_run["out"] / "each"
    assert sorted(p.name for p in each.iterdir()) == ["a_two.json", "b_three.json"]  # nothing for the broken one
    by_file = {e["file"]: e for e in folder_run["document"]["images"]}
    for name in ("a_two", "b_three"):
        document = json.loads((each / f"{name}.json").read_text())
        entry = by_file[next(f for f in by_file if f.startswith(name))]
        assert document == {k: v for k, v in entry.items() if k != "file"}


def test_meshes_are_obj_files_in_the_camera_frame(folder_run: dict[str, Any]) -> None:
    meshes = folder_run["out"] / "meshes"
    assert sorted(p.name for p in meshes.iterdir()) == [f"a_two_{i}.obj" for i in range(2)] + [f"b_three_{i}.obj" for i in range(3)]
    checked = 0
    for entry in folder_run["document"]["images"][:2]:
        stem = Path(entry["file"]).stem
        for person in entry["people"]:
            mesh = trimesh.load(meshes / f"{stem}_{person['person_index']}.obj", process=False, force="mesh")
            assert mesh.vertices.shape == (6890, 3) and mesh.faces.shape == (13776, 3)
            want = np.asarray(person["vertices"]) + np.asarray(person["camera"]["t_full"])
            np.testing.assert_allclose(mesh.vertices, want, rtol=1e-6, atol=1e-5)
            # in front of the camera, where its keypoints are seen: the mesh projects onto its box
            f = person["camera"]["focal_length_full"]
            w = entry["image"]["width"]
            u = f * mesh.vertices[:, 0] / mesh.vertices[:, 2] + w / 2
            x1, _, x2, _ = person["bbox"]
            assert (mesh.vertices[:, 2] > 0).all() and x1 - 0.5 * (x2 - x1) < np.median(u) < x2 + 0.5 * (x2 - x1)
            checked += 1
    assert checked == 5


def test_crops_of_all_images_share_the_batches(folder: Path, tiny_roots: Any) -> None:
    """3 + 2 crops in batches of 4: one forward of 4 (crops of both images), then one of 1."""
    from pipeline.image import ImageRunner
    from pipeline.tiny.cache import runner_settings

    options = runner_settings()["detector_options"]  # the tiny profile's: one box per drawn figure
    runner = ImageRunner.from_cache(tiny_roots, device="cpu", download=False, batch_size=4, detector_options=options)
    seen: list[int] = []
    forward = runner.hmr2.forward_crops

    def counted(crops: np.ndarray, **kwargs: Any) -> dict[str, np.ndarray]:
        if len(crops):
            seen.append(len(crops))
        return forward(crops, **kwargs)

    runner.hmr2.forward_crops = counted  # type: ignore[method-assign]
    outcomes = list(runner.run([folder / "b_three.jpg", folder / "c_broken.jpg", folder / "a_two.png"]))
    assert [o.index for o in outcomes] == [0, 1, 2]
    assert [o.error is not None for o in outcomes] == [False, True, False]
    assert seen == [4, 1]
    assert [len(o.result["people"]) for o in outcomes if o.result] == [3, 2]


def test_folder_refusals(folder: Path, tiny_roots: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--cache-dir", str(tiny_roots.hmr2.parent), "--device", "cpu", "--offline"]
    cases = [
        (["image", str(folder), "--file-type", "*.webp", *common], "image_folder_empty"),
        (["image", str(folder), "--boxes", "1,2,30,40", *common], "unexpected_argument"),
        (["image", str(folder / "c_broken.jpg"), *common], "image_unsupported_format"),  # one file: its error, as before
    ]
    for argv, want in cases:
        code, answer = run_cli(argv, capsys)
        assert code == 2 and answer["error"]["code"] == want, answer
    assert len(cases) == 3
