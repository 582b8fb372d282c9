"""PHALP's published weight layouts map onto our modules exactly (keys and shapes).

The schemas list every tensor of the real files; they are built here as meta tensors (no
memory) and passed through the same key conversion the loader uses.
"""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from pipeline.models.phalp.config import PosePredictorConfig
from pipeline.models.phalp.convert import convert_hmar_state_dict, convert_pose_predictor_state_dict
from pipeline.models.phalp.encoder import PhalpAppearanceEncoder
from pipeline.models.phalp.predictor import PhalpPosePredictor


@pytest.fixture(scope="module")
def phalp_dir(golden):
    return golden("phalp")


def _shapes(state) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def test_hmar_weights_layout_maps_onto_the_appearance_encoder(phalp_dir):
    entries = json.loads((phalp_dir / "hmar_state_dict_schema.json").read_text())["keys"]
    in_file = {e["file_key"]: torch.empty(e["shape"], device="meta") for e in entries if e["file_key"] and e["in_hmar_v2_weights_file"]}
    converted = convert_hmar_state_dict(in_file)
    with torch.device("meta"):
        encoder = PhalpAppearanceEncoder()
    assert _shapes(converted) == _shapes(encoder.state_dict())
    used = {e["file_key"] for e in entries if e["used_by_4dhumans_tracking"] and e["file_key"]}
    assert {"HMAR.encoding_head." + k for k in converted} == used


def test_pose_predictor_checkpoint_layout_maps_onto_our_transformer(phalp_dir):
    entries = json.loads((phalp_dir / "pose_predictor_ckpt_schema.json").read_text())["keys"]
    with open(phalp_dir / "pose_predictor.yaml") as fh:
        config = PosePredictorConfig.from_yaml_dict(yaml.safe_load(fh))
    converted = convert_pose_predictor_state_dict({e["ckpt_key"]: torch.empty(e["shape"], device="meta") for e in entries})
    with torch.device("meta"):
        predictor = PhalpPosePredictor(config)
    assert _shapes(converted) == _shapes(predictor.encoder.state_dict())
    # Everything that affects the prediction is loaded (the reference skipped some of it; see docs/phalp.md).
    affecting = {e["module_key"] for e in entries if e["affects_predict_next_output"]}
    assert affecting <= set(converted)
