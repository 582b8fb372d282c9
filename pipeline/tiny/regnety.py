"""Tiny RegNetY Mask R-CNN: the real architecture at `regnety_tiny` sizes with hand-set weights,
written as a detectron2 model-zoo pickle at the official checkpoint path, so the real loader
reads it and the ``regnety`` detector runs on tiny caches.

Like the tiny ViTDet (`pipeline.tiny.vitdet`), it is a small dark-blob template matcher built
from the real modules: on drawn test figures (`pipeline.tiny.vitdet.draw_figures`) it returns
one stable, well-placed, confident box per figure, and nothing on blank, black or noise
frames, so every downstream stage (HMR2, PHALP tracking) runs on a laptop CPU. Every weight the
design does not use is zero. How the weights behave, stage by stage (every BatchNorm has
running mean 0 and variance ``1 - eps``: an identity scaled by its weight, plus its bias):

* stem: per 2 px, the darkness ``-m`` (``m`` the mean normalised BGR value over the 3x3
  window) as the ramp pair ``relu(a), relu(a - 1)`` with ``a = (-m - 0.2) / 0.25``; their
  difference is the soft threshold ``T = clamp(a, 0, 1)`` ("this spot is dark"). The zero
  padding (normalised 0) is not dark;
* trunk: the first block of each stage has a zero shortcut; its bottleneck carries ``T`` in
  channel 0 (``a`` 1x1: the ramp difference in s1, a copy after), blurs it with a 3x3
  binomial at stride 2 (``b``), keeps it through a squeeze-excitation gate held open by a large
  bias and copies it out (``c``). The other blocks are identities (their ``c_bn`` is zero, so
  ``out = relu(x) = x``). Each stage's output channel 0 is ``T`` at its stride, anti-aliased;
* pyramid: each lateral conv writes its stage's ``T`` into its own channel, so the top-down
  sums keep the levels apart; each output conv takes its own level's ``T`` (channel 0, for ROI
  pooling), a 3x3 binomial blur of it (channel 1, for the RPN), and a constant gate (channel
  2, a BatchNorm bias) that is 1 on p3..p6 only;
* RPN: objectness grows with a further blurred ``T`` on gated levels (p2 proposes little), so
  proposals sit on dark blobs; constant anchor deltas reshape all three anchors of a level
  into upright figure-shaped boxes, moved down from the dark mass to the figure's centre, at
  sizes 2^(1/3) apart: twelve scales over p3..p6, the drawn figures' at p4's fine grid;
* box head: the four convs pass ``T`` (kernel centre), ``fc1`` reads the pooled 7x7 ``T``. Its
  first unit is a zero-sum person filter, fitted at write time on boxes around the calibration
  figures (`draw_figures`): about 1 on boxes that fit a figure, about 0 on boxes that cover
  only part of one, overhang it or miss it; zero sum, so uniform regions (blank, black or
  noise frames) give 0 as well. The person logit is a steep function of it. Eight more units
  give the class-specific person deltas ``dx, dy, dw, dh`` (signed values through the ReLU as
  unit pairs): a ridge regression, fitted at write time on shifted and rescaled boxes, of the
  move that fits a box to its figure, so boxes around one figure converge and the final NMS
  keeps one; the 79 other classes are held off;
* mask head: the person mask logit is ``10 (T - 0.35)``: the mask is the box's dark pixels.

Real photographs give whatever a dark-blob matcher gives. It proves the plumbing, not accuracy.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..models.detection.model_zoo import write_model_zoo
from ..models.detection.predictor import PERSON_CLASS
from ..models.detection.roi_heads import POOL_LEVELS, pool_boxes
from ..models.regnety.backbone import TRUNK_LEVELS, ResBottleneckBlock
from ..models.regnety.config import RegNetYConfig, regnety_tiny
from ..models.regnety.files import CHECKPOINT_PATH
from ..models.regnety.model import RegNetYModel
from ..models.regnety.predictor import RegNetYPredictor
from ..weights import CacheRoots
from .vitdet import draw_figures, figure_box

_DARK_FROM, _DARK_SPAN = 0.2, 0.25  # T = clamp((-m - from) / span, 0, 1)
_SE_OPEN = 20.0  # sigmoid(20): the squeeze-excitation gate is 1 to 2e-9
_BINOMIAL = torch.tensor([1.0, 2.0, 1.0])

# pyramid channels (fpn_channels 32): own-level T, its blur, the RPN gate; laterals write
# stage s_i's T into channel _LATERAL_FROM + i, apart from the other levels in the sums
_PT, _PC, _PGATE = 0, 1, 2
_LATERAL_FROM = 8
_GATED = {"2": 0.0, "3": 1.0, "4": 1.0, "5": 1.0}  # p6 is p5 subsampled: gated as well

_ANCHOR_ASPECT = 4.6  # height / width of every proposal: a standing figure's shape
# per ratio (0.5, 1, 2): sqrt-area relative to the level's anchor size, 2^(1/3) apart across
# the levels, so every level's three boxes and the next level's fill one geometric series
_ANCHOR_SCALE = (2 ** (5 / 3), 2 ** (4 / 3), 2.0)
# the dark mass of a standing figure (the body is its widest part) sits this fraction of its
# height above the box centre; proposals centred on the objectness peak are moved down by it
_MASS_CENTRE_OFFSET = 0.1
_PERSON_SLOPE = 24.0  # person logit per unit of matched-filter response
_PERSON_CENTRE = 0.7  # matched-filter response at which the person probability is 0.5
_OTHER_CLASS_LOGIT = -10.0  # keeps the 79 other classes out of the results
_MASK_SLOPE, _MASK_FROM = 10.0, 0.35
_CALIBRATION_WIDTHS = (640, 480)  # frame widths (height 360) of the calibration figures
_CALIBRATION_SHIFTS = (0, 6, 12)
_TARGET_WIDEN = 1.1  # the boxes fitted to a figure are this much wider than it
_POSITIVE_IOU, _NEGATIVE_IOU = 0.65, 0.45  # person filter: positives and negatives by IoU with a figure
_RIDGE = 1e-4


def _identity_norm(bn: nn.BatchNorm2d, channels: Iterable[int] = (), bias: dict[int, float] | None = None) -> None:
    """Running mean 0, variance ``1 - eps``: ``y = weight x + bias``; weight 1 on ``channels``,
    0 elsewhere (those channels are then just their bias)."""
    assert bn.running_mean is not None and bn.running_var is not None
    bn.running_mean.zero_()
    bn.running_var.fill_(1.0 - bn.eps)
    bn.weight.zero_()
    bn.bias.zero_()
    for c in channels:
        bn.weight[c] = 1.0
    for c, b in (bias or {}).items():
        bn.bias[c] = b


def _binomial(weight: torch.Tensor, out: int, inp: int) -> None:
    """weight[out, inp] := the 3x3 binomial blur (sums to 1)."""
    weight[out, inp] = torch.outer(_BINOMIAL, _BINOMIAL) / 16.0


def _centre(weight: torch.Tensor, out: int, inp: int, value: float = 1.0) -> None:
    weight[out, inp, weight.shape[2] // 2, weight.shape[3] // 2] = value


def _set_trunk(model: RegNetYModel) -> None:
    trunk = model.backbone.bottom_up
    stem = trunk.stem
    gain = 1.0 / _DARK_SPAN
    # a = (-m - from) / span, m the mean of 27 normalised values
    stem.conv.weight[:2] = -gain / 27.0
    _identity_norm(stem.bn, (0, 1), {0: -gain * _DARK_FROM, 1: -gain * _DARK_FROM - 1.0})
    for s, name in enumerate(TRUNK_LEVELS):
        for j, block in enumerate(getattr(trunk, name).children()):
            assert isinstance(block, ResBottleneckBlock)
            f = block.f
            for bn in (f.a_bn, f.b_bn, f.c_bn):
                _identity_norm(bn)
            if block.bn is not None:
                assert isinstance(block.bn, nn.BatchNorm2d)
                _identity_norm(block.bn)  # shortcut zero
            if j > 0:
                continue  # identity block: f is zero
            f.a.weight[0, 0] = 1.0
            if s == 0:
                f.a.weight[0, 1] = -1.0  # the stem's ramp pair -> T
            _binomial(f.b.weight, 0, 0)
            f.c.weight[0, 0] = 1.0
            excite = f.se.f_ex[2]
            assert isinstance(excite, nn.Conv2d) and excite.bias is not None
            se_bias = excite.bias
            se_bias.fill_(_SE_OPEN)
            for bn in (f.a_bn, f.b_bn, f.c_bn):
                _identity_norm(bn, (0,))


def _set_pyramid(model: RegNetYModel) -> None:
    fpn = model.backbone
    for i, level in enumerate(("2", "3", "4", "5")):
        own = _LATERAL_FROM + i
        lateral = getattr(fpn, f"fpn_lateral{level}")
        lateral.weight[own, 0] = 1.0
        _identity_norm(lateral.norm, (own,))
        output = getattr(fpn, f"fpn_output{level}")
        _centre(output.weight, _PT, own)
        _binomial(output.weight, _PC, own)
        _identity_norm(output.norm, (_PT, _PC), {_PGATE: _GATED[level]})


def _set_rpn(model: RegNetYModel) -> None:
    cfg = model.cfg
    head = model.proposal_generator.rpn_head
    conv0, conv1 = head.conv.conv0, head.conv.conv1
    assert isinstance(conv0, nn.Conv2d) and isinstance(conv1, nn.Conv2d) and conv0.bias is not None
    # conv0: relu(blur C + 10 gate - 10), zero on ungated levels; channel 1 the gate
    _binomial(conv0.weight, 0, _PC)
    _centre(conv0.weight, 0, _PGATE, 10.0)
    conv0.bias[0] = -10.0
    _centre(conv0.weight, 1, _PGATE)
    _binomial(conv1.weight, 0, 0)
    _centre(conv1.weight, 1, 1)
    objectness = head.objectness_logits
    assert objectness.bias is not None
    objectness.weight[:, 0] = 10.0
    objectness.weight[:, 1] = 5.0
    objectness.bias.fill_(-5.0)
    deltas = head.anchor_deltas.bias
    assert deltas is not None
    for a, ratio in enumerate(cfg.anchor_ratios):
        # anchor (w, h) = (s / sqrt(r), s sqrt(r)) -> (k s / sqrt(A), k s sqrt(A))
        k = _ANCHOR_SCALE[a]
        deltas[4 * a + 1] = _MASS_CENTRE_OFFSET
        deltas[4 * a + 2] = math.log(k * math.sqrt(ratio / _ANCHOR_ASPECT))
        deltas[4 * a + 3] = math.log(k * math.sqrt(_ANCHOR_ASPECT / ratio))


def _set_roi_heads(model: RegNetYModel) -> None:
    heads = model.roi_heads
    for i in range(heads.box_head.num_convs):
        conv = getattr(heads.box_head, f"conv{i + 1}")
        _centre(conv.weight, _PT, _PT)
        _identity_norm(conv.norm, (_PT,))
    predictor = heads.box_predictor
    predictor.cls_score.bias.fill_(_OTHER_CLASS_LOGIT)
    predictor.cls_score.bias[-1] = 0.0  # background
    predictor.cls_score.weight[PERSON_CLASS, 0] = _PERSON_SLOPE
    predictor.cls_score.bias[PERSON_CLASS] = -_PERSON_SLOPE * _PERSON_CENTRE
    mask = heads.mask_head
    for i in range(mask.num_convs):
        conv = getattr(mask, f"mask_fcn{i + 1}")
        _centre(conv.weight, _PT, _PT)
        _identity_norm(conv.norm, (_PT,))
    mask.deconv.weight[_PT, _PT] = 1.0  # (in, out, 2, 2): each output pixel takes its input
    mask_bias = mask.predictor.bias
    assert mask_bias is not None
    mask_bias.fill_(_OTHER_CLASS_LOGIT)
    mask.predictor.weight[PERSON_CLASS, _PT] = _MASK_SLOPE
    mask_bias[PERSON_CLASS] = -_MASK_SLOPE * _MASK_FROM


class _Calibration:
    """Drawn figures (three per frame, at two frame widths, shifted) with their true boxes and
    the pyramid the model computes on them, so boxes can be pooled as the box head sees them."""

    def __init__(self, model: RegNetYModel) -> None:
        self.model = model
        predictor = RegNetYPredictor(model, device="cpu")
        self.cases: list[tuple[np.ndarray, list[torch.Tensor], torch.Tensor]] = []
        for width in _CALIBRATION_WIDTHS:
            for shift in _CALIBRATION_SHIFTS:
                xs = [width // 5 + shift, width // 2 + shift, 4 * width // 5 - shift]
                frame = draw_figures(xs, (360, width))
                batch, sizes = predictor.preprocess([frame])
                feats = model.backbone(batch)
                h, w = sizes[0]
                scale = torch.tensor([w / width, h / 360] * 2)
                truth = np.stack([figure_box(x) for x in xs])
                self.cases.append((truth, [feats[n] for n in POOL_LEVELS], scale))

    def pooled(self, case: int, boxes: np.ndarray) -> torch.Tensor:
        """(N, 49) pooled ``T`` of ``boxes`` (frame pixels) after the box head's convs."""
        _, maps, scale = self.cases[case]
        x = pool_boxes(maps, [torch.from_numpy(boxes).float() * scale], self.model.cfg.box_pool_size)
        head = self.model.roi_heads.box_head
        for i in range(head.num_convs):
            x = getattr(head, f"conv{i + 1}")(x)
        return x[:, _PT].flatten(1)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N,) IoU of each box in ``a`` with the one box ``b``."""
    lt = np.maximum(a[:, :2], b[:2])
    rb = np.minimum(a[:, 2:], b[2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    return inter / ((a[:, 2:] - a[:, :2]).prod(-1) + (b[2:] - b[:2]).prod() - inter)


def _target(figure: np.ndarray) -> np.ndarray:
    """The box the model should give for a figure: its extent, a little wider (PHALP drops
    boxes narrower than 50 px; a drawn figure is 54 px wide)."""
    x0, y0, x1, y1 = (float(v) for v in figure)
    pad = 0.5 * (_TARGET_WIDEN - 1.0) * (x1 - x0)
    return np.array([x0 - pad, y0, x1 + pad, y1], np.float32)


def _person_filter(calibration: _Calibration) -> torch.Tensor:
    """Zero-sum 7x7 filter (flat) on the pooled darkness: about 1 on boxes fitting a figure,
    about 0 on boxes that cover only part of one, overhang it or miss it. Zero sum, so uniform
    regions (blank, black, noise) give 0 too.

    A ridge fit without intercept on centred pooled maps: positives are boxes of IoU >= 0.75
    with a figure, negatives boxes of IoU < 0.5 with every figure."""
    rng = np.random.default_rng(1)
    rows, targets = [], []
    for case, (truth, _, _) in enumerate(calibration.cases):
        boxes = []
        for gx0, gy0, gx1, gy1 in truth.tolist():
            gw, gh = gx1 - gx0, gy1 - gy0
            for _ in range(64):
                h = gh * float(np.exp(rng.uniform(np.log(0.4), np.log(2.5))))
                w = h * gw / gh * float(rng.uniform(0.7, 1.4))
                cx = (gx0 + gx1) / 2 + float(rng.uniform(-1.2, 1.2)) * gw
                cy = (gy0 + gy1) / 2 + float(rng.uniform(-0.4, 0.4)) * gh
                boxes.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
            for _ in range(32):  # parts of the figure: dark all over, yet no figure
                h = gh * float(rng.uniform(0.35, 0.7))
                w = gw * float(rng.uniform(0.5, 1.0))
                cx = (gx0 + gx1) / 2 + float(rng.uniform(-0.3, 0.3)) * gw
                cy = (gy0 + gy1) / 2 + float(rng.uniform(-0.3, 0.3)) * gh
                boxes.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
        sampled = np.concatenate([np.asarray(boxes, np.float32), truth, np.stack([_target(t) for t in truth])])
        best = np.max(np.stack([_iou(sampled, t) for t in truth]), axis=0)
        keep = (best >= _POSITIVE_IOU) | (best < _NEGATIVE_IOU)
        rows.append(calibration.pooled(case, sampled[keep]))
        targets.append(torch.from_numpy((best[keep] >= _POSITIVE_IOU).astype(np.float64)))
    x = torch.cat(rows).double()
    x = x - x.mean(dim=1, keepdim=True)
    y = torch.cat(targets)
    # positives and negatives weigh the same in all
    weight = torch.where(y > 0, 0.5 / y.sum(), 0.5 / (1 - y).sum())
    gram = x.T @ (weight[:, None] * x) + _RIDGE * torch.eye(x.shape[1], dtype=x.dtype)
    solution = torch.linalg.solve(gram, x.T @ (weight * y))
    return (solution - solution.mean()).float()


def _box_regressor(calibration: _Calibration) -> tuple[torch.Tensor, torch.Tensor]:
    """Ridge fit of the ``dx, dy, dw, dh`` box deltas that move a figure-shaped box onto the
    `_target` of the figure it overlaps, from its pooled 7x7 darkness: (4, 49) weights and (4,)
    offsets."""
    rows, targets = [], []
    rng = np.random.default_rng(0)
    for case, (truth, _, _) in enumerate(calibration.cases):
        boxes, goals = [], []
        for figure in truth:
            gx0, gy0, gx1, gy1 = (float(v) for v in _target(figure))
            gw, gh = gx1 - gx0, gy1 - gy0
            gx, gy = (gx0 + gx1) / 2, (gy0 + gy1) / 2
            for _ in range(32):
                h = gh * float(rng.uniform(0.7, 1.4))
                w = h * gw / gh * float(rng.uniform(0.8, 1.25))
                cx, cy = gx + float(rng.uniform(-0.4, 0.4)) * w, gy + float(rng.uniform(-0.2, 0.2)) * h
                boxes.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
                goals.append([(gx - cx) / w, (gy - cy) / h, math.log(gw / w), math.log(gh / h)])
        rows.append(calibration.pooled(case, np.asarray(boxes, np.float32)))
        targets.append(torch.tensor(goals, dtype=torch.float64))
    features = torch.cat(rows).double()
    y = torch.cat(targets)
    x1 = torch.cat([features, torch.ones(len(features), 1, dtype=features.dtype)], dim=1)
    ridge = 1e-2 * torch.eye(x1.shape[1], dtype=features.dtype)
    ridge[-1, -1] = 0.0
    solution = torch.linalg.solve(x1.T @ x1 + ridge, x1.T @ y)  # (50, 4)
    return solution[:-1].T.float(), solution[-1].float()


def _set_box_read_out(model: RegNetYModel) -> None:
    """fc1: the person filter (unit 0) and the signed box deltas (unit pairs 1..8) on the
    pooled ``T``; the person class's ``bbox_pred`` rows read the pairs."""
    calibration = _Calibration(model)
    person = _person_filter(calibration)
    regressor, offsets = _box_regressor(calibration)
    cfg = model.cfg
    pool = cfg.box_pool_size
    fc1 = model.roi_heads.box_head.fc1
    grid = fc1.weight.view(fc1.weight.shape[0], cfg.fpn_channels, pool * pool)
    grid[0, _PT] = person
    deltas = model.roi_heads.box_predictor.bbox_pred.weight
    for coord in range(4):
        # a signed value through fc1's ReLU as the difference of two units
        pos, neg = 1 + 2 * coord, 2 + 2 * coord
        grid[pos, _PT] = regressor[coord]
        grid[neg, _PT] = -regressor[coord]
        fc1.bias[pos], fc1.bias[neg] = offsets[coord], -offsets[coord]
        row = 4 * PERSON_CLASS + coord
        deltas[row, pos] = cfg.bbox_weights[coord]
        deltas[row, neg] = -cfg.bbox_weights[coord]


def build_tiny_state(seed: int = 0) -> dict[str, np.ndarray]:
    """The tiny model's weights as ``{name: float32 ndarray}`` in the checkpoint's key order
    (``num_batches_tracked`` as a 0-d float, as in the published files).

    The weights are hand-set and calibrated (module docstring); every parameter the design
    does not use is zero, so ``seed`` changes nothing; it stays for the factory's common
    signature."""
    del seed
    cfg: RegNetYConfig = regnety_tiny()
    model = RegNetYModel(cfg)
    with torch.no_grad():
        for value in model.state_dict().values():
            value.zero_()
        _set_trunk(model)
        _set_pyramid(model)
        _set_rpn(model)
        _set_roi_heads(model)
        _set_box_read_out(model)
    return {name: value.detach().numpy().astype(np.float32, copy=True) for name, value in model.state_dict().items()}


def write_tiny_regnety(roots: CacheRoots, seed: int = 0) -> list[Path]:
    """Write the tiny checkpoint at the official model-zoo path under ``roots.detectron2``."""
    return [write_model_zoo(roots.detectron2 / CHECKPOINT_PATH, build_tiny_state(seed))]
