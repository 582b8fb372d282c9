"""Cold start: seconds and peak memory to load each full-size model (build + read checkpoint).

    python bench/cold_start.py                       # all four models, files in a temp folder
    python bench/cold_start.py --models hmr2 smpl --repeats 3
    python bench/cold_start.py --root /tmp/cold      # keep (and reuse) the written files

Random weights at the published sizes are written first in the official file layouts (ViTDet-H
model-zoo pickle, HMR2.0b Lightning checkpoint with its SMPL files, PHALP's HMAR weights and
pose predictor checkpoint), starting from the tiny factory's caches so every side file is in
place. Each load then runs in a fresh Python process (imports done before the clock starts), so
its peak RSS is its own; the table gives the median load time over ``--repeats`` runs and the
largest peak RSS. A replica that scales up pays this load before it serves.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import print_table  # noqa: E402

from pipeline.weights import CacheRoots  # noqa: E402

MODELS = ("vitdet", "regnety", "hmr2", "phalp", "smpl")
_MARK = "full-size-random"


def _status_mib(field: str) -> float:
    """A memory line of /proc/self/status in MiB (Linux): VmRSS now, VmHWM the peak.

    VmHWM belongs to this process image only; getrusage's maxrss would carry the parent's
    peak (the writers') across fork and exec.
    """
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _random(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    return torch.randn(shape, generator=gen) * 0.02


# -- writers ------------------------------------------------------------------------------------
def write_vitdet(roots: CacheRoots, gen: torch.Generator) -> None:
    """ViTDet-H shapes as a detectron2 model-zoo pickle of float32 numpy arrays."""
    from pipeline.models.detection.model_zoo import write_model_zoo
    from pipeline.models.vitdet.config import vitdet_h
    from pipeline.models.vitdet.files import CHECKPOINT_PATH
    from pipeline.models.vitdet.model import VitDetModel

    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in VitDetModel(vitdet_h()).state_dict().items()}
    arrays = {k: _random(s, gen).numpy() for k, s in shapes.items()}
    write_model_zoo(roots.detectron2 / CHECKPOINT_PATH, arrays)


def write_regnety(roots: CacheRoots, gen: torch.Generator) -> None:
    """RegNetY-4GF Mask R-CNN shapes as a model-zoo pickle: random weights, BatchNorm statistics
    of an identity (mean 0, variance 1; a random variance could be negative)."""
    from pipeline.models.detection.model_zoo import write_model_zoo
    from pipeline.models.regnety.config import regnety_4gf
    from pipeline.models.regnety.files import CHECKPOINT_PATH
    from pipeline.models.regnety.model import RegNetYModel

    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in RegNetYModel(regnety_4gf()).state_dict().items()}
    arrays = {}
    for key, shape in shapes.items():
        if key.endswith("running_var"):
            arrays[key] = torch.ones(shape).numpy()
        elif key.endswith(("running_mean", "num_batches_tracked")):
            arrays[key] = torch.zeros(shape).numpy()
        else:
            arrays[key] = _random(shape, gen).numpy()
    write_model_zoo(roots.detectron2 / CHECKPOINT_PATH, arrays)


def write_hmr2(roots: CacheRoots, gen: torch.Generator) -> None:
    """HMR2.0b sizes (ViT-H, 6-layer decoder): the tiny cache with its config and checkpoint replaced.

    SMPL, mean-parameter and discriminator tensors are the tiny checkpoint's (they have the
    published shapes already); every network tensor is random at the full size.
    """
    from pipeline.models.hmr2 import files as hmr2_files
    from pipeline.models.hmr2.config import hmr2_b
    from pipeline.models.hmr2.model import HMR2
    from pipeline.safe_pickle import torch_load
    from pipeline.tiny.hmr2 import model_config_dict

    full = hmr2_b()
    cfg = model_config_dict()
    bb, dec = cfg["MODEL"]["BACKBONE"], cfg["MODEL"]["SMPL_HEAD"]["TRANSFORMER_DECODER"]
    bb.update(EMBED_DIM=full.backbone.embed_dim, DEPTH=full.backbone.depth, NUM_HEADS=full.backbone.num_heads,
              MLP_RATIO=int(full.backbone.mlp_ratio))
    dec.update(depth=full.head.depth, heads=full.head.heads, mlp_dim=full.head.mlp_dim, dim_head=full.head.dim_head,
               context_dim=full.head.context_dim, dim=full.head.dim)
    (roots.hmr2 / hmr2_files.MODEL_CONFIG).write_text(yaml.safe_dump(cfg, sort_keys=False))
    ckpt_path = roots.hmr2 / hmr2_files.CHECKPOINT
    tiny = torch_load(ckpt_path, map_location="cpu")
    kept = {k: v for k, v in tiny["state_dict"].items() if k.startswith(("smpl.", "smpl_head.init_", "discriminator.")) or k == "initialized"}
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in HMR2(full).state_dict().items()}
    state = {k: kept[k] if k in kept else _random(s, gen) for k, s in shapes.items()}
    state.update({k: v for k, v in kept.items() if k not in state})
    torch.save({"epoch": 35, "global_step": 1000000, "state_dict": state, "hyper_parameters": {"cfg": cfg}}, ckpt_path)


def write_phalp(roots: CacheRoots, gen: torch.Generator) -> None:
    """PHALP's published sizes: the HMAR encoder and the pose predictor (with the unused stack)."""
    from pipeline.models.phalp import files as phalp_files
    from pipeline.models.phalp.config import AppearanceEncoderConfig, PosePredictorConfig
    from pipeline.models.phalp.encoder import PhalpAppearanceEncoder
    from pipeline.models.phalp.predictor import PhalpPoseTransformer, PhalpTransformer

    c = PosePredictorConfig()
    with torch.device("meta"):
        enc = {k: tuple(v.shape) for k, v in PhalpAppearanceEncoder(AppearanceEncoderConfig()).state_dict().items()}
        net = {k: tuple(v.shape) for k, v in PhalpPoseTransformer(c).state_dict().items()}
        unused = {k: tuple(v.shape) for k, v in PhalpTransformer(c.in_feat, c.depth, c.heads, c.dim_head, c.mlp_dim).state_dict().items()}
    torch.save({"model": {f"HMAR.encoding_head.{k}": _random(s, gen) for k, s in enc.items()}},
               roots.phalp / phalp_files.HMAR_WEIGHTS)
    state = {f"encoder.{k}": _random(s, gen) for k, s in net.items()}
    state.update({f"encoder.transformer.{k}": _random(s, gen) for k, s in unused.items()})
    state["encoder.class_token"] = _random((1, 1, c.in_feat), gen)
    torch.save({"epoch": 0, "global_step": 0, "state_dict": state}, roots.phalp / phalp_files.POSE_PREDICTOR)
    yaml_path = roots.phalp / phalp_files.POSE_PREDICTOR_CONFIG
    doc = yaml.safe_load(yaml_path.read_text())
    node = doc["configs"]
    node.update(in_feat=c.in_feat, frame_length=c.frame_length)
    node["extra_feat"]["pose_shape"].update(dim=c.pose_dim, mid_dim=c.mid_dim, en_dim=c.in_feat)
    node["transformer"].update(depth=c.depth, heads=c.heads, mlp_dim=c.mlp_dim, dim_head=c.dim_head)
    yaml_path.write_text(yaml.safe_dump(doc, sort_keys=False))


def write_all(root: Path, models: list[str]) -> CacheRoots:
    """Tiny caches (side files), then the full-size files of ``models``; reused when marked done."""
    from pipeline.tiny import write_tiny_caches

    roots = CacheRoots.under(root)
    marker = root / f"{_MARK}.json"
    done = set(json.loads(marker.read_text())) if marker.is_file() else set()
    if not done:
        write_tiny_caches(roots)
    gen = torch.Generator().manual_seed(0)
    writers = {"vitdet": write_vitdet, "regnety": write_regnety, "hmr2": write_hmr2, "phalp": write_phalp}
    for name in models:
        if name in writers and name not in done:
            start = time.perf_counter()
            writers[name](roots, gen)
            print(f"wrote full-size {name} in {time.perf_counter() - start:.1f} s", file=sys.stderr)
            done.add(name)
            marker.write_text(json.dumps(sorted(done)))
    return roots


# -- one load, in a child process ---------------------------------------------------------------
def load_once(model: str, root: Path) -> dict[str, float]:
    """Import first, then time only the load; peak RSS is this process's high-water mark."""
    from pipeline.models.hmr2 import files as hmr2_files
    from pipeline.models.hmr2.predictor import HMR2Predictor
    from pipeline.models.phalp.loading import load_tracking_models
    from pipeline.models.regnety import files as regnety_files
    from pipeline.models.regnety.predictor import RegNetYPredictor
    from pipeline.models.smpl import SMPLBodyModel
    from pipeline.models.vitdet.files import CHECKPOINT_PATH
    from pipeline.models.vitdet.predictor import VitDetPredictor

    roots = CacheRoots.under(root)
    loaders = {
        "vitdet": lambda: VitDetPredictor.from_checkpoint(roots.detectron2 / CHECKPOINT_PATH, device="cpu"),
        "regnety": lambda: RegNetYPredictor.from_checkpoint(roots.detectron2 / regnety_files.CHECKPOINT_PATH, device="cpu"),
        "hmr2": lambda: HMR2Predictor.from_cache(roots, download=False, device="cpu"),
        "phalp": lambda: load_tracking_models(roots, device="cpu", download=False),
        "smpl": lambda: SMPLBodyModel.from_files(roots.hmr2 / hmr2_files.SMPL_NEUTRAL, roots.hmr2 / hmr2_files.JOINT_REGRESSOR),
    }
    base = _status_mib("VmRSS")
    start = time.perf_counter()
    loaded = loaders[model]()
    seconds = time.perf_counter() - start
    peak = _status_mib("VmHWM")
    del loaded
    return {"seconds": seconds, "peak_rss_mib": peak, "base_rss_mib": base}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--repeats", type=int, default=2, help="fresh processes per model (median time)")
    parser.add_argument("--root", type=Path, default=None, help="folder for the written files (kept); default a temp dir")
    parser.add_argument("--label", default="", help="text added to the table title (e.g. before/after)")
    parser.add_argument("--child", choices=MODELS, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print(json.dumps(load_once(args.child, args.root)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        write_all(root, args.models)
        rows = []
        for model in args.models:
            runs = []
            for _ in range(args.repeats):
                out = subprocess.run(
                    [sys.executable, __file__, "--child", model, "--root", str(root)],
                    check=True, capture_output=True, text=True,
                )
                runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            rows.append([
                model,
                statistics.median(r["seconds"] for r in runs),
                max(r["peak_rss_mib"] for r in runs),
                max(r["peak_rss_mib"] - r["base_rss_mib"] for r in runs),
            ])
    title = f"Cold start on cpu, full-size random weights, {args.repeats} run(s) each{', ' + args.label if args.label else ''}"
    print_table(title, ["model", "load s", "peak RSS MiB", "over imports MiB"], rows)


if __name__ == "__main__":
    main()
