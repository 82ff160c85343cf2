"""What a fit holds in memory, at a small scale: a streaming sampler keeps only its ~r share of
the raw patch rows (never all of them), the raw chunks are freed as they are embedded, and the
search index is the only copy of the bank (the rest is measured by benchmarks/bench_fit_memory.py)."""
import pytest
import torch

from conftest import FAST
from patchbank.detector import Detector
from patchbank.pipeline import bank as bank_mod
from patchbank.sampling import coreset_size


@pytest.fixture
def raw_rows_spy(monkeypatch):
    made = []

    class Spy(bank_mod.RawRows):
        def __init__(self, rows, widths, like):
            super().__init__(rows, widths, like)
            made.append(self)

    monkeypatch.setattr(bank_mod, "RawRows", Spy)
    monkeypatch.setattr(bank_mod, "RAW_CHUNK_ROWS", 50)     # several chunks at this scale
    return made


def _held_bytes(raw):
    return sum(t.numel() * t.element_size() for chunk in raw.chunks for t in chunk)


@pytest.mark.parametrize("ratio", [0.05, 0.25])
def test_uniform_fit_holds_only_its_share_of_raw_rows(synthetic_root, raw_rows_spy, ratio):
    det = Detector.from_preset("lmf-core", progress=False, **{**FAST, "coreset_ratio": ratio})
    det.fit(synthetic_root / "train" / "good")
    (raw,) = raw_rows_spy
    total = 16 * det.grid_[0] * det.grid_[1]
    assert raw.count == coreset_size(total, ratio) == det.bank_.shape[0]
    assert raw.source.numel() == raw.count                  # buffers sized to the kept rows only
    assert raw.chunks == []                                 # every raw chunk freed once embedded
    assert det.scorer_.search.all_rows().shape[0] == raw.count


def test_greedy_fit_must_hold_every_row(synthetic_root, raw_rows_spy):
    det = Detector.from_preset("patchcore", progress=False, **FAST)
    det.fit(synthetic_root / "train" / "good")
    (raw,) = raw_rows_spy
    assert raw.count == 16 * det.grid_[0] * det.grid_[1]
    assert det.bank_.shape[0] == coreset_size(raw.count, 0.10)


def test_raw_buffers_are_the_kept_rows_bytes(synthetic_root):
    layers = [torch.zeros(10, 3), torch.zeros(10, 5)]
    raw = bank_mod.RawRows(123, [3, 5], layers[0])
    assert _held_bytes(raw) == 123 * (3 + 5) * 4
