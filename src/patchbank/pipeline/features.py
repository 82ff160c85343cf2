"""Patch features: local p x p aggregation and alignment of the tapped layers on one grid.

LMF-Core Sec. 4.2 / PatchCore: every layer's map is averaged over each position's p x p
neighbourhood (stride 1), then deeper (coarser) maps are bilinearly resized to the first
(finest) map's grid so patch positions align.  Border positions average only the neighbours
that exist (``count_include_pad=False``), so the image edge does not read as dark padding.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def aggregate(maps: list[torch.Tensor], patch_size: int) -> list[torch.Tensor]:
    """p x p local average of each map, then bilinear resize to the first map's (h, w)."""
    h, w = maps[0].shape[-2:]
    out = []
    for fmap in maps:
        if patch_size > 1:
            fmap = F.avg_pool2d(fmap, patch_size, stride=1, padding=patch_size // 2,
                                count_include_pad=False)
            if fmap.shape[-2:] != maps[0].shape[-2:] and patch_size % 2 == 0:
                fmap = fmap[..., :-1, :-1]
        if fmap.shape[-2:] != (h, w):
            fmap = F.interpolate(fmap, size=(h, w), mode="bilinear", align_corners=False)
        out.append(fmap)
    return out


def to_patches(maps: list[torch.Tensor]) -> list[torch.Tensor]:
    """[B, C, h, w] maps -> [B*h*w, C] rows, row order (image, y, x)."""
    return [m.permute(0, 2, 3, 1).reshape(-1, m.shape[1]) for m in maps]
