"""Per-step observation features: low-dim keys concatenated, one ResNet per camera."""

from __future__ import annotations

import torch
from torch import nn

from policies.common.vision import ResNet18GN, SpatialSoftmax, prepare_images

SPATIAL_KP = 32  # keypoints per camera, robomimic / Diffusion Policy default
IMAGE_FEATURE_DIM = 64  # per-camera feature after the keypoint projection (lerobot: 64)


class ObsEncoder(nn.Module):
    """{key: (N, D) normalised low-dim | (N, H, W, 3) uint8} -> (N, out_dim).

    Each camera gets its own ResNet-18-GN + spatial softmax (Diffusion Policy, sec. 3.3:
    separate encoders per view work better than a shared one).
    """

    def __init__(
        self,
        lowdim_dims: dict[str, int],
        camera_shapes: dict[str, tuple[int, int, int]],
        crop_ratio: float,
        vision_width: int,
    ) -> None:
        super().__init__()
        self.lowdim_keys = list(lowdim_dims)
        self.camera_keys = list(camera_shapes)
        self.crops = {
            k: (max(1, round(h * crop_ratio)), max(1, round(w * crop_ratio)))
            for k, (h, w, _) in camera_shapes.items()
        }
        self.backbones = nn.ModuleDict()
        self.keypoints = nn.ModuleDict()
        for k in self.camera_keys:
            net = ResNet18GN(vision_width)
            self.backbones[k] = net
            self.keypoints[k] = nn.Sequential(
                SpatialSoftmax(net.out_channels, SPATIAL_KP),
                nn.Linear(2 * SPATIAL_KP, IMAGE_FEATURE_DIM),
                nn.ReLU(),
            )
        self.out_dim = sum(lowdim_dims.values()) + IMAGE_FEATURE_DIM * len(self.camera_keys)

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        feats = [obs[k] for k in self.lowdim_keys]
        for k in self.camera_keys:
            x = prepare_images(obs[k], self.crops[k], random=self.training)
            feats.append(self.keypoints[k](self.backbones[k](x)))
        return torch.cat(feats, -1)
