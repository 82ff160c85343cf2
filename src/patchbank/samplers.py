"""Memory-bank samplers: one small class per strategy behind ``run(features) -> indices``.

* :class:`UniformSampler` - LMF-Core's RP-Coreset subsampling (Sec. 4.4): keep a fraction r of
  the patches uniformly at random.  It does not look at the features, so the detector draws the
  indices up front (:meth:`UniformSampler.indices`) and keeps only those patches while streaming.
  Any sampler with an ``indices(n)`` method is streamed this way; the others see all rows.
* :class:`NoSampler`      - keep everything.
* :class:`patchbank.greedy.GreedySampler` - PatchCore's greedy k-center coreset.

Every sampler keeps ``coreset_size(n, ratio)`` rows.
"""
from __future__ import annotations

import torch


def coreset_size(n: int, ratio: float) -> int:
    """Rows kept from ``n``: round(ratio * n), at least 1 and at most n (every sampler's rule)."""
    if not (0.0 < ratio <= 1.0):
        raise ValueError(f"ratio: expected 0 < ratio <= 1, got {ratio!r}")
    if n < 1:
        raise ValueError(f"n: expected at least one row, got {n}")
    return min(n, max(1, int(round(ratio * n))))


class NoSampler:
    def indices(self, n: int) -> torch.Tensor:
        return torch.arange(n)

    def run(self, features: torch.Tensor) -> torch.Tensor:
        return self.indices(features.shape[0])


class UniformSampler:
    """Uniform subsampling without replacement at ratio r, seeded (RP-Coreset step 2)."""

    def __init__(self, ratio: float, seed: int = 0):
        self.ratio = ratio
        self.seed = seed

    def indices(self, n: int) -> torch.Tensor:
        """Sorted indices of the rows kept among ``n`` (independent of their values)."""
        gen = torch.Generator().manual_seed(int(self.seed))
        return torch.sort(torch.randperm(n, generator=gen)[:coreset_size(n, self.ratio)]).values

    def run(self, features: torch.Tensor) -> torch.Tensor:
        return self.indices(features.shape[0])


def make_sampler(config, progress: bool = False):
    if config.sampler == "uniform":
        return UniformSampler(config.coreset_ratio, config.seed)
    if config.sampler == "none":
        return NoSampler()
    from patchbank.greedy import GreedySampler

    return GreedySampler(config.coreset_ratio, proxy_dim=config.greedy_proxy_dim,
                         seed=config.seed, progress=progress)
