"""Tiny ViTDet: the real cascade architecture at `vitdet_tiny` sizes with hand-set weights, written
as a detectron2 model-zoo pickle at the official checkpoint path, so the real loader reads it.

The tiny model must find "people" well enough for every downstream stage (HMR2, PHALP tracking)
to run on a laptop CPU: on drawn test figures (a dark head, body and legs on a light background)
it returns one stable, well-placed, confident box per figure, and nothing on blank or noise
frames. Random weights cannot do that, so every weight is set by hand; the model is a small
dark-blob template matcher built from the real modules. It proves the plumbing, not accuracy.

How the weights behave, stage by stage (``K`` is a large constant carried in a ``+K, -K``
channel pair: it dominates every LayerNorm's variance, so each LayerNorm acts as a fixed linear
scale that its weight undoes, and the signals pass through the norms unchanged):

* patch embedding: per 16 px patch, the darkness ``D`` (minus the mean normalised RGB value) of
  each of its four 8 px quadrants, plus the ``+K, -K`` pair; position embeddings are zero;
* block 0: attention off (zero output projection); the MLP turns each ``D`` into a soft
  threshold ``T = clamp((D - 0.2) / 0.3, 0, 1)`` ("this quadrant is dark") with two GELUs, and
  writes the patch mean of the four ``T``;
* blocks 1 and 2: identity (zero output projections);
* block 3 (global): one head with a constant query and zero keys, so its attention is only the
  decomposed relative-position term; the tables hold ``-dy^2 / 2 sy^2`` and ``-dx^2 / 2 sx^2``,
  making the head a Gaussian blur of the patch darkness at the scale of a standing figure
  (``C``). detectron2 resizes these tables with the token grid, so the blur follows the image,
  whatever the input size;
* pyramid: every level carries ``T`` (quadrant resolution at p2/p3, through the transposed
  convolutions; patch mean at p4..p6) and ``C``; p3..p6 also carry a constant gate channel, p2
  does not;
* RPN: objectness grows with ``C`` on gated levels (p2 proposes nothing), so proposals sit on
  the centres of dark blobs; constant anchor deltas reshape all three anchors of a level into
  upright 1:4.2 boxes of sizes 1.06 s times 1, 2^(1/3) and 2^(2/3), a figure's shape at
  twelve scales (p3..p6);
* cascade: the three stages share one box head, which passes the pooled 7x7 ``T`` to ``fc1``.
  Its first unit is a zero-mean matched filter: the mean pooled ``T`` of the calibration
  figures (`draw_figures`, computed at write time at two input sizes) minus its average; the
  person logit is a steep function of it. A box well centred on a figure and of its size
  scores highest; uniform regions (blank, black or noise frames) score about zero; shifted, too
  small or too large boxes score lower. Four more units give ``dx, dy``: a ridge regression,
  fitted at write time on shifted and rescaled boxes around the calibration figures, of the
  move that centres a box on its figure; widths and heights are kept. The three stages apply
  it in turn, so boxes around one figure converge and the final NMS keeps one;
* mask head: the person mask logit is ``10 (T - 0.5)``: the mask is the box's dark pixels.

Real photographs give whatever a dark-blob matcher gives: usually a few boxes on dark clothing
or hair.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch

from configs.profiles import tiny as tiny_profile

from ..models.detection.model_zoo import write_model_zoo
from ..models.detection.roi_heads import POOL_LEVELS, BoxHead, pool_boxes
from ..models.vitdet.config import VitDetConfig, vitdet_tiny
from ..models.vitdet.files import CHECKPOINT_PATH
from ..models.vitdet.model import VitDetModel
from ..models.vitdet.predictor import PERSON_CLASS, VitDetPredictor
from ..weights import CacheRoots

logger = logging.getLogger(__name__)

# --- channel layout of the trunk (embed_dim 64) ---------------------------------------------------
_K = 100.0  # the constant that pins every LayerNorm's scale
_TK_POS, _TK_NEG = 0, 1
_TD = (2, 3, 4, 5)  # quadrant darkness D, quadrant q = 2 * row + col
_TD_BAL = 6  # minus the sum of the four D: keeps the LayerNorm mean at zero
_TT = (7, 8, 9, 10)  # quadrant soft threshold T
_TT_BAL = 11
_TTM, _TTM_NEG = 12, 13  # patch mean of T
_TC, _TC_NEG = 14, 15  # Gaussian blur of the patch mean (block 3)

# --- channel layout of the pyramid, RPN and ROI heads (32 channels) ----------------------------------
_PK_POS, _PK_NEG, _PT, _PT_NEG, _PC, _PC_NEG, _PGATE = range(7)

_DARK_FROM, _DARK_SPAN = 0.2, 0.3  # T = clamp((D - from) / span, 0, 1)
_GELU_SHARPNESS = 8.0  # GELU inputs span +-8 around each threshold: a clean ramp
_BLUR_SIGMA = (10.0, 2.0)  # (y, x) in tokens at the 1024 grid: a standing figure's extent
_ANCHOR_ASPECT = 4.2  # height / width of every proposal
# the dark mass of a standing figure (head and body heavier than legs) sits this fraction of its
# height above the box centre; proposals centred on the blur peak are moved down by it
_MASS_CENTRE_OFFSET = 0.08
# per ratio (0.5, 1, 2): sqrt-area relative to s, evenly spaced in log scale across levels (2^(1/3)
# apart), so two concentric proposals of neighbouring scales overlap by IoU 0.63 and the final NMS
# keeps one. The 1.06 makes the middle one just wider than the drawn figures (52 px at 640x360).
_ANCHOR_SCALE = (1.06 * 2 ** (2 / 3), 1.06 * 2 ** (1 / 3), 1.06)
_PERSON_SLOPE = 16.0  # person logit per unit of matched-filter response
_PERSON_CENTRE = 0.64  # matched-filter response at which the person probability is 0.5
_OTHER_CLASS_LOGIT = -10.0  # keeps the 79 other classes out of the results
_MASK_SLOPE = 10.0
_CALIBRATION_SIZES = (1024, 512)  # input sizes the matched filter is averaged over


@dataclass(frozen=True)
class TinyDetectorSettings:
    """Recommended test-time settings for the tiny detector in the ``tiny`` serving profile.

    Half the input side and a tenth of the proposals make a CPU frame several times faster; the
    hand-set weights are calibrated at both input sizes, so detections stay the same figures.
    """

    input_size: int  # VitDetPredictor(input_size=...): resize/pad side instead of 1024
    post_nms_topk: int  # VitDetPredictor(post_nms_topk=...): RPN proposals instead of 1000


def tiny_detector_settings() -> TinyDetectorSettings:
    """The fast settings the ``tiny`` profile passes to `VitDetPredictor.from_cache` (the
    profile in `configs` is where they are set)."""
    profile = tiny_profile()
    assert profile.detector_input_size is not None and profile.detector_post_nms_topk is not None
    return TinyDetectorSettings(input_size=profile.detector_input_size, post_nms_topk=profile.detector_post_nms_topk)


def draw_figures(positions: Sequence[int], size: tuple[int, int] = (360, 640)) -> np.ndarray:
    """BGR frame with one drawn standing figure per x position: the "people" the tiny model finds.

    Each figure is a head disc, a coloured body and two thick legs on light grey; its bounding
    box is `figure_box`.
    """
    import cv2

    img = np.full((*size, 3), 190, np.uint8)
    colours = [(40, 40, 160), (150, 60, 40), (40, 140, 40)]
    for k, x in enumerate(positions):
        cv2.circle(img, (x, 80), 22, (60, 80, 120), -1)
        cv2.rectangle(img, (x - 25, 105), (x + 25, 220), colours[k % 3], -1)
        cv2.line(img, (x - 12, 220), (x - 20, 320), (30, 30, 30), 10)
        cv2.line(img, (x + 12, 220), (x + 20, 320), (30, 30, 30), 10)
    return img


def figure_box(x: int) -> np.ndarray:
    """Bounding box ``x0, y0, x1, y1`` of the figure `draw_figures` draws at ``x``."""
    return np.array([x - 27, 58, x + 27, 325], np.float32)


def calibration_figure(height: int = 360, width: int = 640) -> np.ndarray:
    """A frame with two drawn figures, at a quarter and at five eighths of the width."""
    return draw_figures([width // 4, 5 * width // 8], (height, width))


def _ln_scale(channels: int) -> float:
    """The LayerNorm standard deviation of a vector holding only the ``+K, -K`` pair."""
    return _K * math.sqrt(2.0 / channels)


def _set_trunk(state: dict[str, torch.Tensor], cfg: VitDetConfig) -> None:
    p, dim = cfg.patch_size, cfg.embed_dim
    half = p // 2
    embed = state["backbone.net.patch_embed.proj.weight"]
    embed_bias = state["backbone.net.patch_embed.proj.bias"]
    embed_bias[_TK_POS], embed_bias[_TK_NEG] = _K, -_K
    for q, ch in enumerate(_TD):
        r, c = divmod(q, 2)
        embed[ch, :, r * half : (r + 1) * half, c * half : (c + 1) * half] = -1.0 / (3 * half * half)
    embed[_TD_BAL] = -embed[list(_TD)].sum(dim=0)

    scale = _ln_scale(dim)
    block0 = "backbone.net.blocks.0."
    state[block0 + "norm2.weight"].fill_(scale)
    fc1, fc1_b = state[block0 + "mlp.fc1.weight"], state[block0 + "mlp.fc1.bias"]
    fc2 = state[block0 + "mlp.fc2.weight"]
    gain = _GELU_SHARPNESS / _DARK_SPAN
    for q, (d_ch, t_ch) in enumerate(zip(_TD, _TT)):
        lo, hi = 2 * q, 2 * q + 1
        fc1[lo, d_ch] = fc1[hi, d_ch] = gain
        fc1_b[lo] = -gain * _DARK_FROM
        fc1_b[hi] = -gain * (_DARK_FROM + _DARK_SPAN)
        # GELU(a) - GELU(a - s) ramps from 0 to s: a clamp once divided by s
        for ch, sign in ((t_ch, 1.0), (_TT_BAL, -1.0), (_TTM, 0.25), (_TTM_NEG, -0.25)):
            fc2[ch, lo] += sign / _GELU_SHARPNESS
            fc2[ch, hi] -= sign / _GELU_SHARPNESS

    block3 = "backbone.net.blocks.3."
    state[block3 + "norm1.weight"].fill_(scale)
    qkv, qkv_b = state[block3 + "attn.qkv.weight"], state[block3 + "attn.qkv.bias"]
    qkv_b[0] = 1.0  # head 0 query = e_0: its logits are column 0 of the relative tables
    qkv[2 * dim, _TTM] = 1.0  # head 0 value, dimension 0: the patch darkness
    span = state[block3 + "attn.rel_pos_h"].shape[0]
    offsets = torch.arange(span, dtype=torch.float32) - (span - 1) / 2
    state[block3 + "attn.rel_pos_h"][:, 0] = -(offsets**2) / (2 * _BLUR_SIGMA[0] ** 2)
    state[block3 + "attn.rel_pos_w"][:, 0] = -(offsets**2) / (2 * _BLUR_SIGMA[1] ** 2)
    proj = state[block3 + "attn.proj.weight"]
    proj[_TC, 0], proj[_TC_NEG, 0] = 1.0, -1.0


def _identity_norm(state: dict[str, torch.Tensor], prefix: str, channels: int, gate: float | None = None) -> None:
    state[prefix + ".weight"][: _PGATE] = _ln_scale(channels)
    if gate is not None:
        state[prefix + ".bias"][_PGATE] = gate


def _copy(weight: torch.Tensor, pairs: Sequence[tuple[int, int, float]], centre: bool = True) -> None:
    """weight[out, in] (at the kernel centre for convolutions) = w for each (out, in, w)."""
    for out, inp, w in pairs:
        if weight.dim() == 4 and centre:
            weight[out, inp, weight.shape[2] // 2, weight.shape[3] // 2] = w
        else:
            weight[out, inp] = w


_PASS = [(c, c, 1.0) for c in range(_PGATE)]


def _set_pyramid(state: dict[str, torch.Tensor], cfg: VitDetConfig) -> None:
    from_trunk = [
        (_PK_POS, _TK_POS, 1.0),
        (_PK_NEG, _TK_NEG, 1.0),
        (_PT, _TTM, 1.0),
        (_PT_NEG, _TTM_NEG, 1.0),
        (_PC, _TC, 1.0),
        (_PC_NEG, _TC_NEG, 1.0),
    ]
    c = cfg.fpn_channels
    for level, (first, second, gate) in {"simfp_4": ("0", "1", 1.0), "simfp_5": ("1", "2", 1.0)}.items():
        _copy(state[f"backbone.{level}.{first}.weight"], from_trunk)
        _identity_norm(state, f"backbone.{level}.{first}.norm", c)
        _copy(state[f"backbone.{level}.{second}.weight"], _PASS)
        _identity_norm(state, f"backbone.{level}.{second}.norm", c, gate)

    def upsample_quadrants(weight: torch.Tensor) -> None:
        """Transposed 2x2 conv, weight (in, out, 2, 2): each output pixel takes its own quadrant."""
        for r in range(2):
            for col in range(2):
                t = _TT[2 * r + col]
                for out, inp, w in (
                    (_PK_POS, _TK_POS, 1.0),
                    (_PK_NEG, _TK_NEG, 1.0),
                    (_PT, t, 1.0),
                    (_PT_NEG, t, -1.0),
                    (_PC, _TC, 1.0),
                    (_PC_NEG, _TC_NEG, 1.0),
                ):
                    weight[inp, out, r, col] = w

    upsample_quadrants(state["backbone.simfp_3.0.weight"])
    _copy(state["backbone.simfp_3.1.weight"], _PASS)
    _identity_norm(state, "backbone.simfp_3.1.norm", c)
    _copy(state["backbone.simfp_3.2.weight"], _PASS)
    _identity_norm(state, "backbone.simfp_3.2.norm", c, 1.0)

    upsample_quadrants(state["backbone.simfp_2.0.weight"])
    state["backbone.simfp_2.1.weight"][:_PGATE] = _ln_scale(cfg.embed_dim // 2)
    # GELU(x) - GELU(-x) = x exactly, so the pairs survive the GELU between the two upsamplings
    second_up = state["backbone.simfp_2.3.weight"]  # (in, out, 2, 2)
    for pos, neg in ((_PT, _PT_NEG), (_PC, _PC_NEG)):
        second_up[pos, pos], second_up[neg, pos] = 1.0, -1.0
        second_up[neg, neg], second_up[pos, neg] = 1.0, -1.0
    second_up[_PK_POS, _PK_POS], second_up[_PK_POS, _PK_NEG] = 1.0, -1.0
    _copy(state["backbone.simfp_2.4.weight"], _PASS)
    _identity_norm(state, "backbone.simfp_2.4.norm", c)
    _copy(state["backbone.simfp_2.5.weight"], _PASS)
    _identity_norm(state, "backbone.simfp_2.5.norm", c, 0.0)


def _set_rpn(state: dict[str, torch.Tensor], cfg: VitDetConfig) -> None:
    head = "proposal_generator.rpn_head."
    # conv0: relu(C + 10 gate - 10), zero on ungated p2; conv1 passes it on
    _copy(state[head + "conv.conv0.weight"], [(0, _PC, 1.0), (0, _PGATE, 10.0)])
    state[head + "conv.conv0.bias"][0] = -10.0
    _copy(state[head + "conv.conv1.weight"], [(0, 0, 1.0)])
    state[head + "objectness_logits.weight"][:, 0] = 10.0
    state[head + "objectness_logits.bias"].fill_(-5.0)
    deltas = state[head + "anchor_deltas.bias"]
    for a, ratio in enumerate(cfg.anchor_ratios):
        # anchor (w, h) = (s / sqrt(r), s sqrt(r)) -> (k s / sqrt(A), k s sqrt(A))
        k = _ANCHOR_SCALE[a]
        deltas[4 * a + 1] = _MASS_CENTRE_OFFSET
        deltas[4 * a + 2] = math.log(k * math.sqrt(ratio / _ANCHOR_ASPECT))
        deltas[4 * a + 3] = math.log(k * math.sqrt(_ANCHOR_ASPECT / ratio))


def _set_roi_heads(state: dict[str, torch.Tensor], cfg: VitDetConfig) -> None:
    c = cfg.fpn_channels
    first = [(_PK_POS, _PK_POS, 1.0), (_PK_NEG, _PK_NEG, 1.0), (_PT, _PT, 1.0), (_PT_NEG, _PT_NEG, 1.0)]
    # after a ReLU only the positive halves are left; rebuild the pairs
    rebuild = [(_PK_POS, _PK_POS, 1.0), (_PK_NEG, _PK_POS, -1.0), (_PT, _PT, 1.0), (_PT_NEG, _PT, -1.0)]
    for stage in range(cfg.num_stages):
        head = f"roi_heads.box_head.{stage}."
        for i in range(len(cfg.box_conv_dims)):
            _copy(state[head + f"conv{i + 1}.weight"], first if i == 0 else rebuild)
            state[head + f"conv{i + 1}.norm.weight"][:4] = _ln_scale(c)
        pred = f"roi_heads.box_predictor.{stage}."
        state[pred + "cls_score.bias"].fill_(_OTHER_CLASS_LOGIT)
        state[pred + "cls_score.bias"][cfg.num_classes] = 0.0  # background
        state[pred + "cls_score.weight"][PERSON_CLASS, 0] = _PERSON_SLOPE
        state[pred + "cls_score.bias"][PERSON_CLASS] = -_PERSON_SLOPE * _PERSON_CENTRE
    mask = "roi_heads.mask_head."
    for i in range(len(cfg.mask_conv_dims)):
        _copy(state[mask + f"mask_fcn{i + 1}.weight"], first if i == 0 else rebuild)
        state[mask + f"mask_fcn{i + 1}.norm.weight"][:4] = _ln_scale(c)
    state[mask + "deconv.weight"][_PT, _PT] = 1.0
    state[mask + "predictor.bias"].fill_(_OTHER_CLASS_LOGIT)
    state[mask + "predictor.weight"][PERSON_CLASS, _PT] = _MASK_SLOPE
    state[mask + "predictor.bias"][PERSON_CLASS] = -_MASK_SLOPE * 0.5


def _pooled_darkness(model: VitDetModel, frame: np.ndarray, boxes: np.ndarray, size: int) -> torch.Tensor:
    """(N, 7, 7) pooled ``T`` of ``boxes`` (original pixels) as the box head's fc1 sees it."""
    predictor = VitDetPredictor(model, device="cpu", input_size=size)
    with torch.inference_mode():
        batch, sizes = predictor.preprocess([frame])
        h, w = sizes[0]
        scaled = torch.from_numpy(boxes).float() * torch.tensor(
            [w / frame.shape[1], h / frame.shape[0]] * 2, dtype=torch.float32
        )
        feats = model.backbone(batch)
        pooled = pool_boxes([feats[n] for n in POOL_LEVELS], [scaled], model.cfg.box_pool_size)
        x = pooled
        head = cast(BoxHead, model.roi_heads.box_head[0])
        for i in range(head.num_convs):
            x = getattr(head, f"conv{i + 1}")(x)
    return x[:, _PT].clone()


def _matched_filter(model: VitDetModel) -> torch.Tensor:
    """Zero-mean 7x7 filter with unit response on the mean pooled darkness of the figures."""
    maps = []
    for size in _CALIBRATION_SIZES:
        for shift in range(0, 16, 4):
            xs = [130 + shift, 330 + shift, 510 - shift]
            frame = draw_figures(xs)
            maps.append(_pooled_darkness(model, frame, np.stack([figure_box(x) for x in xs]), size))
    template = torch.cat(maps).mean(dim=0)
    centred = template - template.mean()
    return centred / centred.pow(2).sum()


def _centring_regressor(model: VitDetModel) -> tuple[torch.Tensor, torch.Tensor]:
    """Ridge fit of the ``(dx, dy)`` box deltas that move a figure-shaped box onto the figure it
    overlaps, from the box's pooled 7x7 darkness: (2, 49) weights and (2,) offsets."""
    rows, targets = [], []
    rng = np.random.default_rng(0)
    for size in _CALIBRATION_SIZES:
        for shift in range(0, 16, 4):
            xs = [130 + shift, 330 + shift, 510 - shift]
            frame = draw_figures(xs)
            boxes, goals = [], []
            for x in xs:
                gx, gy = float(x), (58.0 + 325.0) / 2
                for _ in range(24):
                    h = 219.0 * float(rng.uniform(0.75, 1.3))
                    w = h / _ANCHOR_ASPECT
                    cx, cy = gx + float(rng.uniform(-0.4, 0.4)) * w, gy + float(rng.uniform(-0.3, 0.3)) * h
                    boxes.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
                    goals.append([(gx - cx) / w, (gy - cy) / h])
            rows.append(_pooled_darkness(model, frame, np.asarray(boxes, np.float32), size).flatten(1))
            targets.append(torch.tensor(goals, dtype=torch.float32))
    features = torch.cat(rows).double()
    y = torch.cat(targets).double()
    x1 = torch.cat([features, torch.ones(len(features), 1, dtype=features.dtype)], dim=1)
    ridge = 1e-2 * torch.eye(x1.shape[1], dtype=features.dtype)
    ridge[-1, -1] = 0.0
    solution = torch.linalg.solve(x1.T @ x1 + ridge, x1.T @ y)  # (50, 2)
    return solution[:-1].T.float(), solution[-1].float()


def build_tiny_state(seed: int = 0) -> dict[str, np.ndarray]:
    """The tiny model's weights as ``{name: float32 ndarray}`` in the checkpoint's key order.

    The weights are hand-set (module docstring) and every parameter the design does not use is
    zero, so ``seed`` changes nothing; it stays for the factory's common signature.
    """
    del seed
    cfg = vitdet_tiny()
    model = VitDetModel(cfg)
    state = model.state_dict()
    with torch.no_grad():
        for value in state.values():
            value.zero_()
        _set_trunk(state, cfg)
        _set_pyramid(state, cfg)
        _set_rpn(state, cfg)
        _set_roi_heads(state, cfg)
        model.load_state_dict(state)
        matched = _matched_filter(model)
        centring, offsets = _centring_regressor(model)
        pool = cfg.box_pool_size
        for stage in range(cfg.num_stages):
            weight = state[f"roi_heads.box_head.{stage}.fc1.weight"]
            bias = state[f"roi_heads.box_head.{stage}.fc1.bias"]
            grid = weight.view(weight.shape[0], cfg.fpn_channels, pool, pool)
            grid[0, _PT] = matched
            deltas = state[f"roi_heads.box_predictor.{stage}.bbox_pred.weight"]
            stage_weights = cfg.cascade_bbox_weights[stage]
            for coord in range(2):  # dx, dy; sizes are kept
                # a signed value through fc1's ReLU as the difference of two units
                pos, neg = 1 + 2 * coord, 2 + 2 * coord
                grid[pos, _PT] = centring[coord].view(pool, pool)
                grid[neg, _PT] = -centring[coord].view(pool, pool)
                bias[pos], bias[neg] = offsets[coord], -offsets[coord]
                deltas[coord, pos] = stage_weights[coord]
                deltas[coord, neg] = -stage_weights[coord]
    return {name: value.detach().numpy().astype(np.float32, copy=True) for name, value in state.items()}


def write_tiny_vitdet(roots: CacheRoots, seed: int = 0) -> list[Path]:
    """Write the tiny checkpoint at the official model-zoo path under ``roots.detectron2``."""
    return [write_model_zoo(roots.detectron2 / CHECKPOINT_PATH, build_tiny_state(seed))]
