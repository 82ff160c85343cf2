"""The bank lives only in the search index; large streamed banks are built chunk by chunk.

Checks: FAISS flat / IVF read their rows back bit-exactly; an IVF index built from chunks equals
one built from the whole bank; the chunked fit (raw rows in small chunks, embedded and added to
the index one at a time) gives the same bank and the same scores as the one-piece fit.
"""
import numpy as np
import pytest
import torch

from conftest import FAST, split_items

faiss = pytest.importorskip("faiss")

from patchbank.pipeline import bank as bank_mod  # noqa: E402
from patchbank.search import faiss as search_mod  # noqa: E402
from patchbank.detector import Detector  # noqa: E402
from patchbank.pipeline.bank import RawRows  # noqa: E402
from patchbank.search import ExactSearch, FaissSearch, ivf_nlist, ivf_train_ids  # noqa: E402


def _bank(n=3000, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g)


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_faiss_index_is_the_only_copy_and_reads_rows_back_exactly(kind):
    bank = _bank()
    s = FaissSearch(bank, kind, nprobe=4)
    assert s.bank is None and s.shape == (3000, 16)
    assert torch.equal(s.all_rows(), bank)
    ids = torch.tensor([[5, 2999], [0, 1234]])
    assert torch.equal(s.rows(ids), bank[ids])
    sub = s.subset(torch.arange(3000) % 2 == 0)
    assert sub.shape == (3000, 16) and len(sub) == 1500
    assert torch.equal(sub.rows(ids), bank[ids])          # ids are whole-bank ids


def test_ivfpq_keeps_float_rows_for_its_rerank():
    bank = _bank()
    s = FaissSearch(bank, "ivfpq", nprobe=4)
    assert s.bank is bank and torch.equal(s.rows(torch.tensor([7])), bank[[7]])


def test_exact_search_rows():
    bank = _bank(50, 4)
    s = ExactSearch(bank)
    assert s.shape == (50, 4) and torch.equal(s.rows(torch.tensor([3, 49])), bank[[3, 49]])


def test_ivf_from_chunks_equals_ivf_from_whole_bank():
    bank = _bank()
    q = _bank(200, 16, seed=1)
    whole = FaissSearch(bank, "ivf", nprobe=4, seed=3)
    ids = ivf_train_ids(3000, ivf_nlist(3000), seed=3)
    train = bank if ids is None else bank[ids]
    chunks = iter(bank.split(700))
    built = FaissSearch.from_chunks(chunks, 3000, 16, train=train, nprobe=4, seed=3)
    d1, i1 = whole.search(q, 3)
    d2, i2 = built.search(q, 3)
    assert torch.equal(i1, i2) and torch.equal(d1, d2)
    assert torch.equal(built.all_rows(), bank)
    with pytest.raises(Exception, match="2999 bank rows added, expected 3000"):
        FaissSearch.from_chunks(iter([bank[:2999]]), 3000, 16, train=bank)


def test_ivf_train_ids_sample_large_banks_only():
    per = search_mod.IVF_TRAIN_PER_LIST
    assert ivf_train_ids(per * 10, 10, seed=0) is None              # small bank: every row
    ids = ivf_train_ids(per * 10 + 500, 10, seed=0)
    assert ids.numel() == per * 10 and bool((ids[1:] > ids[:-1]).all())   # sorted, distinct
    assert torch.equal(ids, ivf_train_ids(per * 10 + 500, 10, seed=0))     # seeded
    assert not torch.equal(ids, ivf_train_ids(per * 10 + 500, 10, seed=1))


def test_write_rows_across_chunk_boundaries(monkeypatch):
    monkeypatch.setattr(bank_mod, "RAW_CHUNK_ROWS", 7)
    layers = [torch.arange(40.0).view(20, 2), torch.arange(60.0).view(20, 3)]
    raw = RawRows(20, [2, 3], layers[0])
    chunks = raw.chunks
    assert [c[0].shape[0] for c in chunks] == [7, 7, 6]
    local = torch.arange(20).flip(0)
    raw.append(layers, local[:9], first_image=3, n_patches=4)     # spans chunks 0-1
    raw.append(layers, local[9:], first_image=3, n_patches=4)     # spans chunks 1-2
    assert raw.count == 20
    for li, layer in enumerate(layers):
        got = torch.cat([c[li] for c in chunks])
        assert torch.equal(got, layer[local])
    assert torch.equal(raw.source, local // 4 + 3)           # source image of each kept row


def _fit(root, monkeypatch, chunked: bool, **over):
    calls = []
    real = bank_mod.make_search_from_chunks

    def spy(*args, **kw):
        calls.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(bank_mod, "make_search_from_chunks", spy)
    monkeypatch.setattr(bank_mod, "RAW_CHUNK_ROWS", 37)
    monkeypatch.setattr(search_mod, "IVF_TRAIN_PER_LIST", 8 if chunked else 10 ** 9)
    det = Detector.from_preset("lmf-core", progress=False, **{**FAST, **over})
    det.fit(root / "train" / "good")
    assert len(calls) == (1 if chunked else 0)
    return det


def test_chunked_streamed_fit_equals_one_piece_fit(synthetic_root, monkeypatch):
    # IVF probing every list is exact, so the two fits must agree up to float rounding
    over = dict(coreset_ratio=0.5, ivf_min_bank=50, ivf_probe=10 ** 6)
    a = _fit(synthetic_root, monkeypatch, chunked=True, **over)
    b = _fit(synthetic_root, monkeypatch, chunked=False, **over)
    assert isinstance(a.scorer_.search, FaissSearch) and a.scorer_.search.kind == "ivf" and a.scorer_.search.bank is None
    assert a.bank_.shape == b.bank_.shape and a.bank_.shape[0] > 37 * 3     # several raw chunks
    torch.testing.assert_close(a.bank_, b.bank_, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(a.calibration_.base_scores_, b.calibration_.base_scores_, rtol=1e-4)
    items, _ = split_items(synthetic_root)
    pa, pb = a.predict(items), b.predict(items)
    np.testing.assert_allclose([p.score for p in pa], [p.score for p in pb], rtol=1e-4)
    assert [p.is_anomalous for p in pa] == [p.is_anomalous for p in pb]


def test_chunked_fit_and_its_reloaded_model_probe_the_same_lists(synthetic_root, monkeypatch, tmp_path):
    # one probed list of many: results depend on the exact IVF lists, which the reloaded model
    # rebuilds from the saved bank with the same training sample (ivf_train_ids)
    over = dict(coreset_ratio=0.5, ivf_min_bank=50, ivf_probe=1)
    a = _fit(synthetic_root, monkeypatch, chunked=True, **over)
    a.save(tmp_path / "m.patchbank")
    b = Detector.load(tmp_path / "m.patchbank", progress=False)
    assert b.scorer_.search.bank is None and torch.equal(a.bank_, b.bank_)
    items, _ = split_items(synthetic_root)
    pa, pb = a.predict(items), b.predict(items)
    assert [p.score for p in pa] == [p.score for p in pb]
    for x, y in zip(pa, pb):
        np.testing.assert_array_equal(x.anomaly_map, y.anomaly_map)
