"""Context taps (issue #14, ``Config.context_taps``): the map from the fine taps, the image score
from the top patches by map score measured again with deeper taps.

Checked: the configuration's constraints (one-line errors), the backbone's extra taps, the
pooling against a brute-force computation, the leave-one-image-out calibration against a search
of each image without its bank rows, a fitted model (the same bank rows and maps as without the
context taps, image scores equal to a brute-force recomputation), its model file (round trip,
the header's map width checked) and its exported graph.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from conftest import FAST, assert_runtime_matches_torch, cuda_copy_predicts_alike, split_items
from patchbank.backbones import create_backbone
from patchbank.config import Config
from patchbank.detector import Detector
from patchbank.errors import ConfigError, PatchbankError
from patchbank.io.model_file import load_model
from patchbank.pipeline.calibration import CalibrationRows, calibrate
from patchbank.pipeline.scoring import PatchScorer, context_pool, topk_count
from patchbank.search.exact import ExactSearch

CONTEXT = dict(FAST, context_taps=1)   # the default preset's, spelt out


@pytest.mark.parametrize("overrides, field", [
    (dict(projection_dim=64), "projection_dim"),
    (dict(image_score="reweighted_max"), "image_score"),
    (dict(image_score="hybrid", base_score="reweighted_max"), "image_score"),
    (dict(local_density=True), "local_density"),
])
def test_config_refuses_context_taps_without_what_they_need(overrides, field):
    with pytest.raises(ConfigError) as info:
        Config.preset("patchbank", context_taps=1, **overrides)
    assert info.value.field == "context_taps" and field in info.value.related
    assert "\n" not in str(info.value) and field in str(info.value)
    assert "context_taps 0" in str(info.value)     # the way out
    Config.preset("patchbank", context_taps=1, image_score="hybrid", base_score="max")   # allowed


def test_backbone_taps_the_blocks_after_the_deepest_map_tap():
    bb = create_backbone("efficientnet_lite0", "random", None, "cpu", context=1)
    plain = create_backbone("efficientnet_lite0", "random", None, "cpu")
    assert bb.layers == plain.layers + (max(plain.layers) + 1,) and bb.map_taps == len(plain.layers)
    assert bb.channels[:bb.map_taps] == plain.channels
    assert plain.map_taps == len(plain.layers)
    res = create_backbone("resnet18", "random", None, "cpu", context=1)
    assert res.layers == ("layer2", "layer3", "layer4") and res.map_taps == 2
    with pytest.raises(PatchbankError, match="context_taps <= 2") as info:
        create_backbone("efficientnet_lite0", "random", None, "cpu", context=3)
    assert "\n" not in str(info.value)
    with pytest.raises(PatchbankError, match="after its deepest tap .block 6 of 0..6.; set context_taps 0"):
        create_backbone("efficientnet_lite0", "random", (2, 6), "cpu", context=1)


@pytest.mark.parametrize("k, distance, reduce, pooling", [(1, "euclidean", "min", "topk_mean"),
                                                          (3, "squared", "mean", "topk_mean"),
                                                          (1, "euclidean", "min", "max")])
def test_context_pool_against_brute_force(k, distance, reduce, pooling):
    g = torch.Generator().manual_seed(0)
    emb, bank = torch.randn(3, 40, 6, generator=g), torch.randn(25, 6, generator=g)
    scores = torch.rand(3, 40, generator=g)
    cfg = Config.preset("patchbank", context_taps=1, k=k, distance=distance, knn_reduce=reduce,
                        topk_ratio=0.1, image_score=pooling)
    got = context_pool(scores, emb, ExactSearch(bank), cfg)
    n = topk_count(40, 0.1) if pooling == "topk_mean" else 1
    for i in range(3):
        top = torch.argsort(scores[i], descending=True)[:n]
        d2 = torch.cdist(emb[i, top].double(), bank.double()).pow(2).sort(1).values[:, :k]
        d = d2 if distance == "squared" else d2.sqrt()
        expected = (d[:, 0] if reduce == "min" else d.mean(1)).mean()
        assert float(got[i]) == pytest.approx(float(expected), rel=1e-5)


def test_calibration_scores_each_image_without_its_bank_rows():
    """Leave-one-image-out with context taps: each training image's S_base is what the scorer
    gives against both searches restricted to the other images' rows."""
    g = torch.Generator().manual_seed(1)
    n_img, grid, map_dim, dim = 5, (4, 4), 3, 7
    rows = torch.randn(n_img * 16, dim, generator=g)
    pick = torch.randperm(rows.shape[0], generator=g)[:30]
    bank, source = rows[pick], pick // 16
    cfg = Config.preset("patchbank", context_taps=1, topk_ratio=0.2, batch_size=2)
    scorer = PatchScorer(cfg, None, ExactSearch(bank[:, :map_dim].contiguous()), grid, None,
                         ExactSearch(bank))
    cal_rows = CalibrationRows(np.arange(n_img), 16)
    cal_rows.embedded = rows
    got = calibrate(scorer, cal_rows, source, np.zeros(n_img)).calibration.base_scores_
    for i in range(n_img):
        keep = source != i
        expected, _ = scorer.score(rows[i * 16:(i + 1) * 16].view(1, 16, dim),
                                   scorer.search.subset(keep), scorer.context.subset(keep))
        assert got[i] == pytest.approx(float(expected[0]), rel=1e-6)
    # the leave-out matters: scored against the whole bank, an image finds its own rows
    whole, _ = scorer.score(rows[:16].view(1, 16, dim))
    assert float(whole[0]) < got[0]


def brute_force_scores(det: Detector, items: list) -> dict[str, float]:
    """Image scores of a fitted context-taps detector recomputed in float64 on the CPU: the top
    patches by map score (nearest bank row on the map's columns), each one's distance to the
    nearest whole bank row, averaged; by image path."""
    bank = det.bank_.double().cpu()
    map_dim = det.scorer_.search.shape[1]
    out = {}
    for x, names in det.stream(items):
        layers, _ = det.extractor(x)
        emb = torch.cat(layers, 1).view(x.shape[0], -1, bank.shape[1]).double().cpu()
        for e, name in zip(emb, names):
            patch = torch.cdist(e[:, :map_dim], bank[:, :map_dim]).min(1).values
            top = torch.argsort(patch, descending=True)[:topk_count(len(patch), det.config.topk_ratio)]
            out[name] = float(torch.cdist(e[top], bank).min(1).values.mean())
    return out


@pytest.fixture(scope="module")
def pair(synthetic_root):
    train = synthetic_root / "train" / "good"
    ctx = Detector.from_preset("patchbank", progress=False, **CONTEXT).fit(train)
    plain = Detector.from_preset("patchbank", progress=False, **dict(FAST, context_taps=0)).fit(train)
    return ctx, plain


def test_fit_keeps_the_plain_bank_and_maps_and_rescores_the_top_patches(pair, synthetic_root):
    ctx, plain = pair
    map_dim = sum(ctx.backbone.channels[:ctx.backbone.map_taps])
    assert ctx.scorer_.search.shape == plain.scorer_.search.shape == (plain.bank_.shape[0], map_dim)
    assert ctx.bank_.shape == (plain.bank_.shape[0], sum(ctx.backbone.channels))
    assert torch.equal(ctx.bank_[:, :map_dim], plain.bank_)     # chosen on the map's columns
    items, _ = split_items(synthetic_root)
    got, ref = ctx.predict(items), plain.predict(items)
    for a, b in zip(got, ref):
        np.testing.assert_allclose(a.anomaly_map, b.anomaly_map, rtol=1e-5, atol=1e-5)
    assert [a.score for a in got] != pytest.approx([b.score for b in ref])
    expected = brute_force_scores(ctx, items)
    for p in got:
        assert p.score == pytest.approx(expected[p.path], rel=1e-4)


def test_map_search_reads_the_whole_rows_in_place(pair, synthetic_root, tmp_path):
    # the map's exact search is a column view of the context search's rows, not a second copy,
    # after a fit and after a load, and it finds what a search over a contiguous copy finds
    ctx, _ = pair
    ctx.save(tmp_path / "m.patchbank")
    for det in (ctx, Detector.load(tmp_path / "m.patchbank", progress=False)):
        search, context = det.scorer_.search, det.scorer_.context
        assert search.all_rows().data_ptr() == context.all_rows().data_ptr()
        assert not search.all_rows().is_contiguous()
        copy = ExactSearch(search.all_rows().contiguous())
        q = torch.randn(300, search.shape[1], generator=torch.Generator().manual_seed(1))
        (d1, i1), (d2, i2) = search.search(q, 3), copy.search(q, 3)
        assert torch.equal(i1, i2) and torch.equal(d1, d2)


def test_model_file_round_trip_and_header_map_width(pair, synthetic_root, tmp_path):
    ctx, _ = pair
    path = tmp_path / "m.patchbank"
    ctx.save(path)
    tensors, meta = load_model(path)
    assert meta["bank_map_dim"] == ctx.scorer_.search.shape[1] and meta["bank_dim"] == ctx.bank_.shape[1]
    items, _ = split_items(synthetic_root)
    again = Detector.load(path, progress=False).predict(items)
    for a, b in zip(again, ctx.predict(items)):
        assert a.score == b.score and np.array_equal(a.anomaly_map, b.anomaly_map)
    cases = [(None, "bank_map_dim"), (meta["bank_dim"], "below bank_dim"), (5, "map taps' width")]
    for value, needle in cases:
        edited = dict(meta, bank_map_dim=value) if value is not None else {
            k: v for k, v in meta.items() if k != "bank_map_dim"}
        bad = tmp_path / f"bad_{value}.patchbank"
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(bad),
                  metadata={"format": "patchbank", "format_version": "2", "patchbank": json.dumps(edited)})
        with pytest.raises(PatchbankError, match=needle) as info:
            Detector.load(bad, progress=False).predict(items[:1])
        assert "\n" not in str(info.value)
    # a header naming a map width without context taps is refused too
    plain_meta = dict(meta, config=dict(meta["config"], context_taps=0))
    bad = tmp_path / "plain.patchbank"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(bad),
              metadata={"format": "patchbank", "format_version": "2", "patchbank": json.dumps(plain_meta)})
    with pytest.raises(PatchbankError, match="bank_map_dim"):
        Detector.load(bad, progress=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_context_search_on_cuda_gives_the_cpu_answers(pair, synthetic_root, tmp_path):
    # The GPU path of both searches: a CPU-fitted model predicted on cuda, and a model fitted on
    # cuda (its leave-one-image-out calibration runs the context search on the GPU), whose image
    # scores are checked against a brute-force recomputation from its own bank.
    ctx, _ = pair
    items, _ = split_items(synthetic_root)
    gpu = cuda_copy_predicts_alike(ctx, items, tmp_path / "cpu.patchbank")
    assert gpu.scorer_.context is not None
    x, _ = next(iter(ctx.stream(items[:4])))
    before = torch.backends.cudnn.allow_tf32
    for f_cpu, f_gpu in zip(ctx.extractor(x)[0], gpu.extractor(x.cuda())[0]):
        torch.testing.assert_close(f_gpu.cpu(), f_cpu, rtol=1e-4, atol=1e-4)   # full float32 convolutions
    assert torch.backends.cudnn.allow_tf32 is before     # the process's setting is left alone
    fitted = Detector.from_preset("patchbank", device="cuda", progress=False,
                                  **CONTEXT).fit(synthetic_root / "train" / "good")
    assert fitted.bank_.shape == ctx.bank_.shape
    expected = brute_force_scores(fitted, items)
    for p in fitted.predict(items):
        assert p.score == pytest.approx(expected[p.path], rel=1e-3)
    # the calibration statistics agree with the CPU fit's where the two banks agree
    if torch.equal(fitted.bank_.cpu(), ctx.bank_):
        assert fitted.threshold_ == pytest.approx(ctx.threshold_, rel=1e-3, abs=1e-4)


def test_multi_category_model_with_context_taps(pair, synthetic_root, tmp_path):
    """Every category of a multi-category model shares the backbone with its context taps; a
    category's scores equal its single-category model's, also after a save and load."""
    from conftest import stripes_images
    from patchbank.multi import MultiDetector

    stripes = stripes_images(tmp_path / "stripes", 12, seed=1)
    multi = MultiDetector.from_preset("patchbank", progress=False, n_prototypes=8, **CONTEXT).fit(
        {"part": synthetic_root / "train" / "good", "stripes": stripes})
    items, _ = split_items(synthetic_root)
    ctx, _ = pair
    ref = ctx.predict(items)
    got = multi.predict(items, category="part")
    assert [p.score for p in got] == pytest.approx([p.score for p in ref], rel=1e-5)
    multi.save(tmp_path / "multi.patchbank")
    again = MultiDetector.load(tmp_path / "multi.patchbank", progress=False).predict(items, category="part")
    assert [p.score for p in again] == [p.score for p in got]


def test_vg_fusion_with_context_taps(synthetic_root, tmp_path):
    """VG-Fusion keeps each tap's kept channels together: the map's columns are the map taps'
    kept channels, checked again at load; the model predicts the same after a round trip."""
    det = Detector.from_preset("patchbank", progress=False, **dict(CONTEXT, fusion="vg", kappa=0.5)).fit(
        synthetic_root / "train" / "good")
    keep = det.scorer_.embedding.fusion_.keep_
    bb = det.backbone
    assert len(keep) == len(bb.layers) == bb.map_taps + 1
    assert det.scorer_.search.shape[1] == sum(k.numel() for k in keep[:bb.map_taps])
    assert det.bank_.shape[1] == sum(k.numel() for k in keep)
    items, _ = split_items(synthetic_root)
    ref = det.predict(items)
    det.save(tmp_path / "vg.patchbank")
    again = Detector.load(tmp_path / "vg.patchbank", progress=False).predict(items)
    assert [a.score for a in again] == [b.score for b in ref]
    good, bad = ref[:6], ref[6:]
    assert max(p.score for p in good) < max(p.score for p in bad)


@pytest.mark.parametrize("args, needles", [
    (["--context-taps", "-1"], ["--context-taps", ">= 0"]),
    (["--context-taps", "two"], ["--context-taps", "integer"]),
    (["--projection-dim", "64"], ["--context-taps", "projection_dim none", "context_taps 0"]),
    (["--image-score", "reweighted_max"], ["--context-taps", "pooling", "context_taps 0"]),
])
def test_cli_refuses_bad_context_taps_in_one_line(synthetic_root, tmp_path, args, needles):
    from conftest import assert_one_line_error, invoke_cli

    r = invoke_cli("fit", synthetic_root / "train" / "good", "-o", tmp_path / "m.patchbank", "-q",
                   "--backbone", "efficientnet_lite0", "--image-size", "96", "--crop-size", "none", *args)
    assert_one_line_error(r.exit_code, r.stderr, *needles)
    assert not (tmp_path / "m.patchbank").exists()


def test_exported_graph_holds_the_bank_once(synthetic_root, tmp_path):
    # Every patch in the bank (2,304 rows: too large for the exporter to fold the bank's
    # transposes into constants, as it does for small banks): the graph's one [entries, dim]
    # initializer is the whole rows, the map's search slices it, and both runtimes give the
    # torch answers (one export in both formats: the small-bank, 1% default-preset graph is
    # checked on real data by tests/test_export.py::test_mtd_subset_default_preset_parity).
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    pytest.importorskip("openvino")
    onnx = pytest.importorskip("onnx")
    from patchbank.export.exporter import export_model

    det = Detector.from_preset("patchbank", progress=False, **dict(CONTEXT, sampler="none")).fit(
        synthetic_root / "train" / "good")
    entries, dim = det.bank_.shape
    assert entries > 2000 and det.scorer_.search.shape[1] < dim
    data = export_model(det, tmp_path / "ex", ["onnx", "openvino"])
    assert data["bank"]["entries"] == entries and data["bank"]["dim"] == dim
    assert data["bank"]["bytes"] == entries * dim * 4          # the map's columns are a slice
    model = onnx.load(str(tmp_path / "ex" / "model.onnx"))
    banks = [tuple(i.dims) for i in model.graph.initializer if len(i.dims) == 2 and entries in i.dims]
    assert banks == [(entries, dim)]
    for runtime in ("onnx", "openvino"):
        assert_runtime_matches_torch(det, tmp_path / "ex", runtime, split_items(synthetic_root)[0])
