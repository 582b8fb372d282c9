"""Loaders build modules on the meta device and adopt the file's tensors: no random init is paid
for at a cold start, nothing is left on meta, and the loaded state is the file's, exactly."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.errors import WeightsError
from pipeline.models.checkpoint import load_strict

# Every in-place initialiser of torch.nn.init that module constructors call.
INIT_FUNCTIONS = (
    "uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_",
    "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_", "sparse_",
)  # fmt: skip


@pytest.fixture
def init_calls(monkeypatch) -> list[str]:
    """Names of torch.nn.init functions called on real (non-meta) tensors while the test runs."""
    calls: list[str] = []
    for name in INIT_FUNCTIONS:
        original = getattr(torch.nn.init, name)

        @functools.wraps(original)
        def counting(tensor, *args, _original=original, _name=name, **kwargs):
            if not tensor.is_meta:
                calls.append(_name)
            return _original(tensor, *args, **kwargs)

        monkeypatch.setattr(torch.nn.init, name, counting)
    return calls


def _assert_real(module: nn.Module) -> None:
    on_meta = [n for n, t in (*module.named_parameters(), *module.named_buffers()) if t.is_meta]
    assert not on_meta, f"left on the meta device: {on_meta[:5]}"


def _assert_state_equals(module: nn.Module, expected: dict[str, torch.Tensor], prefix: str = "") -> None:
    own = module.state_dict()
    for key, value in expected.items():
        ours = own[prefix + key]
        assert ours.dtype == (torch.float32 if value.is_floating_point() else value.dtype), key
        assert torch.equal(ours, value.to(ours.dtype)), key


def test_counter_sees_an_eager_build(init_calls):
    """Control: building a model the ordinary way does call the initialisers."""
    from pipeline.models.hmr2.config import hmr2_tiny
    from pipeline.models.hmr2.model import HMR2

    HMR2(hmr2_tiny())
    assert "kaiming_uniform_" in init_calls


def test_hmr2_loader_never_initialises(tiny_roots, init_calls):
    from pipeline.models.hmr2 import files
    from pipeline.models.hmr2.convert import convert_state_dict, read_checkpoint_state_dict
    from pipeline.models.hmr2.predictor import HMR2Predictor

    predictor = HMR2Predictor.from_cache(tiny_roots, download=False, device="cpu")
    assert init_calls == []
    _assert_real(predictor.model)
    state = convert_state_dict(read_checkpoint_state_dict(tiny_roots.hmr2 / files.CHECKPOINT))
    assert set(state) == set(predictor.model.state_dict())
    _assert_state_equals(predictor.model, state)


def test_vitdet_loader_never_initialises(tiny_roots, init_calls):
    from pipeline.models.vitdet.convert import read_model_zoo, to_state_dict
    from pipeline.models.vitdet.files import CHECKPOINT_PATH
    from pipeline.models.vitdet.predictor import VitDetPredictor

    path = tiny_roots.detectron2 / CHECKPOINT_PATH
    predictor = VitDetPredictor.from_checkpoint(path, device="cpu")
    assert init_calls == []
    _assert_real(predictor.model)
    _assert_state_equals(predictor.model, to_state_dict(read_model_zoo(path)))


def test_phalp_loader_never_initialises(tiny_roots, init_calls):
    from pipeline.models.phalp import files
    from pipeline.models.phalp.convert import hmar_state_from_file, pose_predictor_state_from_file, read_mean_std
    from pipeline.models.phalp.loading import load_tracking_models

    predictor, encoder = load_tracking_models(tiny_roots, device="cpu", download=False)
    assert init_calls == []
    _assert_real(predictor)
    _assert_real(encoder)
    _assert_state_equals(predictor, pose_predictor_state_from_file(tiny_roots.phalp / files.POSE_PREDICTOR), "encoder.")
    _assert_state_equals(encoder, hmar_state_from_file(tiny_roots.phalp / files.HMAR_WEIGHTS))
    mean_std = read_mean_std(tiny_roots.phalp / files.MEAN_STD).reshape(2, -1)
    k = mean_std.shape[1]
    assert predictor.mean.dtype == predictor.std.dtype == torch.float32
    np.testing.assert_array_equal(predictor.mean[:k].numpy(), mean_std[0].astype(np.float32))
    np.testing.assert_array_equal(predictor.std[:k].numpy(), mean_std[1].astype(np.float32))
    assert torch.all(predictor.mean[k:] == 0) and torch.all(predictor.std[k:] == 1)


def test_smpl_loader_never_initialises(tiny_roots, init_calls):
    from pipeline.models.hmr2 import files
    from pipeline.models.smpl import EXTRA_VERTEX_IDS, OPENPOSE_JOINT_MAP, SMPLBodyModel

    smpl = SMPLBodyModel.from_files(tiny_roots.hmr2 / files.SMPL_NEUTRAL, tiny_roots.hmr2 / files.JOINT_REGRESSOR)
    assert init_calls == []
    _assert_real(smpl)
    # Constants computed in __init__ are lost on meta; the loader must put them back.
    assert smpl.joint_map.tolist() == list(OPENPOSE_JOINT_MAP)
    assert smpl.vertex_joint_selector.extra_joints_idxs.tolist() == list(EXTRA_VERTEX_IDS)
    assert smpl.parents[0] == -1 and smpl.v_template.abs().sum() > 0
    assert smpl.faces_tensor.dtype == smpl.parents.dtype == torch.long


class _Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.register_buffer("table", torch.arange(4.0), persistent=False)


def test_assign_casts_to_the_models_dtype():
    with torch.device("meta"):
        model = nn.Linear(3, 2)
    load_strict(model, {"weight": torch.ones(2, 3, dtype=torch.float16), "bias": torch.zeros(2, dtype=torch.float64)},
                source="half file", assign=True)
    assert model.weight.dtype == model.bias.dtype == torch.float32
    assert model.weight.requires_grad  # still a parameter


def test_assign_missing_key_is_a_weights_error():
    with torch.device("meta"):
        model = nn.Linear(3, 2)
    with pytest.raises(WeightsError) as err:
        load_strict(model, {"weight": torch.ones(2, 3)}, source="short file", assign=True)
    assert err.value.code == "checkpoint_mismatch" and "bias" in str(err.value)


def test_assign_leaving_a_buffer_on_meta_fails():
    with torch.device("meta"):
        model = _Small()
    with pytest.raises(RuntimeError, match="table"):
        load_strict(model, {"fc.weight": torch.ones(2, 3), "fc.bias": torch.zeros(2)}, source="file", assign=True)
