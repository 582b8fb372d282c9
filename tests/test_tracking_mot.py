"""Identity switches and fragmentation (motmetrics) on the golden scenario and on our own sequence."""

from __future__ import annotations

import json

import numpy as np
import pytest

mm = pytest.importorskip("motmetrics")

from pipeline.tiny.phalp import write_tiny_phalp  # noqa: E402
from pipeline.tracking import Tracker, collect_outputs  # noqa: E402
from pipeline.tracking.loading import tracker_models_from_cache  # noqa: E402
from pipeline.tracking.synthetic import sequence  # noqa: E402
from pipeline.weights import CacheRoots  # noqa: E402


def _summary(frames_gt, frames_hyp) -> dict:
    """frames_*: per frame a dict detection key -> id; a hypothesis matches the gt of its detection."""
    acc = mm.MOTAccumulator(auto_id=True)
    for gt, hyp in zip(frames_gt, frames_hyp):
        g_keys, h_keys = list(gt), list(hyp)
        dist = np.array([[0.0 if g == h else np.nan for h in h_keys] for g in g_keys]).reshape(len(g_keys), len(h_keys))
        acc.update([gt[k] for k in g_keys], [hyp[k] for k in h_keys], dist)
    mh = mm.metrics.create()
    s = mh.compute(acc, metrics=["num_switches", "num_fragmentations", "mota", "num_unique_objects"], name="s")
    return {k: float(s[k].iloc[0]) for k in s.columns}


def test_reference_level_on_golden_scenario(golden):
    """The reference's own output on its scenario: the level our sequence is held to."""
    d = golden("phalp")
    out = json.loads((d / "tracker_output.json").read_text())["frames"]
    meta = json.loads((d / "detections.json").read_text())["frames"]
    gt, hyp = [], []
    for fr, o in zip(meta, out):
        by_raw = {x["raw_index"]: x["gt_person"] for x in fr["detections"] if x["gt_person"] >= 0}
        gt.append(by_raw)
        hyp.append({raw: tid for raw, tid, t in zip(o["extra_data"], o["tid"], o["tracked_time"]) if t == 0})
    s = _summary(gt, hyp)
    # Missed frames have no ground truth there, so gaps are not fragments: the reference keeps
    # every identity through the crossing and the occlusion.
    assert s["num_switches"] == 0 and s["num_fragmentations"] == 0, s


def test_synthetic_crossings_keep_identities(tmp_path):
    roots = CacheRoots.under(tmp_path)
    write_tiny_phalp(roots)
    tracker = Tracker(tracker_models_from_cache(roots, device="cpu", download=False))
    missing = {0: {12}, 1: set(range(20, 24)), 2: {30}}
    frames, gts = zip(*sequence(4, 40, missing=missing, uv=False, seed=3))
    results = tracker.run(frames)
    merged = collect_outputs(results)
    gt_frames = [{i: g for i, g in enumerate(gt)} for gt in gts]
    hyp_frames = []
    for ft, m in zip(results, merged):
        # Output entries hold the detection's box; map them back to the detection index.
        boxes = [tuple(np.round([p.bbox[0], p.bbox[1], p.bbox[2] - p.bbox[0], p.bbox[3] - p.bbox[1]], 6)) for p in frames[ft.frame_index].people]
        hyp = {}
        for tid, box in zip(m["tracked_ids"], m["tracked_bbox"]):
            hyp[boxes.index(tuple(np.round(box, 6)))] = tid
        hyp_frames.append(hyp)
    s = _summary(gt_frames, hyp_frames)
    # The reference's level on its own scenario (see above): no switch, no fragment.
    assert s["num_switches"] == 0 and s["num_fragmentations"] == 0, s
    assert s["mota"] > 0.8, s
