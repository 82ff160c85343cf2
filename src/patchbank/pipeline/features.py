"""Patch features: local p x p aggregation and alignment of the tapped layers on one grid.

LMF-Core Sec. 4.2 / PatchCore: every layer's map is averaged over each position's p x p
neighbourhood (stride 1), then deeper (coarser) maps are bilinearly resized to the first
(finest) map's grid so patch positions align.  ``border="valid"``: border positions average only
the neighbours that exist (``count_include_pad=False``), so the image edge does not read as dark
padding; ``border="zero"``: the zero padding counts (``AvgPool2d(p, 1, p // 2)``, as the official
PatchCore code and anomalib do).  With ``crop_at="features"`` the backbone reads the whole resize
and the aligned maps are cut to the crop's cells afterwards (:class:`FeatureCrop`): the cells at
the crop's edge are computed from the real pixels around them, not from padding.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from patchbank.errors import PatchbankError
from patchbank.io.image_coords import crop_offset


def aggregate(maps: list[torch.Tensor], patch_size: int, border: str = "valid") -> list[torch.Tensor]:
    """p x p local average of each map (``border`` "valid" or "zero", see the module docstring),
    then bilinear resize to the first map's (h, w)."""
    h, w = maps[0].shape[-2:]
    out = []
    for fmap in maps:
        if patch_size > 1:
            fmap = F.avg_pool2d(fmap, patch_size, stride=1, padding=patch_size // 2,
                                count_include_pad=border == "zero")
            if fmap.shape[-2:] != maps[0].shape[-2:] and patch_size % 2 == 0:
                fmap = fmap[..., :-1, :-1]
        if fmap.shape[-2:] != (h, w):
            fmap = F.interpolate(fmap, size=(h, w), mode="bilinear", align_corners=False)
        out.append(fmap)
    return out


@dataclass(frozen=True)
class FeatureCrop:
    """The crop's cells in the feature grid of the whole resize (``crop_at="features"``): rows
    ``top .. top + height - 1``, columns ``left .. left + width - 1`` of the finest tap's grid,
    for an input of ``network`` (H, W) pixels at ``stride`` pixels per cell."""

    top: int
    left: int
    height: int
    width: int
    network: tuple[int, int]
    stride: int

    def cut(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        """The crop's cells of aggregated, aligned maps [B, C, h, w] on the whole resize's grid."""
        h, w = maps[0].shape[-2:]
        want = (self.network[0] // self.stride, self.network[1] // self.stride)
        if (h, w) != want:
            raise PatchbankError(f"the backbone's grid for a {self.network[0]} x {self.network[1]} "
                                 f"input is {h} x {w}, not {want[0]} x {want[1]} cells of "
                                 f"{self.stride} px: crop_at features cannot cut the crop from it")
        return [m[..., self.top:self.top + self.height, self.left:self.left + self.width]
                for m in maps]


def feature_crop(config, stride: int) -> FeatureCrop | None:
    """The :class:`FeatureCrop` of ``config`` for a backbone whose finest tap has ``stride``
    pixels per cell; None unless ``config.crop_at`` is "features" and there is a crop.

    Raises:
        PatchbankError: (one line) the resize, the crop or the crop's offset is not a whole
            number of cells.
    """
    if config.crop_at != "features" or config.crop_size is None:
        return None
    (h, w), (ch, cw) = config.image_size, config.crop_size
    top, left = crop_offset(config)
    if any(v % stride for v in (h, w, ch, cw, top, left)):
        raise PatchbankError(f"crop_at features needs the resize, the crop and the crop's margins in "
                             f"whole cells of {stride} px (the backbone's finest tap): resize {h}x{w}, "
                             f"crop {ch}x{cw}, margins {top}, {left}; choose such sizes or crop_at image")
    return FeatureCrop(top // stride, left // stride, ch // stride, cw // stride, (h, w), stride)


def to_patches(maps: list[torch.Tensor]) -> list[torch.Tensor]:
    """[B, C, h, w] maps -> [B*h*w, C] rows, row order (image, y, x)."""
    return [m.permute(0, 2, 3, 1).reshape(-1, m.shape[1]) for m in maps]


CPU_MICRO_BATCH = 4   # images per backbone call on CPU (see FeatureExtractor.maps)


class FeatureExtractor(nn.Module):
    """Images -> per-layer patch rows: the frozen backbone, p x p aggregation, alignment.

    ``forward(x [B, 3, H, W]) -> (rows, (h, w))``: ``rows[l]`` is layer l's [B*h*w, C_l] patch
    features in row order (image, y, x), ``(h, w)`` the patch grid of the first tapped layer.
    """

    def __init__(self, backbone: nn.Module, patch_size: int, device: torch.device,
                 border: str = "valid", crop: FeatureCrop | None = None):
        super().__init__()
        self.backbone = backbone
        self.patch_size = patch_size
        self.border = border
        self.crop = crop
        self.device = torch.device(device)
        # on CPU, CNNs run in channels-last memory format and in micro-batches of CPU_MICRO_BATCH
        # images (docs/performance.md: activations stay in cache); outputs equal up to rounding
        self.cpu_fast_path = self.device.type == "cpu" and backbone.kind == "cnn"
        self._channels_last = False   # converted on the first call, inside inference mode

    @torch.inference_mode()
    def maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The backbone's tapped feature maps of ``x`` (the benchmark floor times exactly this)."""
        x = x.to(self.device, non_blocking=True)
        if not self.cpu_fast_path:
            return self.backbone(x)
        if not self._channels_last:
            self.backbone.to(memory_format=torch.channels_last)
            self._channels_last = True
        x = x.contiguous(memory_format=torch.channels_last)
        if x.shape[0] <= CPU_MICRO_BATCH:
            return self.backbone(x)
        parts = [self.backbone(chunk) for chunk in x.split(CPU_MICRO_BATCH)]
        return [torch.cat(maps) for maps in zip(*parts)]

    def check_map(self, grid: tuple[int, int], size: tuple[int, int]) -> None:
        """Refuse (one line) a finest feature map ``grid`` (h, w) of an input of ``size`` (H, W)
        smaller than the p x p aggregation."""
        if self.patch_size > min(grid):
            raise PatchbankError(f"patch_size {self.patch_size} is larger than the backbone's feature "
                                 f"map ({grid[0]} x {grid[1]} for a {size[0]} x {size[1]} input): use a "
                                 f"smaller patch_size or a larger image_size")

    def check_input(self, size: tuple[int, int]) -> None:
        """:meth:`check_map` for an input of ``size`` (H, W) before any image is read: the
        finest tap's map is ceil(size / stride) (SAME-padded CNNs, torchvision's ResNets, and
        ViTs, whose sides are multiples of the patch), so a fit can refuse it first."""
        stride = self.backbone.strides[0]
        self.check_map((-(-size[0] // stride), -(-size[1] // stride)), size)

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], tuple[int, int]]:
        """Images -> (per-layer patch rows, patch grid (h, w)); see the class docstring."""
        return self.rows(self.maps(x), x.shape)

    def rows(self, raw: list[torch.Tensor], x_shape) -> tuple[list[torch.Tensor], tuple[int, int]]:
        """The backbone's tapped maps ``raw`` of an input of shape ``x_shape`` -> (per-layer patch
        rows, patch grid): p x p aggregation, alignment, rows.  Plain torch ops on the maps (no
        inference-mode switch), so an exported graph runs exactly this after the backbone."""
        self.check_map(tuple(raw[0].shape[-2:]), tuple(x_shape[-2:]))
        maps = aggregate(raw, self.patch_size, self.border)
        if self.crop is not None:
            maps = self.crop.cut(maps)
        return to_patches(maps), tuple(maps[0].shape[-2:])
