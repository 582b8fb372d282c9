"""ViTDet attention with the decomposed relative positions folded into the query and key
features equals the attention written as detectron2 does it: scaled q·k logits plus the
q·Rh / q·Rw terms of the unscaled query, added as a (HW, HW) bias, then softmax."""

from __future__ import annotations

import pytest
import torch

from pipeline.models.vitdet.backbone import VitDetAttention, _relative_table


def _dense_reference(attn: VitDetAttention, x: torch.Tensor) -> torch.Tensor:
    """The original arithmetic, in float64, written out with the full logit matrix."""
    b, h, w, c = x.shape
    heads, d = attn.num_heads, c // attn.num_heads
    x = x.double()
    qkv = torch.nn.functional.linear(x, attn.qkv.weight.double(), attn.qkv.bias.double())
    q, k, v = qkv.reshape(b, h * w, 3, heads, d).permute(2, 0, 3, 1, 4).unbind(0)
    logits = (q * d**-0.5) @ k.transpose(-2, -1)  # (B, heads, HW, HW)
    rh = _relative_table(h, attn.rel_pos_h.double())
    rw = _relative_table(w, attn.rel_pos_w.double())
    rq = q.reshape(b, heads, h, w, d)
    rel_h = torch.einsum("bnhwd,hkd->bnhwk", rq, rh)
    rel_w = torch.einsum("bnhwd,wkd->bnhwk", rq, rw)
    logits = logits.view(b, heads, h, w, h, w) + rel_h[..., :, None] + rel_w[..., None, :]
    out = logits.view(b, heads, h * w, h * w).softmax(-1) @ v
    out = out.transpose(1, 2).reshape(b, h, w, c)
    return torch.nn.functional.linear(out, attn.proj.weight.double(), attn.proj.bias.double())


@pytest.mark.parametrize(("h", "w", "span"), [(14, 14, 27), (5, 9, 27), (12, 12, 15)], ids=["window", "non-square", "resized-table"])
def test_folded_relative_positions_equal_the_dense_bias(h: int, w: int, span: int) -> None:
    gen = torch.Generator().manual_seed(h * 100 + w)
    attn = VitDetAttention(dim=48, num_heads=3, rel_span=span)
    with torch.no_grad():
        for p in attn.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    x = torch.randn(2, h, w, 48, generator=gen)
    with torch.inference_mode():
        ours = attn(x)
    expected = _dense_reference(attn, x)
    assert ours.shape == (2, h, w, 48) and ours.dtype == torch.float32
    # Logits of a few units: float32 rounding of the one dot product against float64.
    torch.testing.assert_close(ours.double(), expected, rtol=1e-5, atol=1e-5)
    # The relative terms matter here: without them the output is far from the reference.
    with torch.no_grad():
        attn.rel_pos_h.zero_()
        attn.rel_pos_w.zero_()
        assert (attn(x).double() - expected).abs().max() > 1e-2
