"""Memory-bank samplers: the :class:`Sampler` protocol, its registry (:data:`SAMPLERS`), uniform
subsampling (LMF-Core's RP-Coreset), keep-all, and PatchCore's greedy k-center coreset."""
from patchbank.sampling.base import (SAMPLERS, Sampler, StreamingSampler, coreset_size, make_sampler,
                                     register_sampler)
from patchbank.sampling.greedy import GreedySampler, NaiveGreedySampler
from patchbank.sampling.uniform import NoSampler, UniformSampler

__all__ = ["SAMPLERS", "Sampler", "StreamingSampler", "coreset_size", "make_sampler", "register_sampler",
           "GreedySampler", "NaiveGreedySampler", "NoSampler", "UniformSampler"]
