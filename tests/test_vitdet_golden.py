"""ViTDet equivalence with detectron2, stage by stage, against the golden fixtures.

Every image, file name, feature-level name and size is read from the fixture's own
``manifest.json`` / ``expected_summary.json`` / ``tiny_config.json`` / schema (never from our
presets), so the tests hold for any fixture set of this format; tolerances are those of the
fixture README (section 9). Each stage is fed
the reference's stored input of that stage where the fixture has it; where it does not (the
fixture stores some tensors for one image only), the stage runs on our own upstream output and
is first checked against the summary statistics.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from pipeline.models.detection.rpn import cell_anchors
from pipeline.models.vitdet.config import VitDetConfig
from pipeline.models.vitdet.convert import read_model_zoo
from pipeline.models.vitdet.model import VitDetModel
from pipeline.models.vitdet.predictor import (
    VitDetPredictor,
    postprocess,
    resize_rgb,
    resized_hw,
    to_network_input,
)
from pipeline.models.vitdet.roi_heads import RawDetections, pool_boxes


@dataclass
class Case:
    """One fixture image with lazily loaded arrays."""

    folder: Path
    summary: dict

    def npz(self, kind: str) -> dict[str, np.ndarray] | None:
        name = self.summary["files"].get(kind)
        if name is None:
            return None
        with np.load(self.folder / name) as data:
            return {k: data[k] for k in data.files}

    def detections_json(self) -> dict:
        return json.loads((self.folder / self.summary["files"]["detections_json"]).read_text())

    def image(self) -> np.ndarray:
        img = cv2.imread(str(self.folder / self.summary["image_file"]), cv2.IMREAD_COLOR)
        assert img is not None, self.summary["image_file"]
        return img


@pytest.fixture(scope="module")
def fixture_dir(golden) -> Path:
    return golden("vitdet")


@pytest.fixture(scope="module")
def cases(fixture_dir: Path) -> list[Case]:
    summary = json.loads((fixture_dir / "expected_summary.json").read_text())
    out = [Case(fixture_dir, im) for im in summary["images"]]
    assert out, "no images in expected_summary.json"
    return out


@pytest.fixture(scope="module")
def tiny_config(fixture_dir: Path) -> dict:
    return json.loads((fixture_dir / "tiny_config.json").read_text())


@dataclass(frozen=True)
class Levels:
    """Feature-map names as the fixture's model description lists them."""

    pyramid: list[str]  # backbone outputs
    rpn: list[str]  # RPN inputs
    box: list[str]  # box pooler inputs
    mask: list[str]  # mask pooler inputs


@pytest.fixture(scope="module")
def levels(tiny_config: dict) -> Levels:
    m = tiny_config["model"]
    out = Levels(
        pyramid=list(m["simple_feature_pyramid"]["output_order"]),
        rpn=list(m["rpn"]["in_features"]),
        box=list(m["roi_heads"]["box_in_features"]),
        mask=list(m["roi_heads"]["mask_in_features"]),
    )
    assert out.pyramid and out.rpn and out.box and out.mask, out
    return out


def fixture_file(fixture_dir: Path, suffix: str) -> Path:
    """The one file of the fixture's manifest whose name ends with ``suffix``."""
    manifest = json.loads((fixture_dir / "manifest.json").read_text())
    names = [name for name in manifest["files"] if name.endswith(suffix)]
    assert len(names) == 1, f"expected one *{suffix} in manifest.json, found {names}"
    return fixture_dir / names[0]


def checkpoint_path(fixture_dir: Path) -> Path:
    """The model-zoo pickle the manifest lists."""
    return fixture_file(fixture_dir, ".pkl")


@pytest.fixture(scope="module")
def predictor(fixture_dir: Path) -> VitDetPredictor:
    torch.manual_seed(0)
    return VitDetPredictor.from_checkpoint(checkpoint_path(fixture_dir), device="cpu")


@pytest.fixture(scope="module")
def features(cases: list[Case], predictor: VitDetPredictor, levels: Levels) -> list[dict[str, torch.Tensor]]:
    """The pyramid per image: the reference's stored maps where present, else ours from the stored input."""
    out = []
    for case in cases:
        stored = case.npz("features")
        if stored is not None:
            out.append({k: torch.from_numpy(stored[k]) for k in levels.pyramid})
            continue
        inp = case.npz("input")
        x = to_network_input([inp["resized_rgb_u8"]], predictor.cfg, torch.device("cpu"))
        with torch.inference_mode():
            out.append(predictor.model.backbone(x))
    return out


def decode_rle(runs: list[int], height: int, width: int) -> np.ndarray:
    """Column-major alternating 0/1 run lengths (first run is zeros) -> (H, W) bool."""
    flat = np.repeat(np.arange(len(runs)) % 2, runs).astype(bool)
    return flat.reshape(width, height).T


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, 4) x (M, 4) -> (N, M) IoU."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).prod(-1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)


def match_rows(ref: np.ndarray, ours: np.ndarray, atol: float) -> np.ndarray:
    """Index into ``ours`` of the row equal (within atol) to each ``ref`` row; each used once.

    Rows may be permuted where the reference's order rests on near-tied scores (README, 8).
    """
    assert ref.shape == ours.shape, (ref.shape, ours.shape)
    diff = np.abs(ref[:, None, :] - ours[None, :, :]).max(-1)
    idx = diff.argmin(1)
    assert len(np.unique(idx)) == len(idx), "two reference rows matched the same row of ours"
    worst = diff[np.arange(len(ref)), idx].max()
    assert worst <= atol, f"unmatched row: max abs diff {worst} > {atol}"
    return idx


def check_stats(ours: np.ndarray, stats: dict, atol: float) -> None:
    assert list(ours.shape) == stats["shape"]
    assert abs(float(ours.mean()) - stats["mean"]) <= atol
    assert abs(float(ours.std()) - stats["std"]) <= atol
    assert abs(float(ours.max()) - stats["max"]) <= atol and abs(float(ours.min()) - stats["min"]) <= atol
    for probe in stats.get("probe", {}).values():
        y, x = probe["yx"]
        np.testing.assert_allclose(ours[0, :, y, x], probe["values"], atol=atol, rtol=1e-4)


# --- schema and configuration ---------------------------------------------------------------------------


def check_config(cfg: VitDetConfig, model: dict, *, stage_score_thresh: float | None = None) -> None:
    """Every size and test-time constant of ``cfg`` against a fixture's model description."""
    inp = model["input"]
    resize = inp["resize"]
    assert cfg.image_size == resize["short_edge_length"] == resize["max_size"] == inp["padding"]["square_size"]
    np.testing.assert_allclose(cfg.pixel_mean, inp["pixel_mean"], rtol=1e-7)
    np.testing.assert_allclose(cfg.pixel_std, inp["pixel_std"], rtol=1e-7)
    vit = model["backbone_vit"]
    assert cfg.patch_size == vit["patch_size"]
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads) == (vit["embed_dim"], vit["depth"], vit["num_heads"])
    assert cfg.head_dim == vit["head_dim"] and cfg.mlp_dim == vit["mlp_hidden"]
    assert cfg.window_size == vit["window_size"]
    assert list(cfg.window_block_indexes) == vit["window_block_indexes"]
    assert cfg.pretrain_img_size == vit["pretrain_img_size"]
    assert [cfg.grid_size, cfg.grid_size] == list(vit["token_grid"])
    assert cfg.fpn_channels == model["simple_feature_pyramid"]["out_channels"]
    rpn = model["rpn"]
    assert [[float(a)] for a in cfg.anchor_sizes] == [[float(x) for x in s] for s in rpn["anchor_generator"]["sizes"]]
    assert list(cfg.anchor_ratios) == rpn["anchor_generator"]["aspect_ratios"]
    for size, ref in zip(cfg.anchor_sizes, rpn["anchor_generator"]["cell_anchors"], strict=True):
        np.testing.assert_allclose(cell_anchors(size, cfg.anchor_ratios).numpy(), np.float32(ref), rtol=1e-6)
    assert (cfg.rpn_pre_nms_topk, cfg.rpn_post_nms_topk) == (rpn["pre_nms_topk_test"], rpn["post_nms_topk_test"])
    assert cfg.rpn_nms_thresh == rpn["nms_thresh"]
    assert cfg.bbox_scale_clamp == pytest.approx(rpn["scale_clamp"], rel=1e-12)
    roi = model["roi_heads"]
    assert cfg.num_classes == roi["num_classes"]
    assert cfg.num_stages == roi["num_cascade_stages"] == len(roi["cascade_stages"])
    for k, stage in enumerate(roi["cascade_stages"]):
        assert list(cfg.box_conv_dims) == stage["conv_dims"], k
        assert [cfg.box_fc_dim] == stage["fc_dims"], k
        assert list(cfg.cascade_bbox_weights[k]) == [float(w) for w in stage["box2box_weights"]], k
        assert cfg.bbox_scale_clamp == pytest.approx(stage["scale_clamp"], rel=1e-12), k
        if stage_score_thresh is not None:
            assert stage_score_thresh == stage["test_score_thresh"], k
    last = roi["cascade_stages"][-1]  # only the last stage's test settings are used (README 10)
    assert cfg.test_score_thresh == last["test_score_thresh"]
    assert cfg.test_nms_thresh == last["test_nms_thresh"]
    assert cfg.test_detections_per_image == last["test_topk_per_image"]
    assert cfg.box_pool_size == roi["box_pooler"]["output_size"]
    assert cfg.mask_pool_size == roi["mask_pooler"]["output_size"]
    assert list(cfg.mask_conv_dims) == roi["mask_head"]["conv_dims"]


def test_tiny_keys_and_shapes_equal_reference(tiny_config: dict, predictor: VitDetPredictor) -> None:
    ours = [(k, list(v.shape)) for k, v in predictor.model.state_dict().items()]
    assert ours == [(e["key"], e["shape"]) for e in tiny_config["state_dict"]]


def test_tiny_config_inferred_from_checkpoint(tiny_config: dict, predictor: VitDetPredictor) -> None:
    """The sizes our loader infers from the fixture checkpoint, and our test-time constants, are
    those of the fixture's own model description."""
    check_config(predictor.cfg, tiny_config["model"], stage_score_thresh=predictor.stage_score_thresh)


def test_full_schema_equals_our_modules(fixture_dir: Path) -> None:
    """The full-size model's config inferred from the schema's shapes alone matches the schema's
    description, and the modules built from it have exactly the schema's keys and shapes."""
    schema = json.loads(fixture_file(fixture_dir, "_full_state_dict_schema.json").read_text())
    entries = schema["entries"]
    assert entries, "no entries in the full state dict schema"
    assert len(entries) == schema["num_keys"]
    cfg = VitDetConfig.from_state_dict({e["key"]: e["shape"] for e in entries})
    check_config(cfg, schema["model_description"])
    with torch.device("meta"):
        model = VitDetModel(cfg)
    ours = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    assert ours == [(e["key"], e["shape"]) for e in entries]
    assert sum(v.numel() for v in model.state_dict().values()) == schema["total_numel"]
    # non-persistent buffers of the reference: built from our config instead of stored
    buffers = schema["non_persistent_buffers_not_in_state_dict"]
    np.testing.assert_allclose(cfg.pixel_mean, buffers["pixel_mean"]["value"], rtol=1e-7)
    np.testing.assert_allclose(cfg.pixel_std, buffers["pixel_std"]["value"], rtol=1e-7)
    anchor_keys = sorted(k for k in buffers if ".cell_anchors." in k)
    assert len(anchor_keys) == len(cfg.anchor_sizes)
    for i, size in enumerate(cfg.anchor_sizes):
        ref = buffers[f"proposal_generator.anchor_generator.cell_anchors.{i}"]
        ours_anchors = cell_anchors(size, cfg.anchor_ratios).numpy()
        assert list(ours_anchors.shape) == ref["shape"]
        np.testing.assert_array_equal(ours_anchors.ravel(), np.float32(ref["value"]))


# --- input ------------------------------------------------------------------------------------------------


def test_resize_matches_reference(cases: list[Case], predictor: VitDetPredictor) -> None:
    for case in cases:
        inp = case.npz("input")
        img = case.image()
        assert img.shape[:2] == tuple(inp["original_hw"])
        assert resized_hw(*img.shape[:2], predictor.cfg.image_size) == tuple(inp["resized_hw"])
        ours = resize_rgb(img, predictor.cfg.image_size)
        if hashlib.sha256(img.tobytes()).hexdigest() == case.summary["original_bgr_sha256"]:
            np.testing.assert_array_equal(ours, inp["resized_rgb_u8"])
        else:  # another JPEG decoder: pixels may differ slightly (README, step 1)
            assert np.abs(ours.astype(int) - inp["resized_rgb_u8"]).max() <= 8


def test_normalise_and_pad(cases: list[Case], predictor: VitDetPredictor) -> None:
    for case in cases:
        inp = case.npz("input")
        ours = to_network_input([inp["resized_rgb_u8"]], predictor.cfg, torch.device("cpu")).numpy()
        if "model_input" in inp:
            np.testing.assert_array_equal(ours, inp["model_input"])
        else:
            check_stats(ours, case.summary["model_input"], atol=1e-5)


# --- backbone ---------------------------------------------------------------------------------------------


def test_vit_and_pyramid(cases: list[Case], predictor: VitDetPredictor, features, levels: Levels) -> None:
    backbone = predictor.model.backbone
    assert len(features) == len(cases)
    direct = 0
    for case, feats in zip(cases, features):
        stored = case.npz("features")
        inp = case.npz("input")
        if stored is None:  # our features were computed from the stored input: check the summary
            for name in levels.pyramid:
                check_stats(feats[name].numpy(), case.summary["features"][name], atol=1e-4)
            continue
        direct += 1
        x = torch.from_numpy(inp["model_input"]) if "model_input" in inp else to_network_input(
            [inp["resized_rgb_u8"]], predictor.cfg, torch.device("cpu")
        )
        with torch.inference_mode():
            last = backbone.net(x)
            np.testing.assert_allclose(last.numpy(), stored["vit_last_feat"], atol=1e-4, rtol=1e-4)
            pyramid = backbone.pyramid(torch.from_numpy(stored["vit_last_feat"]))
        for name in levels.pyramid:
            np.testing.assert_allclose(pyramid[name].numpy(), stored[name], atol=1e-4, err_msg=name)
    assert direct > 0, "no image of the fixture stores its features"


# --- RPN --------------------------------------------------------------------------------------------------


def test_rpn_head_and_proposals(cases: list[Case], predictor: VitDetPredictor, features, levels: Levels) -> None:
    rpn = predictor.model.proposal_generator
    assert len(features) == len(cases)
    direct = 0
    for case, feats in zip(cases, features):
        ref = case.npz("rpn")
        size = tuple(int(v) for v in case.npz("input")["resized_hw"])
        maps = [feats[name] for name in levels.rpn]
        with torch.inference_mode():
            logits, deltas = rpn.rpn_head(maps)
        assert len(logits) == len(deltas) == len(levels.rpn)
        if f"objectness_raw_{levels.rpn[0]}" in ref:
            direct += 1
            for name, lg, dl in zip(levels.rpn, logits, deltas):
                np.testing.assert_allclose(lg.numpy(), ref[f"objectness_raw_{name}"], atol=1e-5, err_msg=name)
                np.testing.assert_allclose(dl.numpy(), ref[f"anchor_deltas_raw_{name}"], atol=1e-5, err_msg=name)
            # post-processing alone, from the reference's raw outputs
            logits = [torch.from_numpy(ref[f"objectness_raw_{n}"]) for n in levels.rpn]
            deltas = [torch.from_numpy(ref[f"anchor_deltas_raw_{n}"]) for n in levels.rpn]
            logit_atol = 1e-5
        else:
            logit_atol = 1e-4  # through our own pyramid and head: float noise accumulates
        boxes, scores = rpn.proposals(logits, deltas, rpn.anchors(maps), [size])[0]
        idx = match_rows(ref["proposal_boxes"], boxes.numpy(), atol=1e-3)
        np.testing.assert_allclose(scores.numpy()[idx], ref["objectness_logits"], atol=logit_atol)
        # the order is by logit; only near-tied neighbours may swap
        assert np.all(np.abs(idx - np.arange(len(idx))) <= 1)
    assert direct > 0, "no image of the fixture stores its raw RPN outputs"


# --- cascade ----------------------------------------------------------------------------------------------


def test_roi_align(cases: list[Case], predictor: VitDetPredictor, features, levels: Levels) -> None:
    assert len(features) == len(cases)
    for case, feats in zip(cases, features):
        ref = case.npz("cascade")
        maps = [feats[name] for name in levels.box]
        atol = 1e-5 if case.npz("features") is not None else 1e-4
        for k in range(predictor.cfg.num_stages):
            boxes = torch.from_numpy(ref[f"stage{k}_pooled_boxes_first24"])
            pooled = pool_boxes(maps, [boxes], predictor.cfg.box_pool_size)
            np.testing.assert_allclose(pooled.numpy(), ref[f"stage{k}_pooled_feats_first24"], atol=atol)


def test_cascade_stages(cases: list[Case], predictor: VitDetPredictor, features, levels: Levels) -> None:
    heads = predictor.model.roi_heads
    assert len(features) == len(cases)
    for case, feats in zip(cases, features):
        ref = case.npz("cascade")
        maps = [feats[name] for name in levels.box]
        for k in range(predictor.cfg.num_stages):
            proposals = torch.from_numpy(ref[f"stage{k}_proposal_boxes"])
            with torch.inference_mode():
                out = heads.run_stage(maps, [proposals], k)
            np.testing.assert_allclose(out.head_out.numpy(), ref[f"stage{k}_box_head_out"], atol=1e-4)
            np.testing.assert_allclose(out.cls_logits.numpy(), ref[f"stage{k}_cls_logits"], atol=1e-3)
            np.testing.assert_allclose(out.deltas.numpy(), ref[f"stage{k}_deltas"], atol=1e-4)
            np.testing.assert_allclose(out.pred_boxes[0].numpy(), ref[f"stage{k}_pred_boxes"], atol=1e-3)


def test_cascade_scoring_and_nms(cases: list[Case], predictor: VitDetPredictor) -> None:
    heads = predictor.model.roi_heads
    for case in cases:
        ref = case.npz("cascade")
        det = case.npz("detections")
        size = tuple(int(v) for v in case.npz("input")["resized_hw"])
        stages = [
            type("S", (), {"cls_logits": torch.from_numpy(ref[f"stage{k}_cls_logits"])})()
            for k in range(predictor.cfg.num_stages)
        ]
        scores = heads.mean_scores(stages)  # type: ignore[arg-type]
        np.testing.assert_allclose(scores.numpy(), ref["mean_scores"], atol=1e-6)
        last = f"stage{predictor.cfg.num_stages - 1}_pred_boxes"
        raw = heads.select(torch.from_numpy(ref[last]), scores, size, predictor.stage_score_thresh)
        np.testing.assert_array_equal(raw.classes.numpy(), det["raw_classes"])
        np.testing.assert_allclose(raw.boxes.numpy(), det["raw_boxes"], atol=1e-3)
        np.testing.assert_allclose(raw.scores.numpy(), det["raw_scores"], atol=1e-6)


def test_mask_head(cases: list[Case], predictor: VitDetPredictor, features, levels: Levels) -> None:
    heads = predictor.model.roi_heads
    assert len(features) == len(cases)
    for case, feats in zip(cases, features):
        det = case.npz("detections")
        maps = [feats[name] for name in levels.mask]
        boxes = torch.from_numpy(det["mask_pool_boxes"])
        if "mask_pooled_feats" in det:
            pooled = pool_boxes(maps, [boxes], predictor.cfg.mask_pool_size)
            np.testing.assert_allclose(pooled.numpy(), det["mask_pooled_feats"], atol=1e-4)
        with torch.inference_mode():
            probs = heads.masks(maps, [boxes], [torch.from_numpy(det["raw_classes"])])[0]
        np.testing.assert_allclose(probs.numpy(), det["mask_probs"], atol=1e-4)


# --- post-processing and end to end -------------------------------------------------------------------------


def test_postprocess_and_paste(cases: list[Case], predictor: VitDetPredictor) -> None:
    for case in cases:
        det = case.npz("detections")
        inp = case.npz("input")
        raw = RawDetections(
            boxes=torch.from_numpy(det["raw_boxes"]),
            scores=torch.from_numpy(det["raw_scores"]),
            classes=torch.from_numpy(det["raw_classes"]),
            mask_probs=torch.from_numpy(det["mask_probs"]),
        )
        hw = tuple(int(v) for v in inp["original_hw"])
        out = postprocess(raw, hw, tuple(int(v) for v in inp["resized_hw"]), masks=True)
        np.testing.assert_allclose(out.boxes, det["boxes"], atol=1e-3)
        np.testing.assert_array_equal(out.scores, det["scores"])
        np.testing.assert_array_equal(out.classes, det["classes"])
        items = case.detections_json()["detections"]
        assert len(items) == len(det["boxes"]) == len(out.masks)
        for i, item in enumerate(items):
            ref_mask = decode_rle(item["mask_rle_uncompressed_counts"], *item["mask_rle"]["size"])
            assert mask_iou(out.masks[i], ref_mask) >= 0.999, i


def _match_detections(ref_boxes, ref_scores, ref_classes, ours) -> list[int]:
    """Greedy by descending reference score: same class, highest box IoU, each used once."""
    used: set[int] = set()
    order = np.argsort(-ref_scores, kind="stable")
    matches = [-1] * len(ref_boxes)
    ious = box_iou(ref_boxes, ours.boxes) if len(ours) else np.zeros((len(ref_boxes), 0))
    for r in order:
        cands = [j for j in range(len(ours)) if j not in used and ours.classes[j] == ref_classes[r]]
        assert cands, f"no candidate of class {ref_classes[r]} for reference detection {r}"
        j = max(cands, key=lambda c: ious[r, c])
        assert ious[r, j] >= 0.99, f"detection {r}: best IoU {ious[r, j]}"
        assert abs(float(ours.scores[j]) - float(ref_scores[r])) <= 1e-4
        used.add(j)
        matches[r] = j
    return matches


def test_end_to_end(cases: list[Case], predictor: VitDetPredictor) -> None:
    for case in cases:
        det = case.npz("detections")
        img = case.image()
        ours = predictor.detect_raw(img, masks=True)[0]
        assert len(ours) == len(det["boxes"])
        matches = _match_detections(det["boxes"], det["scores"], det["classes"], ours)
        # original frame is magnified up to ~6x from the network frame, hence 1e-2 px
        np.testing.assert_allclose(ours.boxes[matches], det["boxes"], atol=1e-2)
        items = case.detections_json()["detections"]
        assert len(items) == len(det["boxes"])
        for r, item in enumerate(items):
            ref_mask = decode_rle(item["mask_rle_uncompressed_counts"], *item["mask_rle"]["size"])
            assert mask_iou(ours.masks[matches[r]], ref_mask) >= 0.99, r

        people = predictor(img, masks=True)[0]
        assert len(people) == len(det["filtered_boxes"])
        sub = _match_detections(
            det["filtered_boxes"], det["filtered_scores"], np.zeros(len(people), dtype=np.int64), people
        )
        np.testing.assert_allclose(people.boxes[sub], det["filtered_boxes"], atol=1e-2)
        assert people.masks is not None and people.masks.shape == (len(people), *img.shape[:2])
        assert people.boxes.dtype == np.float32 and people.scores.dtype == np.float32
        assert people.classes.dtype == np.int64


def test_checkpoint_reads_as_model_zoo(fixture_dir: Path, tiny_config: dict) -> None:
    arrays = read_model_zoo(checkpoint_path(fixture_dir))
    assert len(arrays) == tiny_config["state_dict_num_keys"]
    assert sum(a.size for a in arrays.values()) == tiny_config["state_dict_numel"]
