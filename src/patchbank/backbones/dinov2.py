"""DINOv2 ViTs: ``dinov2_vitb14`` (the StructCore backbone), ``dinov2_vits14``.

timm ``vit_{base,small}_patch14_dinov2.lvd142m`` with ``dynamic_img_size=True``; taps are
StructCore's skip layers, blocks ``-1, -3, -6, -9, -12``, returned as patch-token maps by
:class:`~patchbank.backbones.base.VitBackbone` (H and W must be multiples of 14).  ImageNet
mean / std.  Default weights: ``model.safetensors`` of the timm Hugging Face repo; a user file
may also be Meta's original checkpoint (converted by timm's ``checkpoint_filter_fn``).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from torch import Tensor, nn

from patchbank.backbones.base import (IMAGENET_MEAN, IMAGENET_STD, Backbone, VitBackbone, block_taps,
                                      with_context)
from patchbank.backbones.registry import Normalisation, register_backbone
from patchbank.backbones.weights import RANDOM, first_line, hf_hub_file, instantiate, read_state_dict, sha256
from patchbank.errors import PatchbankError


class DinoWeights(NamedTuple):
    """Where one DINOv2 variant's architecture and weights come from."""

    arch: str       # timm architecture
    repo: str       # Hugging Face repo holding model.safetensors
    original: str   # Meta's original checkpoint name (named in the offline hint)


DINO = {
    "dinov2_vits14": DinoWeights("vit_small_patch14_dinov2.lvd142m", "timm/vit_small_patch14_dinov2.lvd142m",
                                 "dinov2_vits14_pretrain.pth"),
    "dinov2_vitb14": DinoWeights("vit_base_patch14_dinov2.lvd142m", "timm/vit_base_patch14_dinov2.lvd142m",
                                 "dinov2_vitb14_pretrain.pth"),
}
DEFAULT_TAPS = (-1, -3, -6, -9, -12)
DEPTH = 12  # blocks of both variants


def build_dinov2(name: str, weights: str | None, layers: Sequence[Any] | None,
                 context: int = 0) -> Backbone:
    """The registry builder for the names in :data:`DINO` (see the module docstring)."""
    import timm

    taps = with_context(name, block_taps(name, layers, DEFAULT_TAPS, DEPTH), context, DEPTH)
    path = sha = state = None
    if weights != RANDOM:
        path = weights if weights is not None else hf_hub_file(name, DINO[name].repo, DINO[name].original)
        sha = sha256(path)
        state = read_state_dict(path)
    model = instantiate(lambda: timm.create_model(DINO[name].arch, pretrained=False, dynamic_img_size=True),
                        state, path, name, convert_dino_keys)
    backbone = VitBackbone(model, taps)
    backbone.describe(name, "vit", taps, IMAGENET_MEAN, IMAGENET_STD, sha, probe=56)
    return backbone


def convert_dino_keys(state: dict[str, Tensor], model: nn.Module, path: str, name: str) -> dict[str, Tensor]:
    """timm's own converter: accepts timm files and Meta's originals (drops mask_token,
    resamples pos_embed when the grid differs)."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    try:
        return checkpoint_filter_fn(state, model)
    except Exception as e:
        raise PatchbankError(f"weights file {path} does not match backbone {name}: "
                             f"{first_line(e)}") from None


for _name in DINO:
    register_backbone(_name, build_dinov2, Normalisation(IMAGENET_MEAN, IMAGENET_STD))
