"""Patch-score grid -> pixel anomaly map: upsampling to the input size, Gaussian blur.

Upsampling is bilinear (``align_corners=False``, the official PatchCore code) or nearest
(anomalib's ``F.interpolate`` default).

PatchCore / LMF-Core Sec. 4.5 / StructCore Sec. 3.5: sigma = 4 px.  The blur is a separable
Gaussian truncated at 4 sigma with reflected borders, the same as
``scipy.ndimage.gaussian_filter(x, sigma, mode="reflect", truncate=4.0)``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def gaussian_kernel(sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """Normalised 1-D Gaussian taps of radius int(truncate * sigma + 0.5) (scipy's rule), float32."""
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).float()


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur [B, H, W] maps with a separable Gaussian (scipy's 'reflect' border = torch 'symmetric')."""
    if sigma <= 0:
        return maps
    k = gaussian_kernel(sigma).to(maps.device, maps.dtype)
    r = k.numel() // 2
    x = maps.unsqueeze(1)
    # scipy 'reflect' (d c b a | a b c d) is 'symmetric' padding; torch's 'reflect' omits the edge.
    x = _symmetric_pad(x, r)
    x = F.conv2d(x, k.view(1, 1, 1, -1))
    x = F.conv2d(x, k.view(1, 1, -1, 1))
    return x.squeeze(1)


def _symmetric_pad(x: torch.Tensor, r: int) -> torch.Tensor:
    """Pad the last two dims by r with edge-including reflection, repeating if r exceeds the size."""
    for dim in (-1, -2):
        n = x.shape[dim]
        idx = torch.arange(-r, n + r, device=x.device)
        period = 2 * n
        idx = torch.remainder(idx, period)
        idx = torch.where(idx >= n, period - 1 - idx, idx)
        x = x.index_select(dim, idx)
    return x


_OPERATORS: dict = {}


def map_operator(n: int, size: int, sigma: float, device, dtype=torch.float32,
                 mode: str = "bilinear") -> torch.Tensor:
    """The [size, n] matrix of "upsampling n -> size (``mode``), then Gaussian blur" along one axis.

    Both steps are linear and separable, so ``anomaly_maps`` is ``A_h @ S @ A_w^T``: two small
    matrix products instead of a 33-tap convolution over every output pixel (same result up to
    float rounding).  Built by pushing the unit vectors through the reference ops; cached.
    """
    key = (n, size, float(sigma), str(device), dtype, mode)
    op = _OPERATORS.get(key)
    if op is None:
        eye = torch.eye(n, dtype=torch.float64).view(n, 1, n, 1)
        up = _upsample(eye, (size, 1), mode).squeeze(1)
        # blurring the size-1 axis with symmetric padding is the identity (the kernel sums to 1)
        op = gaussian_blur(up, sigma).squeeze(-1).T.contiguous()          # [size, n]
        op = op.to(device=device, dtype=dtype)
        if len(_OPERATORS) > 32:
            _OPERATORS.clear()
        _OPERATORS[key] = op
    return op


def _upsample(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest")
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def anomaly_maps_reference(patch_scores: torch.Tensor, size: tuple[int, int], sigma: float,
                           mode: str = "bilinear") -> torch.Tensor:
    """The definition: upsampling (``mode``), then the separable Gaussian blur (slow on CPU)."""
    up = _upsample(patch_scores.unsqueeze(1).float(), size, mode).squeeze(1)
    return gaussian_blur(up, sigma)


def anomaly_maps(patch_scores: torch.Tensor, size: tuple[int, int], sigma: float,
                 mode: str = "bilinear") -> torch.Tensor:
    """[B, h, w] patch scores -> [B, H, W] smoothed pixel maps at the network input size
    (:func:`anomaly_maps_reference` computed as ``A_h @ S @ A_w^T``, see :func:`map_operator`)."""
    s = patch_scores.float()
    h, w = s.shape[-2:]
    a_h = map_operator(h, size[0], sigma, s.device, mode=mode)
    a_w = map_operator(w, size[1], sigma, s.device, mode=mode)
    return apply_map_operators(s, a_h, a_w)


def apply_map_operators(patch_scores: torch.Tensor, a_h: torch.Tensor, a_w: torch.Tensor) -> torch.Tensor:
    """[B, h, w] patch scores -> [B, H, W] maps ``A_h @ S @ A_w^T`` with the operators of
    :func:`map_operator` (an exported graph holds them as constants and runs exactly this)."""
    return torch.matmul(torch.matmul(a_h, patch_scores.float()), a_w.T)
