"""Frozen pretrained feature extractors (the "features" step of PatchCore-style detectors).

``create_backbone(name, weights=None, layers=None, device="cpu")`` returns a :class:`Backbone`
(contract in :mod:`patchbank.backbones.base`).  Families, one module each, register their names
in :mod:`patchbank.backbones.registry`:

* :mod:`~patchbank.backbones.efficientnet_lite`: ``efficientnet_lite2`` (default), ``efficientnet_lite0``
* :mod:`~patchbank.backbones.resnet`: ``wide_resnet50_2``, ``resnet18``
* :mod:`~patchbank.backbones.dinov2`: ``dinov2_vits14``, ``dinov2_vitb14``

Weights (``weights=``, :mod:`patchbank.backbones.weights`): ``None`` uses the packaged file
(EfficientNet-Lite, checked against a hard-coded sha256) or the framework's download cache
(torchvision hub / Hugging Face hub; a download is attempted when online).  A path loads that
file: ``.safetensors`` through safetensors, anything else through
``torch.load(weights_only=True)``.  ``"random"`` builds randomly initialised weights, for tests
only (``weights_sha256 = None``).  CNN batch norms are folded into their convolutions
(:mod:`patchbank.backbones.batchnorm_folding`).

Adding a backbone: one module that calls ``register_backbone(name, builder, Normalisation(mean,
std))`` at import, and
its import below.  ``BACKBONES`` is the tuple of registered names, read from the registry.
"""
from patchbank.backbones.base import Backbone
from patchbank.backbones.registry import (Normalisation, backbone_names, backbone_normalisation,
                                          check_backbone_name, create_backbone, register_backbone)

# the families: importing a module registers its names (this order is the order of BACKBONES)
from patchbank.backbones import efficientnet_lite, resnet, dinov2  # noqa: E402,F401  isort: skip

__all__ = ["BACKBONES", "Backbone", "Normalisation", "backbone_names", "backbone_normalisation",
           "check_backbone_name", "create_backbone", "register_backbone"]


def __getattr__(name: str):
    """``BACKBONES``: the registered names now (a backbone registered later is included)."""
    if name == "BACKBONES":
        return backbone_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
