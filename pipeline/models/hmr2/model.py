"""HMR2.0: ViT backbone + SMPL transformer-decoder head + SMPL body model (4D-Humans' ``HMR2``)."""

from __future__ import annotations

import torch
from torch import nn

from ..smpl import SMPLBodyModel
from .config import HMR2Config
from .head import HMR2SMPLHead
from .vit import HMR2ViT


class HMR2(nn.Module):
    """Normalised RGB crops (B, 3, S, S) -> SMPL parameters, crop camera, mesh and joints.

    Submodule names (``backbone``, ``smpl_head``, ``smpl``) are those of the Lightning
    checkpoint, so its state dict loads strictly after the training-only keys are dropped.
    """

    def __init__(self, cfg: HMR2Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = HMR2ViT(cfg.backbone)
        self.smpl_head = HMR2SMPLHead(cfg.head)
        self.smpl = SMPLBodyModel()

    def backbone_input(self, img: torch.Tensor) -> torch.Tensor:
        """The centre columns of the square crop that the 192-px-wide ViT sees."""
        margin = (img.shape[-1] - self.cfg.backbone.img_size[1]) // 2
        return img[..., margin : img.shape[-1] - margin]

    def forward(self, img: torch.Tensor, *, with_features: bool = False) -> dict[str, torch.Tensor]:
        features = self.backbone(self.backbone_input(img))
        # The decoder head is a few percent of the compute, but its read-outs are residuals on
        # the mean pose and shape: under half-precision autocast they alone moved vertices by
        # up to 42 mm (bfloat16) on the golden model (tests/test_precision.py), so it runs in float32.
        with torch.autocast(device_type=features.device.type, enabled=False):
            out = self.smpl_head(features.float())
        # Camera and SMPL run in float32 whatever the network dtype, as the original casts (SMPL
        # switches autocast off itself; the camera terms below are element-wise, never autocast).
        pred_cam = out["pred_cam"].float()
        batch = pred_cam.shape[0]
        f = self.cfg.focal_length
        pred_cam_t = torch.stack(
            [pred_cam[:, 1], pred_cam[:, 2], 2 * f / (self.cfg.image_size * pred_cam[:, 0] + 1e-9)], dim=-1
        )
        smpl_out = self.smpl(out["global_orient"].float(), out["body_pose"].float(), out["betas"].float())
        joints = smpl_out.joints
        # Perspective projection with focal f/S in crop-normalised units (pixel = S*kp + S/2).
        points = joints + pred_cam_t.unsqueeze(1)
        kp2d = points[..., :2] / points[..., 2:3] * (f / self.cfg.image_size)
        result = {
            "pred_cam": pred_cam,
            "global_orient": out["global_orient"].float(),
            "body_pose": out["body_pose"].float(),
            "betas": out["betas"].float(),
            "pred_cam_t": pred_cam_t,
            "focal_length": torch.full((batch, 2), f, dtype=pred_cam.dtype, device=pred_cam.device),
            "pred_keypoints_3d": joints,
            "pred_keypoints_2d": kp2d,
            "pred_vertices": smpl_out.vertices,
        }
        if with_features:
            result["backbone_features"] = features
            result["token_out"] = out["token_out"]
        return result
