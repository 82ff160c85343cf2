"""Tests that kill surviving mutants of patchbank.pipeline.scoring (docs/testing.md).

Oracles are hand computations and numpy, never the module's own output."""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from patchbank.pipeline.scoring import POOLINGS, topk_mean
from patchbank.search import ExactSearch


def test_topk_mean_averages_the_top_ceil_ratio_p_scores():
    scores = torch.tensor([[3.0, 9.0, 1.0, 7.0, 5.0, 2.0, 8.0, 4.0, 6.0, 0.0],
                           [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 11.0]])
    # P = 10: ratio 0.25 -> k = ceil(2.5) = 3: (9 + 8 + 7) / 3 = 8 and (11 + 1 + 1) / 3
    out = topk_mean(scores, 0.25)
    assert out.tolist() == pytest.approx([8.0, 13.0 / 3.0])
    # ratio * P exactly an integer: 0.3 * 10 = 3 (not 4, whatever the float rounding)
    assert topk_mean(scores, 0.3).tolist() == pytest.approx([8.0, 13.0 / 3.0])
    # a tiny ratio still averages one score (the max), ratio 1 all of them
    assert topk_mean(scores, 0.01).tolist() == pytest.approx([9.0, 11.0])
    assert topk_mean(scores, 1.0).tolist() == pytest.approx([4.5, 2.0])


def test_topk_mean_pooling_reads_config_topk_ratio():
    scores = torch.tensor([[3.0, 9.0, 1.0, 7.0, 5.0, 2.0, 8.0, 4.0, 6.0, 0.0]])
    cfg = SimpleNamespace(topk_ratio=0.2)          # k = 2: (9 + 8) / 2
    assert POOLINGS["topk_mean"](scores, None, None, None, cfg).tolist() == pytest.approx([8.5])
    assert POOLINGS["max"](scores, None, None, None, cfg).tolist() == [9.0]


def test_reweighted_max_pooling_caps_b_at_the_bank_size():
    # A bank of 3 entries in 6 dimensions and b = 9: N_b(m*) is the whole bank (3 entries), not
    # min(b, dim) = 6 entries.
    bank = torch.zeros(3, 6)
    bank[1, 0] = 1.0
    bank[2, 0] = 3.0
    queries = torch.zeros(1, 2, 6)
    queries[0, 0, 1] = 0.5
    queries[0, 1, 1] = 2.0                        # the top patch; nearest entry: bank[0]
    search = ExactSearch(bank)
    sq, idx = search.search(queries[0], 1)
    scores = sq[:, 0].sqrt().view(1, 2)
    cfg = SimpleNamespace(reweight_neighbors=9)
    out = POOLINGS["reweighted_max"](scores, queries, idx[:, 0].view(1, 2), search, cfg)
    q = queries[0, 1].numpy().astype(np.float64)
    d = np.linalg.norm(bank.numpy().astype(np.float64) - q, axis=1)    # m* = bank[0] first
    w = 1.0 - math.exp(d[0]) / np.exp(d).sum()
    assert out.item() == pytest.approx(w * 2.0, rel=1e-6)
