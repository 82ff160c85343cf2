"""Fold frozen batch normalisation into the convolution before it (inference only).

A frozen BatchNorm after a convolution is an affine map per output channel,
``y = gamma (conv(x) - mu) / sqrt(var + eps) + beta``, so it can be absorbed into the
convolution's weights and bias: ``W' = W s``, ``b' = (b - mu) s + beta`` with
``s = gamma / sqrt(var + eps)``.  The backbone then skips one full pass over every activation
map (timings: docs/performance.md, "patchbank.backbones.batchnorm_folding").  Outputs are the
same up to float rounding.

Pairs are found structurally: inside one module, a ``BatchNorm2d`` child registered directly
after a ``Conv2d`` child with as many output channels (timm's EfficientNet blocks, torchvision's
ResNet blocks and their ``Sequential`` stems / downsamples).  Registration order is not execution
order in general, so :func:`fold_batchnorm` checks the folded module against the original on a
probe input and gives back the original if they differ.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


def _fold_pair(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Absorb ``bn`` (eval-mode statistics) into ``conv`` in place."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    conv.weight = nn.Parameter((conv.weight * scale.view(-1, 1, 1, 1)).detach(), requires_grad=False)
    conv.bias = nn.Parameter(((bias - bn.running_mean) * scale + bn.bias).detach(), requires_grad=False)


def _after_norm(bn: nn.BatchNorm2d) -> nn.Module | None:
    """What remains of a norm layer once its affine map is folded away: nothing for a plain
    BatchNorm2d, the dropout + activation of timm's BatchNormAct2d; None if unknown."""
    if type(bn) is nn.BatchNorm2d:
        return nn.Identity()
    if hasattr(bn, "act") and hasattr(bn, "drop") and type(bn).__name__ == "BatchNormAct2d":
        return nn.Sequential(bn.drop, bn.act)
    return None


def _fold_children(module: nn.Module) -> int:
    """Fold every conv -> batch-norm pair of consecutively registered children, recursively, in
    place; returns the number of pairs folded."""
    folded = 0
    prev = None
    for name, child in list(module.named_children()):
        if (isinstance(child, nn.BatchNorm2d) and isinstance(prev, nn.Conv2d)
                and child.track_running_stats and child.affine
                and prev.out_channels == child.num_features):
            rest = _after_norm(child)
            if rest is not None:
                _fold_pair(prev, child)
                setattr(module, name, rest)
                folded += 1
                prev = rest
                continue
        folded += _fold_children(child)
        prev = child
    return folded


@torch.no_grad()
def fold_batchnorm(module: nn.Module, probe: torch.Tensor, rtol: float = 1e-3) -> tuple[nn.Module, int]:
    """A copy of eval-mode ``module`` with every conv -> batch-norm pair folded, and the number of
    pairs folded.  ``probe`` is an input the copy must map to the same outputs as ``module``
    (each output within ``rtol`` of its largest magnitude); otherwise ``(module, 0)`` comes back.

    The folded parameters are ordinary tensors (made under ``no_grad``, not ``inference_mode``):
    an inference-tensor parameter moved to a GPU outside inference mode keeps no version
    counter, and cuDNN's convolution then fails with "Inference tensors do not track version
    counter" (found on an H200: a backbone built on cuda outside inference mode)."""
    folded = copy.deepcopy(module)
    n = _fold_children(folded)
    if n == 0:
        return module, 0
    ref, out = module(probe), folded(probe)
    ref = ref if isinstance(ref, (list, tuple)) else [ref]
    out = out if isinstance(out, (list, tuple)) else [out]
    for a, b in zip(ref, out):
        if a.shape != b.shape or (a - b).abs().max() > rtol * a.abs().max().clamp_min(1e-6):
            return module, 0
    return folded, n
