"""torchvision ResNets: ``wide_resnet50_2`` (the LMF-Core and PatchCore paper backbone), ``resnet18``.

Taps ``layer2`` and ``layer3`` (stride 8 and 16) as in PatchCore (Roth et al.) and LMF-Core
(Liu); ImageNet mean / std.  Default weights: torchvision's IMAGENET1K_V1 file from the torch
hub cache (downloaded when missing), checked against the sha256 prefix in its name.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from patchbank.backbones.base import IMAGENET_MEAN, IMAGENET_STD, Backbone, CnnBackbone, with_context
from patchbank.backbones.registry import Normalisation, register_backbone
from patchbank.backbones.weights import (RANDOM, instantiate, read_state_dict, sha256,
                                         torchvision_cache_file, torchvision_hash_prefix)
from patchbank.errors import PatchbankError

RESNETS = ("wide_resnet50_2", "resnet18")
DEFAULT_LAYERS = ("layer2", "layer3")


def build_resnet(name: str, weights: str | None, layers: Sequence[Any] | None,
                 context: int = 0) -> Backbone:
    """The registry builder for the names in :data:`RESNETS` (see the module docstring)."""
    import torchvision

    taps = with_context(name, resnet_taps(name, layers), context, 4)
    path = sha = state = None
    if weights != RANDOM:
        path = weights if weights is not None else torchvision_cache_file(name)
        sha = sha256(path)
        prefix = torchvision_hash_prefix(path)
        if weights is None and not sha.startswith(prefix):  # torchvision names files by hash
            raise PatchbankError(f"weights file {path} is corrupt: sha256 {sha} does not start with "
                                 f"{prefix}; delete it")
        state = read_state_dict(path)
    model = instantiate(lambda: getattr(torchvision.models, name)(weights=None), state, path, name)
    stem = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool)
    stages = [model.layer1, model.layer2, model.layer3, model.layer4]
    backbone = CnnBackbone(stem, stages, taps)
    backbone.describe(name, "cnn", tuple(f"layer{i + 1}" for i in taps), IMAGENET_MEAN,
                      IMAGENET_STD, sha, probe=64)
    return backbone


def resnet_taps(name: str, layers: Sequence[Any] | None) -> list[int]:
    """``"layer1"``..``"layer4"`` (or 1-4; None = :data:`DEFAULT_LAYERS`) -> sorted stage indices 0-3."""
    names = {**{f"layer{i}": i - 1 for i in range(1, 5)}, **{str(i): i - 1 for i in range(1, 5)}}
    taps = set()
    for layer in DEFAULT_LAYERS if layers is None else layers:
        if isinstance(layer, bool) or str(layer) not in names:
            raise PatchbankError(f"layers: {layer!r} is not a {name} layer; use layer1..layer4")
        if names[str(layer)] in taps:
            raise PatchbankError(f"layers: layer{names[str(layer)] + 1} of {name} is named twice ({layer!r})")
        taps.add(names[str(layer)])
    if not taps:
        raise PatchbankError(f"layers: empty for {name}")
    return sorted(taps)


for _name in RESNETS:
    register_backbone(_name, build_resnet, Normalisation(IMAGENET_MEAN, IMAGENET_STD))
