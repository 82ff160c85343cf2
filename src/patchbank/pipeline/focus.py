"""The focus check: an image blurrier than every training image is flagged.

A slightly out-of-focus frame hides a defect without raising the anomaly map much: neither the
pooled score nor the map's mean (the whole-image check, :mod:`patchbank.pipeline.calibration`)
need rise above their thresholds (docs/reliability.md: KSDD's blur of radius 3 passed both).
The input shows it directly.  The statistic is the classic focus measure of Pech-Pacheco et al.
(2000), the variance of the Laplacian of the grey image, taken as

    blurriness(x) = -log(var(L * g) + EPS),    g = the mean of x's three channels,
    L = [[0, 1, 0], [1, -4, 1], [0, 1, 0]] on the interior (no padding),

on the network input ``x`` (normalised; with ``crop_at="features"`` the whole resize, margins
included), so that larger means blurrier, as larger means more anomalous for the other
statistics.  It is a function of the image alone: no bank, no leave-one-image-out pass.

The threshold (``Config.focus_check``) is the largest blurriness of the N training images; an
image is flagged when not ``blurriness <= threshold`` (a NaN is flagged).  That is the
statistic's split-conformal threshold at rank N: a new normal image, exchangeable with the
training images, is blurrier than all of them with probability at most 1 / (N + 1), which adds
to the bound of the score and map-mean rules.

The arithmetic is element-wise slices and float64 sums, so an image's value does not depend on
the batch it came in or on a convolution algorithm; an exported graph computes the same.  The
channel mean is summed channel by channel into one float64 plane and the Laplacian built in
place in one buffer: bit for bit ``x.double().mean(1)`` and the plain expression, without
their float64 copy of all three channels and four temporaries (docs/performance.md, "The focus
check's statistic").
"""
from __future__ import annotations

import torch

from patchbank.pipeline.conformal import conformal_threshold

EPS = 1e-12   # keeps a flat image's -log finite (a constant frame is maximally blurred: -log(EPS))
#: The focus check's target rate: the conformal rank at 0 is N of N (the largest value), whose
#: rate on a new normal image is ``conformal_rate(N, FOCUS_FPR)`` = 1 / (N + 1).
FOCUS_FPR = 0.0


def blurriness(x: torch.Tensor) -> torch.Tensor:
    """Network inputs [B, 3, H, W] (H, W >= 3) -> blurriness [B], float64 (module docstring)."""
    g = x[:, 0].double()                                                # [B, H, W]
    g += x[:, 1]
    g += x[:, 2]
    g /= 3.0
    lap = g[:, :-2, 1:-1] + g[:, 2:, 1:-1]
    lap += g[:, 1:-1, :-2]
    lap += g[:, 1:-1, 2:]
    lap -= 4.0 * g[:, 1:-1, 1:-1]
    lap -= lap.mean(dim=(1, 2), keepdim=True)
    return -torch.log(lap.pow_(2).mean(dim=(1, 2)) + EPS)


def focus_threshold(values) -> float:
    """The split-conformal threshold of the training images' blurriness values at
    :data:`FOCUS_FPR`: rank N of N, their largest."""
    return conformal_threshold(values, FOCUS_FPR)
