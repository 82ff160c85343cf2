"""Routing an image to one product category (StructCore Sec. 3.4, Eqs. 3-4).

Every category keeps a routing bank R_c of K prototypes (default 64) of L2-normalised patch
embeddings.  For an image with normalised patch embeddings z_1..z_P:

    d_{p,c} = min_k || z_p - pi_{c,k} ||^2,   route(c) = (1/P) sum_p d_{p,c}   (Eq. 3)
    c_hat   = argmin_c route(c)                                              (Eq. 4)

The routing embedding must not depend on any category's learned state, so it is built from the
raw backbone layers: each layer's patch rows are L2-normalised, concatenated, and the result
L2-normalised again (StructCore Eq. 1's per-layer normalisation, then Eq. 3's normalisation).
Prototypes are spherical k-means centres (Lloyd iterations on the unit sphere, k-means++ seeding,
fixed seed) of a uniform sample of the category's training patches, so they are unit vectors too.
"""
from __future__ import annotations

import torch

from patchbank.errors import PatchbankError
from patchbank.linalg import sq_dists, sq_norms


def routing_embedding(layers: list[torch.Tensor]) -> torch.Tensor:
    """Per-layer patch rows [n, C_l] -> L2-normalised routing embeddings [n, sum C_l]."""
    parts = [torch.nn.functional.normalize(layer.float(), dim=1) for layer in layers]
    return torch.nn.functional.normalize(torch.cat(parts, dim=1), dim=1)


def _sq_dists(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances [n, m] as a matrix product (non-negative)."""
    return sq_dists(x, c, sq_norms(c), sq_norms(x)).clamp_min_(0.0)


def spherical_kmeans(x: torch.Tensor, k: int, iters: int = 25, seed: int = 0) -> torch.Tensor:
    """Unit-norm rows [n, d] -> k unit-norm centres [min(k, n), d].

    k-means++ seeding (each next seed drawn with probability proportional to the squared
    distance to the nearest chosen seed), then Lloyd iterations whose centres are the normalised
    means of their members; an emptied cluster keeps its previous centre.  Deterministic for a
    given seed.
    """
    n = x.shape[0]
    if n == 0:
        raise PatchbankError("cannot build routing prototypes from zero patches")
    k = min(int(k), n)
    g = torch.Generator().manual_seed(seed)
    x = x.float().cpu()
    chosen = [int(torch.randint(n, (1,), generator=g))]
    best = _sq_dists(x, x[chosen[0]:chosen[0] + 1])[:, 0]
    for _ in range(1, k):
        total = float(best.sum())
        if total <= 0:  # all remaining points coincide with a seed
            rest = [i for i in range(n) if i not in set(chosen)]
            chosen.extend(rest[:k - len(chosen)])
            break
        nxt = int(torch.multinomial(best / total, 1, generator=g))
        chosen.append(nxt)
        best = torch.minimum(best, _sq_dists(x, x[nxt:nxt + 1])[:, 0])
    centres = x[chosen].clone()
    for _ in range(iters):
        assign = _sq_dists(x, centres).argmin(1)
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=centres.shape[0])
        filled = counts > 0
        new = centres.clone()
        new[filled] = torch.nn.functional.normalize(sums[filled], dim=1)
        if torch.equal(new, centres):
            break
        centres = new
    return centres


class Router:
    """Routing banks of several categories; ``route`` implements Eqs. 3-4.

    ``names_`` lists the categories in insertion order, ``prototypes_[name]`` is R_c [K, D].
    """

    def __init__(self, n_prototypes: int = 64, seed: int = 0):
        if n_prototypes < 1:
            raise PatchbankError(f"routing needs at least 1 prototype per category, got {n_prototypes}")
        self.n_prototypes = int(n_prototypes)
        self.seed = seed
        self.names_: list[str] = []
        self.prototypes_: dict[str, torch.Tensor] = {}

    def add(self, name: str, embeddings: torch.Tensor) -> "Router":
        """Build R_c for one category from its [n, D] normalised patch embeddings."""
        if name in self.prototypes_:
            raise PatchbankError(f"category {name!r} already has a routing bank")
        if self.names_ and embeddings.shape[1] != self.dim:
            raise PatchbankError(f"routing embeddings of {name!r} have {embeddings.shape[1]} dims, "
                                 f"the model's have {self.dim}")
        self.set(name, spherical_kmeans(embeddings, self.n_prototypes, seed=self.seed))
        return self

    def set(self, name: str, prototypes: torch.Tensor) -> None:
        """Install a ready routing bank (e.g. loaded from a model file)."""
        if name not in self.prototypes_:
            self.names_.append(name)
        self.prototypes_[name] = prototypes.float().cpu()

    @property
    def dim(self) -> int:
        """Width of the routing embeddings (of the prototypes)."""
        return next(iter(self.prototypes_.values())).shape[1]

    def scores(self, z: torch.Tensor) -> torch.Tensor:
        """[B, P, D] normalised patch embeddings -> [B, C] route(c) (Eq. 3), columns in names_."""
        if not self.names_:
            raise PatchbankError("the router has no categories")
        b, p, d = z.shape
        flat = z.reshape(b * p, d).float().cpu()
        allp = torch.cat([self.prototypes_[n] for n in self.names_])
        dist = _sq_dists(flat, allp)                                  # [B*P, C*K]
        sizes = [self.prototypes_[n].shape[0] for n in self.names_]
        per_cat = torch.stack([part.min(1).values for part in dist.split(sizes, dim=1)], dim=1)
        return per_cat.view(b, p, -1).mean(1)

    def route(self, z: torch.Tensor) -> list[str]:
        """[B, P, D] -> the chosen category of each image (Eq. 4; ties: first in names_)."""
        return [self.names_[i] for i in self.scores(z).argmin(1).tolist()]
