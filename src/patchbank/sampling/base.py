"""The Sampler protocol, its registry, and the coreset size every sampler keeps.

A sampler chooses which patch rows become the memory bank: ``run(features [N, D]) -> row ids``.
A :class:`StreamingSampler` chooses without looking at the rows (``indices(n)``), so a fit can
draw its ids before the images are read and keep only those rows while streaming; any other
sampler sees every row.  Implementations register a factory under their ``Config.sampler`` name
with :func:`register_sampler`; adding one is one module (plus its name in
``patchbank.config.SAMPLERS``).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable

import torch

from patchbank.errors import PatchbankError


def coreset_size(n: int, ratio: float) -> int:
    """Rows kept from ``n``: round(ratio * n), at least 1 and at most n (every sampler's rule)."""
    if not (0.0 < ratio <= 1.0):
        raise ValueError(f"ratio: expected 0 < ratio <= 1, got {ratio!r}")
    if n < 1:
        raise ValueError(f"n: expected at least one row, got {n}")
    return min(n, max(1, int(round(ratio * n))))


class Sampler(ABC):
    """Chooses the bank rows among ``N`` feature rows."""

    @abstractmethod
    def run(self, features: torch.Tensor) -> torch.Tensor:
        """Row ids (a LongTensor) of ``features`` [N, D] kept for the bank."""


class StreamingSampler(Sampler):
    """A sampler whose choice does not depend on the rows' values: :meth:`indices` can be drawn
    before the rows exist, so a fit keeps only the chosen rows while it streams the images."""

    @abstractmethod
    def indices(self, n: int) -> torch.Tensor:
        """Sorted ids of the rows kept among ``n``."""

    def run(self, features: torch.Tensor) -> torch.Tensor:
        return self.indices(features.shape[0])


SamplerFactory = Callable[..., Sampler]   # (config, progress=bool) -> Sampler
SAMPLERS: dict[str, SamplerFactory] = {}


def register_sampler(name: str, factory: SamplerFactory) -> None:
    """Make ``name`` (a ``Config.sampler`` value) build its sampler with
    ``factory(config, progress=...)``."""
    SAMPLERS[name] = factory


def make_sampler(config, progress: bool = False) -> Sampler:
    """The registered sampler ``config.sampler``, set up from ``config``."""
    try:
        factory = SAMPLERS[config.sampler]
    except KeyError:
        raise PatchbankError(f"unknown sampler {config.sampler!r}; choose one of "
                             f"{', '.join(sorted(SAMPLERS))}") from None
    return factory(config, progress=progress)
