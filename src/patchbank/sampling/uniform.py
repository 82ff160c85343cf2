"""Samplers that do not look at the features: uniform subsampling (LMF-Core's RP-Coreset,
Sec. 4.4: keep a fraction r of the patches uniformly at random) and keep-everything."""
from __future__ import annotations

import torch

from patchbank.sampling.base import StreamingSampler, coreset_size, register_sampler


class NoSampler(StreamingSampler):
    """Keep every row."""

    def indices(self, n: int) -> torch.Tensor:
        return torch.arange(n)


class UniformSampler(StreamingSampler):
    """Uniform subsampling without replacement at ratio r, seeded (RP-Coreset step 2)."""

    def __init__(self, ratio: float, seed: int = 0):
        self.ratio = ratio
        self.seed = seed

    def indices(self, n: int) -> torch.Tensor:
        """Sorted indices of the rows kept among ``n`` (independent of their values)."""
        gen = torch.Generator().manual_seed(int(self.seed))
        return torch.sort(torch.randperm(n, generator=gen)[:coreset_size(n, self.ratio)]).values


register_sampler("uniform", lambda config, progress=False: UniformSampler(config.coreset_ratio, config.seed))
register_sampler("none", lambda config, progress=False: NoSampler())
