"""Bytes per video frame across each deployment boundary, before and after lean traffic.

For a 1080p frame with 1, 5 and 20 people, the payloads each boundary carries are built from
real model outputs of this checkout (tiny models, the same array shapes as the full ones) and
measured as Ray moves them (pickle protocol 5, arrays as out-of-band buffers, their bytes
counted). "before" rebuilds what the earlier design sent for the same outputs: the Detector's
full-resolution masks, the regressor's UV maps and embeddings, and the tracker's observations
(UV maps included) sent on to a separate tracking deployment of its own; "after" is what
`deployments.tracker.RemoteStages` exchanges now. The frame itself goes into the object store
once in both designs and travels by reference (its size is shown for scale).

    python bench/stage_traffic.py [--people 1 5 20] [--size 1080x1920]
"""

from __future__ import annotations

import argparse
import logging
import pickle
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table  # noqa: E402

logger = logging.getLogger("stage_traffic")


def nbytes(obj: object) -> int:
    """Size of ``obj`` as Ray serialises it: pickle 5 with every array buffer out of band."""
    buffers: list[pickle.PickleBuffer] = []
    head = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    return len(head) + sum(memoryview(b).nbytes for b in buffers)


def people_boxes(n: int, height: int, width: int) -> np.ndarray:
    """``n`` standing people of about a third of the frame height, in rows across it."""
    per_row = min(n, 10)
    w, h = width / (per_row + 1) * 0.6, height * 0.36
    boxes = []
    for i in range(n):
        row, col = divmod(i, per_row)
        cx, top = width * (col + 1) / (per_row + 1), height * (0.1 + 0.45 * row)
        boxes.append([cx - w / 2, top, cx + w / 2, top + h])
    return np.asarray(boxes, np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, nargs="+", default=[1, 5, 20])
    parser.add_argument("--size", default="1080x1920", help="frame height x width")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import torch

    from pipeline.models.hmr2.predictor import HMR2Predictor
    from pipeline.models.vitdet.predictor import Detections, paste_masks
    from pipeline.tiny import write_tiny_caches
    from pipeline.tracking.loading import load_appearance_and_tracking
    from pipeline.video.loop import FrameModels, observations_for
    from pipeline.weights import CacheRoots

    torch.set_num_threads(2)
    height, width = (int(v) for v in args.size.lower().split("x"))
    roots = CacheRoots.under(tempfile.mkdtemp(prefix="traffic-"))
    write_tiny_caches(roots)
    hmr2 = HMR2Predictor.from_cache(roots, device="cpu", download=False)
    appearance, _ = load_appearance_and_tracking(roots, device="cpu", download=False)
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    mask_side = 28  # the mask head's output (14-pixel pooling, upsampled twice), as in ViTDet-H

    rows = []
    for n in args.people:
        boxes = people_boxes(n, height, width)
        probs = rng.random((n, mask_side, mask_side), dtype=np.float32)
        scores = np.linspace(0.99, 0.9, n).astype(np.float32)
        classes = np.zeros(n, np.int64)
        full = paste_masks(torch.from_numpy(probs), torch.from_numpy(boxes), height, width).numpy()
        out = hmr2.predict(frame, boxes, vertices=True)
        app = appearance(frame, out.box_center, out.box_size, out.vertices, out.cam_t, masks=full, boxes=out.boxes)

        # before: full masks to the regressor; UV maps + embeddings + outputs back; observations
        # (UV as float64 after the copy on the way) and the answer to and from the separate tracking deployment.
        det_before = Detections(boxes, scores, classes, masks=full)
        out_no_vertices = out.select(slice(None))
        out_no_vertices.vertices = None
        reg_before = {"output": out_no_vertices, "scores": scores, "uv": app.uv, "embedding": app.embedding}
        obs = observations_for(out_no_vertices, scores, app.uv.astype(np.float64), app.embedding)
        tracker_before = nbytes(obs)
        # after: mask-head probabilities to the regressor; one answer with the detections and the
        # outputs (vertices for the appearance step in the worker); tracking stays in the worker (Tracker).
        det_after = Detections(boxes, scores, classes, mask_probs=probs)
        reg_after = FrameModels(detections=det_after, output=out)
        boundaries = [
            ("Detector -> MeshRegressor", nbytes(det_before), nbytes(det_after)),
            ("MeshRegressor -> worker", nbytes(reg_before), nbytes(reg_after)),
            ("worker -> separate tracking", tracker_before, 0),
        ]
        total_before = sum(b for _, b, _ in boundaries)
        total_after = sum(a for _, _, a in boundaries)
        for name, before, after in boundaries:
            rows.append((n, name, f"{before / 1e6:.3f}", f"{after / 1e6:.3f}", f"{after / before:.3f}" if before else "-"))
        rows.append((n, "all boundaries", f"{total_before / 1e6:.3f}", f"{total_after / 1e6:.3f}", f"{total_after / total_before:.3f}"))
    print_table(
        f"MB per {height}x{width} frame across deployment boundaries (the frame itself: {frame.nbytes / 1e6:.1f} MB, "
        "put in the object store once, passed by reference)",
        ["people", "boundary", "before MB", "after MB", "after/before"],
        rows,
    )


if __name__ == "__main__":
    main()
