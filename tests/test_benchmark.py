"""patchbank benchmark: structure and internal consistency of the result (never timings)."""
import json

import numpy as np
import pytest
import torch

from conftest import FAST
from patchbank.config import DEFAULT_PRESET

FAST_CLI = ["--backbone", "efficientnet_lite0", "--image-size", "96", "--crop-size", "none",
            "--batch-size", "8"]


def _check_result(r, ratios, batch_sizes):
    assert r["preset"] == DEFAULT_PRESET and r["n_train"] == 16 and r["n_test"] == 14
    m = r["machine"]
    for key in ("cpu", "cores", "torch", "faiss", "threads", "numpy", "python", "thread_pools"):
        assert key in m
    assert [run["coreset_ratio"] for run in r["runs"]] == ratios
    for run in r["runs"]:
        fit, bank = run["fit"], run["bank"]
        reps = r["repeats"]
        assert len(fit["fit_s_all"]) == reps and fit["fit_s"] == min(fit["fit_s_all"]) > 0
        assert len(fit["floor_s"]) == reps + 1 and all(f > 0 for f in fit["floor_s"])
        # fastest fit over fastest floor (module docstring)
        assert fit["fit_ratio"] == pytest.approx(fit["fit_s"] / min(fit["floor_s"]))
        assert fit["peak_rss_mb"] > 0 and fit["cuda_max_allocated_mb"] is None
        assert bank["mb"] == pytest.approx(bank["entries"] * bank["dim"] * bank["bytes_per_value"] / 1e6)
        assert bank["bytes_per_value"] == (2 if run["config"]["bank_dtype"] == "float16" else 4)
        assert run["config"]["coreset_ratio"] == run["coreset_ratio"]
        assert [p["batch_size"] for p in run["predict"]] == batch_sizes
        for p in run["predict"]:
            assert set(p["split_ms_per_image"]) == {"read", "extract", "search", "post"}
            total = p["ms_per_image"]
            assert p["split_sum_ms_per_image"] == pytest.approx(sum(p["split_ms_per_image"].values()))
            # the split covers the whole predict loop: it sums to the wall time within tolerance
            assert p["split_sum_ms_per_image"] <= total * 1.001
            assert p["split_sum_ms_per_image"] >= 0.8 * total
            assert p["images_per_s"] == pytest.approx(1000 / total)
            assert p["predict_ratio"] == pytest.approx(total / p["floor_ms_per_image"])
            assert p["floor_ms_per_image"] == pytest.approx(min(p["floor_s"]) / p["images"] * 1000)
            assert p["cuda_graph_batches"] == []          # the CPU never replays graphs
            assert len(p["floor_s"]) == reps + 1 and p["total_s"] == min(p["total_s_all"])
            assert len(p["total_s_all"]) == reps
            assert 0 <= p["image_auroc"] <= 1
            assert p["peak_rss_mb"] > 0


def test_run_benchmark_structure(synthetic_root):
    from patchbank.studies.speed import run_benchmark

    r = run_benchmark(synthetic_root, overrides=FAST, ratios=[0.1, 0.5], batch_sizes=[1, 4], repeats=2)
    assert r["repeats"] == 2
    _check_result(r, [0.1, 0.5], [1, 4])
    small, big = r["runs"][0]["bank"], r["runs"][1]["bank"]
    assert big["entries"] > small["entries"] and big["dim"] == small["dim"]
    json.dumps(r)   # JSON-able


def test_run_benchmark_float16_bank(synthetic_root):
    from patchbank.studies.speed import run_benchmark

    r = run_benchmark(synthetic_root, overrides={**FAST, "bank_dtype": "float16"}, batch_sizes=[2],
                      max_test=4)
    run = r["runs"][0]
    assert run["bank"]["bytes_per_value"] == 2 and r["n_test"] == 4
    assert run["bank"]["mb"] == pytest.approx(run["bank"]["entries"] * run["bank"]["dim"] * 2 / 1e6)


def test_cli_benchmark_writes_json(synthetic_root, tmp_path):
    from patchbank.cli import cli

    out = tmp_path / "b.json"
    code = cli.main(["benchmark", str(synthetic_root), "-o", str(out), "--ratios", "0.1",
                     "--batch-sizes", "1,16", "--threads", "1", "--repeats", "1", "-q", *FAST_CLI],
                    standalone_mode=False)
    assert code == 0
    r = json.loads(out.read_text())
    assert r["repeats"] == 1
    _check_result(r, [0.1], [1, 16])
    assert r["machine"]["threads"] == 1 and r["machine"]["thread_pools"]["faiss_omp"] == 1
    torch.set_num_threads(1)


def test_cli_benchmark_bad_lists(synthetic_root, tmp_path, capsys):
    from patchbank.cli import cli

    for bad in (["--ratios", "0,0.1"], ["--batch-sizes", "1,x"], ["--ratios", "a"], ["--repeats", "0"]):
        code = cli.main(["benchmark", str(synthetic_root), "-o", str(tmp_path / "x.json"), *bad],
                        standalone_mode=False)
        assert code == 2
        assert capsys.readouterr().err.startswith("error: ")


def test_cli_benchmark_never_replaces_a_file_without_overwrite_nor_an_input(synthetic_root, tmp_path, capsys,
                                                                           monkeypatch):
    """Session 30: ``benchmark -o`` replaced any file without a word (a user's JSON, or one of
    the benchmarked test images); ``--ratios`` beside ``--coreset-ratio`` ran the ratios while
    the result recorded the override; a repeated ratio or batch size was timed twice."""
    import shutil

    import patchbank.studies.speed as speed
    from patchbank.cli import cli

    monkeypatch.setattr(speed, "run_benchmark", lambda *a, **k: pytest.fail("the benchmark ran"))
    mine = tmp_path / "mine.json"
    mine.write_text("precious")
    data = tmp_path / "data"
    shutil.copytree(synthetic_root, data)
    image = sorted((data / "test" / "good").iterdir())[0]
    before = image.read_bytes()
    cases = [(["-o", str(mine)], f"{mine} already exists; pass --overwrite"),
             (["-o", str(image), "--overwrite"], f"the output {image} is the input"),
             (["-o", str(tmp_path / "x.json"), "--ratios", "0.1", "--coreset-ratio", "0.2"], "do not give --coreset-ratio"),
             (["-o", str(tmp_path / "x.json"), "--ratios", "0.1,0.1"], "ratios repeat a value"),
             (["-o", str(tmp_path / "x.json"), "--batch-sizes", "1,1"], "batch sizes repeat a value")]
    for args, needle in cases:
        code = cli.main(["benchmark", str(data), *args, "-q"], standalone_mode=False)
        err = capsys.readouterr().err
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert mine.read_text() == "precious" and image.read_bytes() == before
    assert not (tmp_path / "x.json").exists()


def test_resolve_category_errors(tmp_path):
    from patchbank.studies.speed import resolve_category
    from patchbank.errors import PatchbankError

    with pytest.raises(PatchbankError, match="train/good"):
        resolve_category(tmp_path)


def test_floor_uses_detector_forward(synthetic_root):
    """The floor calls the detector's own forward (same fast path as fit and predict)."""
    from patchbank.studies.speed import floor_seconds
    from patchbank.detector import Detector
    from patchbank.io.images import list_images

    det = Detector.from_preset("lmf-core", progress=False, **FAST)
    calls = []
    original = det.extractor.maps
    det.extractor.maps = lambda x: calls.append(x.shape[0]) or original(x)
    items = list_images(synthetic_root / "train" / "good")
    assert floor_seconds(det, items, 8) > 0
    assert calls == [8, 8]


def test_forward_matches_plain_backbone():
    """Channels-last micro-batches give the plain NCHW forward's maps up to float rounding."""
    from patchbank.detector import Detector
    from patchbank.pipeline.features import CPU_MICRO_BATCH

    det = Detector.from_preset("lmf-core", progress=False, **FAST)
    x = torch.randn(CPU_MICRO_BATCH * 2 + 1, 3, 96, 96)
    with torch.inference_mode():
        ref = [m.clone() for m in det.backbone(x.contiguous())]
        out = det.extractor.maps(x)
    assert len(out) == len(ref)
    for a, b in zip(out, ref):
        assert a.shape == b.shape
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


def test_run_benchmark_rejects_zero_repeats(synthetic_root):
    from patchbank.studies.speed import run_benchmark
    from patchbank.errors import PatchbankError

    with pytest.raises(PatchbankError, match="repeats must be at least 1, got 0"):
        run_benchmark(synthetic_root, overrides=FAST, repeats=0)
