"""The backbone registry: names -> builders, and :func:`create_backbone`.

A family module registers each of its names with :func:`register_backbone`; its builder is
called as ``builder(name, weights, layers, context)`` with ``weights`` None (packaged file or
download cache), a path string, or ``"random"``, and ``context`` the number of blocks after the
deepest of ``layers`` also tapped (:func:`patchbank.backbones.base.with_context`); it returns an
unfolded :class:`Backbone` on the CPU.  A family may also register each name's input
normalisation (:class:`Normalisation`): :func:`backbone_normalisation` gives it without building
anything (an export's sidecar is checked against it), and :func:`create_backbone` checks that the
built backbone's ``mean`` / ``std`` are the registered ones.
:func:`create_backbone` adds what every backbone gets: batch-norm folding for CNNs
(:mod:`patchbank.backbones.batchnorm_folding`) and the move to the device.  Names are listed in
registration order (:func:`backbone_names`).
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch

from patchbank.backbones.base import Backbone
from patchbank.backbones.batchnorm_folding import fold_batchnorm
from patchbank.backbones.weights import RANDOM, first_line
from patchbank.errors import PatchbankError

Builder = Callable[[str, "str | None", "Sequence[Any] | None", int], Backbone]



class Normalisation(NamedTuple):
    """The input normalisation a backbone's caller applies: ``(x - mean) / std`` per channel."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]


_BUILDERS: dict[str, Builder] = {}
_NORMALISATION: dict[str, Normalisation] = {}


def register_backbone(name: str, builder: Builder, normalisation: Normalisation | None = None) -> Builder:
    """Make ``create_backbone(name, ...)`` call ``builder(name, weights, layers, context)``;
    ``normalisation``: the input normalisation its backbones use (:func:`backbone_normalisation`).

    Registering a name again replaces its builder only when the new one is the same function
    (a module reload); a different builder under a taken name is a ValueError (a bug).
    """
    old = _BUILDERS.get(name)
    if old is not None and (old.__module__, old.__qualname__) != (builder.__module__, builder.__qualname__):
        raise ValueError(f"backbone {name!r} is already registered by {old.__module__}.{old.__qualname__}")
    _BUILDERS[name] = builder
    if normalisation is not None:
        _NORMALISATION[name] = Normalisation(*(tuple(float(v) for v in part) for part in normalisation))
    return builder


def backbone_normalisation(name: str) -> Normalisation | None:
    """The input normalisation registered for ``name`` (None: its family registered none), read
    without building the backbone; an unknown name is a one-line PatchbankError."""
    if name not in _BUILDERS:
        raise PatchbankError(f"unknown backbone {name!r}; choose one of {', '.join(_BUILDERS)}")
    return _NORMALISATION.get(name)


def check_backbone_name(name: Any, where: str) -> None:
    """A file's ``config.backbone`` must be a registered name: a one-line PatchbankError naming
    ``where`` (the file) and the registered names, before anything is built."""
    if not isinstance(name, str) or name not in _BUILDERS:
        raise PatchbankError(f"{where}: config.backbone {name!r} is not a backbone of this patchbank "
                             f"({', '.join(_BUILDERS)})")


def backbone_names() -> tuple[str, ...]:
    """The registered backbone names, in registration order."""
    return tuple(_BUILDERS)


def create_backbone(name: str, weights: str | os.PathLike | None = None,
                    layers: Sequence[Any] | None = None, device: str | torch.device = "cpu",
                    context: int = 0) -> Backbone:
    """Build the frozen backbone ``name`` (one of :func:`backbone_names`), moved to ``device``.

    ``weights``: None (packaged file or download cache), a file path, or ``"random"`` (tests only).
    ``layers``: block indices for EfficientNet-Lite (0-6) and DINOv2 (negative counts from the
    end), ``"layer1"``..``"layer4"`` (or 1-4) for ResNets; None = the family's default taps.
    ``context``: blocks after the deepest of ``layers`` also tapped, for the image score only
    (``Config.context_taps``); they come last in ``layers`` and are not in ``map_taps``.
    Unknown names, bad layers, unusable files and devices raise a one-line PatchbankError.

    On a GPU every call runs with cuDNN's TF32 convolutions off, and the process's setting back
    afterwards (:mod:`patchbank.backbones.precision`).
    """
    builder = _BUILDERS.get(name)
    if builder is None:
        raise PatchbankError(f"unknown backbone {name!r}; choose one of {', '.join(_BUILDERS)}")
    if weights is not None and weights != RANDOM:
        weights = os.fspath(weights)
    backbone = builder(name, weights, layers, context)
    registered = _NORMALISATION.get(name)
    if registered is not None and (tuple(backbone.mean), tuple(backbone.std)) != registered:
        raise ValueError(f"backbone {name!r} normalises with {backbone.mean} / {backbone.std}, its "
                         f"registration says {registered}")   # a bug in the family module
    backbone.map_taps = len(backbone.layers) - context
    if backbone.kind == "cnn":
        # batch norm folded into the convolutions: same outputs up to float rounding, one pass
        # over every activation map less (checked on this probe input in fold_batchnorm)
        backbone, backbone.folded_batchnorms = fold_batchnorm(backbone, torch.rand(2, 3, 64, 64))
    try:
        return backbone.to(torch.device(device))
    except (RuntimeError, AssertionError, ValueError) as e:
        raise PatchbankError(f"cannot use device {device!r}: {first_line(e)}") from None
