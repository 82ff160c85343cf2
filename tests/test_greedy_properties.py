"""Property tests: the pruned greedy sampler selects exactly what the brute force selects.

``greedy_fast`` (any knob setting) and ``GreedySampler`` must return ``greedy_reference``'s
index sequence, never raise on valid input, and never select a row twice.  The inputs are
built to hit the sampler's edge cases: duplicates, all-identical rows, exact ties (integer
grids, equidistant points), constant blocks, ``n == N``, float16-representable values, and
power-of-two scales from the one where every squared difference underflows to 0 up to the
largest magnitudes accepted (``greedy_fast``: row norms up to ``2**61`` ~ 2.3e18, beyond which
squared distances can overflow float32; ``GreedySampler``: values up to 1e15; both raise
ValueError beyond).  A second strategy builds
pools of over 1024 rows whose batches run past 64 selections, so ``_batch`` compacts its pool
several times, including at the very step where the batch ends.

The examples are derandomized (the same ones on every run) and sized to keep the file fast.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from patchbank.sampling.greedy import (
    GreedySampler,
    NaiveGreedySampler,
    coreset_size,
    greedy_fast,
    greedy_reference,
)


def _settings(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# Power-of-two scales keep integer grids exact in float32 (ties stay ties).  With grid values
# |k| <= 7:
#   2**-100  every squared difference underflows to 0: all distances are 0 (index order)
#   2**-75   squared differences are float32 subnormals (relative rounding bounds fail)
#   2**-62   squares straddle the subnormal / normal boundary (2**-126)
#   1, 2**20 ordinary ranges
#   2**47    |x| up to 7 * 2**47 ~ 9.9e14, just under GreedySampler's limit of 1e15
#   2**56    row norms up to 7 * 2**56 * sqrt(12) ~ 1.7e18, near greedy_fast's limit of 2**61:
#            squared distances up to ~1e37, finite in float32
SCALES = [2.0**-100, 2.0**-75, 2.0**-62, 1.0, 2.0**20, 2.0**47, 2.0**56]

# greedy_fast's knobs; none of them may change the selection.
KNOBS = st.fixed_dictionaries({
    "pool": st.sampled_from([None, 1, 2, 5, 16, 10**6]),
    "freeze": st.sampled_from([0.9, None, 0.5, 0.99]),
    "low_dim": st.sampled_from([32, 1, 3]),
    "cells": st.sampled_from([1 << 18, 64]),
    "workers": st.sampled_from([1, 2]),
})


def _grid(draw, shape: tuple[int, int], scale: float) -> torch.Tensor:
    lim = draw(st.sampled_from([1, 3, 7]))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-lim, lim + 1, shape, generator=g).float() * scale


@st.composite
def small_inputs(draw):
    """``(x, n, start)`` with N <= 120 rows: grids, float16 values, identical rows, blocks."""
    N = draw(st.integers(1, 120))
    D = draw(st.integers(1, 12))
    kind = draw(st.sampled_from(["grid", "float16", "identical", "blocks", "gauss"]))
    scale = draw(st.sampled_from(SCALES))
    if kind == "grid":
        x = _grid(draw, (N, D), scale)
    elif kind == "float16":  # every finite float16, subnormals and +-65504 included
        vals = draw(arrays(np.float16, (N, D), elements=st.floats(width=16, allow_nan=False, allow_infinity=False)))
        x = torch.from_numpy(vals.astype(np.float32))
    elif kind == "identical":
        x = _grid(draw, (1, D), scale).expand(N, D)
    elif kind == "blocks":  # m distinct rows, each repeated in a run of consecutive rows
        m = draw(st.integers(1, min(N, 8)))
        rows = _grid(draw, (m, D), scale)
        x = rows[torch.arange(N) * m // N]
    else:
        seed = draw(st.integers(0, 2**31 - 1))
        x = torch.randn(N, D, generator=torch.Generator().manual_seed(seed)).clamp(-7, 7) * scale
    if scale <= 2.0**20 and kind != "float16" and draw(st.booleans()):  # far from the origin
        x = x + 1000.0 * scale
    n = draw(st.one_of(st.just(N), st.integers(1, N)))
    start = draw(st.integers(0, N - 1))
    return x.float().contiguous(), n, start


@st.composite
def compaction_inputs(draw):
    """``(x, n, start, knobs)``: over 1024 rows in one pool and batches past 64 selections.

    K centres of a cross-polytope (``+-a e_i``, all at distance ``a`` from the start row, the
    origin; 2 * K = 64 or 128 makes a batch end exactly at a compaction step), each repeated
    to over 1024 rows, optionally jittered (distinct rows, the batch ends when every copy is
    near a centre) and shuffled.  The pool is large enough to hold every tied row.
    """
    half = draw(st.sampled_from([32, 64, 31, 33, 20]))
    D = half + draw(st.integers(0, 3))
    copies = draw(st.integers(1025 // (2 * half) + 1, 1600 // (2 * half)))
    a = draw(st.sampled_from([3.0, 0.5, 2.0**-70]))
    pts = torch.zeros(2 * half + 1, D)
    pts[1 : half + 1, :half] = a * torch.eye(half)
    pts[half + 1 :, :half] = -a * torch.eye(half)
    x = pts.repeat(copies, 1)
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    jitter = draw(st.sampled_from([0.0, 1e-3, 0.05]))
    if jitter:
        x[1:] += jitter * a * torch.randn(x.shape[0] - 1, D, generator=g)
    if draw(st.booleans()):  # shuffle every row but the start (row 0 stays the origin)
        x[1:] = x[1:][torch.randperm(x.shape[0] - 1, generator=g)]
    N = x.shape[0]
    n = draw(st.one_of(st.just(N), st.integers(129, min(N, 700))))
    knobs = {"pool": draw(st.sampled_from([None, 1025, 1500, 10**6])),
             "freeze": draw(st.sampled_from([0.9, None]))}
    return x.contiguous(), n, 0, knobs


def _check(x: torch.Tensor, n: int, start: int, **knobs) -> None:
    ref = greedy_reference(x, n, start)
    got = greedy_fast(x, n, start, **knobs)
    assert torch.equal(got, ref)
    assert got.dtype == torch.long and len(set(got.tolist())) == n


@_settings(300)
@given(inp=small_inputs(), knobs=KNOBS)
def test_fast_equals_reference(inp, knobs):
    x, n, start = inp
    _check(x, n, start, **knobs)


@_settings(25)
@given(inp=compaction_inputs())
def test_fast_equals_reference_through_pool_compaction(inp):
    x, n, start, knobs = inp
    _check(x, n, start, **knobs)


@_settings(60)
@given(inp=small_inputs(), ratio=st.floats(1e-3, 1.0), proxy_dim=st.sampled_from([None, 1, 4]),
       seed=st.integers(0, 1000))
def test_sampler_equals_naive_sampler(inp, ratio, proxy_dim, seed):
    # The public samplers: projection, seeded start row and coreset_size (which caps the count
    # at N, so asking for more rows than exist returns all of them).
    x, _, _ = inp
    assume(float(x.abs().max()) <= 1e15)  # GreedySampler's input limit
    got = GreedySampler(ratio, proxy_dim=proxy_dim, seed=seed).run(x)
    assert torch.equal(got, NaiveGreedySampler(ratio, proxy_dim=proxy_dim, seed=seed).run(x))
    assert got.numel() == coreset_size(x.shape[0], ratio) <= x.shape[0]


@_settings(20)
@given(N=st.integers(1, 20), extra=st.integers(1, 5))
def test_more_rows_requested_than_exist(N, extra):
    # n > N is an argument error in both, never a partial or repeated selection.
    x = torch.randn(N, 3)
    with pytest.raises(ValueError, match="n: expected"):
        greedy_fast(x, N + extra, 0)
    with pytest.raises(ValueError, match="n: expected"):
        greedy_reference(x, N + extra, 0)
    assert torch.equal(greedy_fast(x, N, 0), greedy_reference(x, N, 0))
