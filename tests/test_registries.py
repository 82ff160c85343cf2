"""Plug-in points: every registry matches the Config choices it serves, adding an entry is one
registration, and an unknown name is refused in one line."""
import pytest
import torch

from patchbank import config as cfg_mod
from patchbank.config import Config
from patchbank.errors import PatchbankError
from patchbank.pipeline.fusion import FUSIONS, EqualFusion, make_fusion
from patchbank.pipeline.scoring import POOLINGS
from patchbank.sampling import SAMPLERS, Sampler, StreamingSampler, make_sampler
from patchbank.search import SEARCHES, ExactSearch, Search, make_search


def test_registries_cover_the_config_choices():
    assert set(FUSIONS) == set(cfg_mod.FUSIONS)
    assert set(SAMPLERS) == set(cfg_mod.SAMPLERS)
    assert set(SEARCHES) == set(cfg_mod.SEARCHES) - {"auto"}
    assert set(POOLINGS) == set(cfg_mod.BASE_SCORES)


def test_samplers_declare_streaming_by_type():
    c = Config()
    assert isinstance(make_sampler(c.replace(sampler="uniform")), StreamingSampler)
    assert isinstance(make_sampler(c.replace(sampler="none")), StreamingSampler)
    greedy = make_sampler(c.replace(sampler="greedy"))
    assert isinstance(greedy, Sampler) and not isinstance(greedy, StreamingSampler)


def test_adding_a_sampler_is_one_registration(monkeypatch):
    class EveryOther(StreamingSampler):
        def indices(self, n):
            return torch.arange(0, n, 2)

    monkeypatch.setitem(SAMPLERS, "every-other", lambda config, progress=False: EveryOther())
    c = Config().replace(sampler="uniform")
    object.__setattr__(c, "sampler", "every-other")      # a config choice added with it
    s = make_sampler(c)
    assert torch.equal(s.run(torch.zeros(5, 2)), torch.tensor([0, 2, 4]))


def test_unknown_names_are_one_line_errors():
    c = Config()
    for field, registry_call in (("sampler", make_sampler), ("fusion", make_fusion)):
        bad = Config()
        object.__setattr__(bad, field, "nope")
        with pytest.raises(PatchbankError, match=f"unknown {field} 'nope'"):
            registry_call(bad)
    with pytest.raises(PatchbankError, match="unknown search 'nope'"):
        make_search(torch.zeros(3, 2), c, "nope")


def test_make_search_builds_the_registered_kind():
    s = make_search(torch.randn(10, 4), Config(), "exact")
    assert isinstance(s, ExactSearch) and isinstance(s, Search) and len(s) == 10


def test_register_fusion(monkeypatch):
    monkeypatch.setitem(FUSIONS, "first-layer", lambda config: type(
        "FirstLayer", (EqualFusion,), {"transform": lambda self, layers: layers[0]})())
    c = Config()
    object.__setattr__(c, "fusion", "first-layer")
    f = make_fusion(c).fit(None)
    assert torch.equal(f.transform([torch.ones(2, 3), torch.zeros(2, 5)]), torch.ones(2, 3))


def test_auto_search_without_faiss_warns(monkeypatch):
    import builtins

    from patchbank.search import resolve_search

    real_import = builtins.__import__

    def no_faiss(name, *args, **kwargs):
        if name == "faiss":
            raise ImportError("no faiss here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_faiss)
    cfg = Config()
    with pytest.warns(UserWarning, match="faiss is not installed: the bank of 50,000 entries"):
        assert resolve_search(cfg, 50_000) == "exact"
    assert resolve_search(cfg, 100) == "exact"          # small banks: exact is the choice anyway


def test_runtime_names_match_the_export_runtimes_registry():
    pytest.importorskip("onnxruntime")
    from patchbank.export.runtimes import RUNTIMES

    assert set(cfg_mod.RUNTIMES) == {"torch"} | set(RUNTIMES)
