"""Configuration of PHALP's tracking path, with the defaults 4D-Humans runs it with.

`PhalpConfig` mirrors the ``phalp.*`` section of PHALP's ``FullConfig`` plus the few values
4D-Humans' ``Human4DConfig`` and PHALP hard-code elsewhere (focal length, render resolution,
cost weights of ``EQ_019``). `PosePredictorConfig` mirrors the ``configs`` node of the pose
predictor's yaml (``config_40006.yaml``), which ``Pose_transformer_v2`` reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

from ...errors import WeightsError


@dataclass(frozen=True)
class PhalpConfig:
    """Tracker settings (PHALP ``FullConfig.phalp`` as 4D-Humans' ``track.py`` uses them)."""

    predict: Literal["TPL"] = "TPL"  # cues predicted per track: Texture, Pose, Location
    pose_distance: Literal["smpl"] = "smpl"  # pose cue compares SMPL rotations + betas
    distance_type: Literal["EQ_019"] = "EQ_019"  # cost formula of nn_matching._pdist
    alpha: float = 0.1  # texture blending factor, times detection score squared
    low_th_c: float = 0.8  # detections with score <= this never reach the tracker
    hungarian_th: float = 100.0  # largest accepted match cost
    track_history: int = 7  # detections kept per track (history deque length)
    max_age_track: int = 50  # confirmed track deleted when time_since_update exceeds this
    n_init: int = 5  # hits that confirm a tentative track
    encode_type: Literal["4c"] = "4c"  # appearance encoder input: RGB + visibility mask
    past_lookback: int = 1  # samples per track in the distance metric (only the latest)
    small_w: int = 50  # boxes narrower than this (pixels) are dropped before tracking
    small_h: int = 100  # boxes lower than this (pixels) are dropped before tracking
    render_res: int = 256  # side of the square frame 2D joints are expressed in (cfg.render.res)
    focal_length: float = 5000.0  # focal length of that frame (cfg.EXTRA.FOCAL_LENGTH)
    expand_bbox_shape: tuple[int, int] = (192, 256)  # crop aspect (w, h) of 4D-Humans' Human4DConfig
    # EQ_019 weights: texture, pose, 2D location, depth (nn_matching._pdist ``betas``).
    cost_betas: tuple[float, float, float, float] = (4.0536, 1.3070, 0.3792, 4.1658)
    pose_distance_clip: float = 1.5  # EQ_019 clips the squared pose distance here
    pose_vector_dims: int = 226  # entries of the pose vector the pose distance compares
    location_max_gap: int = 48  # the ridge extrapolates at most this many frames past the last hit
    ridge_alpha_depth: float = 5.0  # ridge penalties of forward_for_tracking("L")
    ridge_alpha_x: float = 1.2
    ridge_alpha_y: float = 2.0
    uv_size: int = 256  # side of the UV texture atlas
    # Where the reference reads every row of a predictor batch at the first row's slot (its
    # quirk, README of the fixtures 9.2); True reads each row at its own slot.
    pose_readout_per_row: bool = False
    texture_batch_size: int = 16  # UV maps per appearance-encoder call in the texture cost

    def __post_init__(self) -> None:
        if self.predict != "TPL" or self.distance_type != "EQ_019" or self.pose_distance != "smpl":
            raise ValueError(
                "only PHALP's default cues are implemented: expected predict='TPL', "
                f"distance_type='EQ_019', pose_distance='smpl', got {self.predict!r}, "
                f"{self.distance_type!r}, {self.pose_distance!r}"
            )
        if self.n_init < 1 or self.track_history < 3 or self.max_age_track < 0:
            raise ValueError(
                f"expected n_init >= 1, track_history >= 3, max_age_track >= 0, got "
                f"{self.n_init}, {self.track_history}, {self.max_age_track}"
            )


def phalp_default() -> PhalpConfig:
    """PHALP's shipped defaults as 4D-Humans' ``track.py`` runs them."""
    return PhalpConfig()


@dataclass(frozen=True)
class PosePredictorConfig:
    """The pose predictor (PHALP ``Pose_transformer_v2`` / LART ``lart_transformer``)."""

    in_feat: int = 128  # token width
    frame_length: int = 125  # slots of the temporal canvas
    pose_dim: int = 229  # pose vector: 9 + 207 rotation entries, 10 betas, 3 camera
    mid_dim: int = 229  # hidden width of pose_shape_encoder
    depth: int = 16  # layers of transformer1
    heads: int = 16
    dim_head: int = 64
    mlp_dim: int = 512
    conv_pad: int = 1  # bottleneck Conv1d / ConvTranspose1d padding
    conv_stride: int = 5  # ... and stride; kernel = stride + 2 * pad
    num_smpl_heads: int = 1  # read-out heads; tracking reads head 0
    num_body_joints: int = 23
    smpl_head_hidden: int = 1024  # SMPLHead fc1/fc2 width
    smpl_head_iterations: int = 3  # iterative error feedback steps of SMPLHead
    mask_type_test: Literal["zero"] = "zero"  # empty slots replaced by the mask token
    num_action_classes: int = 60  # action_head_ava outputs (present in the checkpoint, unused)

    @property
    def conv_kernel(self) -> int:
        return self.conv_stride + 2 * self.conv_pad

    @classmethod
    def from_yaml_dict(cls, data: Mapping[str, Any], *, source: str = "pose predictor yaml") -> "PosePredictorConfig":
        """Build from the yaml PHALP reads (``configs:`` node), as in ``config_40006.yaml``."""
        node = data.get("configs", data)
        try:
            tr = node["transformer"]
            ps = node.get("extra_feat", {}).get("pose_shape", {})
            ava = node.get("ava", {})
            n_actions = ava.get("num_valid_action_classes", 60) if ava.get("predict_valid", True) else ava.get(
                "num_action_classes", 80
            )
            extra = node.get("extra_feat", {}).get("enable", "")
            if extra:
                raise WeightsError(
                    "pose_predictor_config",
                    f"{source}: expected the pose-only predictor (extra_feat.enable ''), got {extra!r}",
                )
            mask_type = node.get("mask_type_test", "zero")
            if mask_type != "zero":
                raise WeightsError(
                    "pose_predictor_config", f"{source}: expected mask_type_test 'zero', got {mask_type!r}"
                )
            return cls(
                in_feat=int(node["in_feat"]),
                frame_length=int(node["frame_length"]),
                pose_dim=int(ps.get("dim", 229)),
                mid_dim=int(ps.get("mid_dim", 229)),
                depth=int(tr["depth"]),
                heads=int(tr["heads"]),
                dim_head=int(tr["dim_head"]),
                mlp_dim=int(tr["mlp_dim"]),
                conv_pad=int(tr["conv"]["pad"]),
                conv_stride=int(tr["conv"]["stride"]),
                num_smpl_heads=int(node.get("num_smpl_heads", 1)),
                num_action_classes=int(n_actions),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise WeightsError("pose_predictor_config", f"{source}: missing or invalid field ({exc!r})") from exc


def pose_predictor_default() -> PosePredictorConfig:
    """LART's pose-only predictor as PHALP ships it (``config_40006.yaml``)."""
    return PosePredictorConfig()


@dataclass(frozen=True)
class AppearanceEncoderConfig:
    """The encoder half of HMAR's ``EncodingHead`` (4-channel UV texture -> 16x16x16)."""

    in_channels: int = 4  # RGB + visibility mask ("4c")
    # Output channels of conv1x, conv2, conv3, conv4, conv5, conv5_1.
    channels: tuple[int, int, int, int, int, int] = field(default=(16, 64, 128, 256, 256, 16))


def appearance_encoder_default() -> AppearanceEncoderConfig:
    return AppearanceEncoderConfig()
