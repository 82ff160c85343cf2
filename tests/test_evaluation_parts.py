"""The shared parts of evaluation/: the pixel-metric loop (score_category) on a hand-made example,
the run store (resume, including the format-1 files under benchmarks/results), category
selection, and the mean +- std / table writers."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from patchbank.config import Config
from patchbank.errors import PatchbankError
from patchbank.evaluation.inputs import category_names, load_categories, select_categories
from patchbank.evaluation.reports import format_mean_std, mean_std, pipe_table, write_json
from patchbank.evaluation.run_store import RUN_FORMAT, RunStore, run_file_name
from patchbank.evaluation.scoring import category_masks, score_category
from patchbank.io.datasets import Category
from patchbank.io.synthetic import make_dataset

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


# ------------------------------------------------------------------ score_category by hand

def _hand_category(tmp_path: Path, with_masks: bool = True) -> Category:
    """Two 8x8 test images; the defective one's mask covers rows/cols 2-3 (inside the 4x4 centre
    crop, where it lands at [0:2, 0:2]) and pixel (0, 0) (cropped away)."""
    for name in ("g", "d"):
        Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(tmp_path / f"{name}.png")
    mask = np.zeros((8, 8), np.uint8)
    mask[2:4, 2:4] = 255
    mask[0, 0] = 255
    Image.fromarray(mask).save(tmp_path / "d_mask.png")
    return Category("hand", [tmp_path / "g.png"], [tmp_path / "g.png", tmp_path / "d.png"], [0, 1],
                    [None, tmp_path / "d_mask.png" if with_masks else None])


def _hand_predictions():
    """Maps at the 4x4 crop.  Positives: 4 pixels at 0.8.  Negatives: 28 pixels, one at 0.9 (good
    image), one at 0.5, 26 at 0.1."""
    good = np.full((4, 4), 0.1, np.float32)
    good[3, 3] = 0.9
    bad = np.full((4, 4), 0.1, np.float32)
    bad[0:2, 0:2] = 0.8
    bad[3, 3] = 0.5
    return [SimpleNamespace(score=0.2, anomaly_map=good), SimpleNamespace(score=0.7, anomaly_map=bad)]


def test_score_category_hand_example(tmp_path):
    config = Config.preset("lmf-core", image_size=8, crop_size=4)
    cat = _hand_category(tmp_path)
    masks = list(category_masks(cat, config))
    assert not masks[0].any()
    expected = np.zeros((4, 4), bool)
    expected[0:2, 0:2] = True
    assert (masks[1] == expected).all()

    m = score_category(cat, _hand_predictions(), config)
    assert m["image_auroc"] == m["image_ap"] == m["image_f1_max"] == 1.0
    # a positive (0.8) beats 27 of the 28 negatives, never ties
    assert m["pixel_auroc"] == pytest.approx(27 / 28, rel=1e-12)
    # thresholds 0.9 (TP 0, FP 1) then 0.8 (TP 4, FP 1): AP = 1 * 4/5, F1 = 2*4 / (4 + 1 + 4)
    assert m["pixel_ap"] == pytest.approx(0.8, rel=1e-12)
    assert m["pixel_f1_max"] == pytest.approx(8 / 9, rel=1e-12)
    # one region; PRO jumps 0 -> 1 at FPR 1/28 and stays 1: area (0.3 - 1/28) / 0.3
    assert m["aupro"] == pytest.approx((0.3 - 1 / 28) / 0.3, rel=1e-12)


def test_score_category_without_masks_and_bad_input(tmp_path):
    config = Config.preset("lmf-core", image_size=8, crop_size=4)
    m = score_category(_hand_category(tmp_path, with_masks=False), _hand_predictions(), config)
    assert m["image_auroc"] == 1.0
    assert m["pixel_auroc"] is None and m["aupro"] is None
    cat = _hand_category(tmp_path)
    with pytest.raises(PatchbankError, match="1 predictions for 2 test images"):
        score_category(cat, _hand_predictions()[:1], config)
    negated = [SimpleNamespace(score=-p.score, anomaly_map=p.anomaly_map) for p in _hand_predictions()]
    assert score_category(cat, negated, config)["image_auroc"] == 0.0


# ------------------------------------------------------------------ run store

def test_run_store_round_trip_and_refusals(tmp_path):
    config = Config.preset("lmf-core", seed=3)
    store = RunStore(tmp_path / "runs")
    assert store.load("a b", 3, config, "metrics") is None            # no file yet
    run = {"format": RUN_FORMAT, "config": config.to_dict(), "metrics": {"image_auroc": 0.5}}
    path = store.save("a b", 3, run)
    assert path.name == run_file_name("a b", 3) and path.name.startswith("a_b-") and path.name.endswith("__seed3.json")
    assert path.read_text().endswith("}\n") and not list(path.parent.glob("*.tmp"))
    assert store.load("a b", 3, config, "metrics") == run
    assert store.load("a b", 3, config.replace(kappa=1.0), "metrics") is None   # other config
    assert store.load("a b", 3, config, "data") is None                          # other payload
    store.save("c", 0, {**run, "format": 2})
    assert store.load("c", 0, config, "metrics") is None                         # other format
    compact = store.save("d", 0, {"format": RUN_FORMAT, "config": config.to_dict(), "data": {"x": [1]}},
                         indent=None)
    assert "\n" not in compact.read_text()
    assert store.load("d", 0, config, "data")["data"] == {"x": [1]}
    (tmp_path / "runs" / "e__seed0.json").write_text("{not json")
    assert store.load("e", 0, config, "metrics") is None


def test_two_categories_never_share_a_run_file():
    """Session 29: "x y" and "x_y" (and any two non-Latin names of one length) mapped to one file,
    so each resume recomputed one of them and the report showed the other's run."""
    names = ["x y", "x_y", "x-y", "螺丝", "齿轮", "bottle", "metal_nut"]
    files = [run_file_name(n, 0) for n in names]
    assert len(set(files)) == len(names)
    assert run_file_name("bottle", 0) == "bottle__seed0.json"     # plain names keep their files
    assert run_file_name("metal_nut", 4) == "metal_nut__seed4.json"


def test_a_stored_run_of_another_category_seed_device_or_weights_is_not_reused(tmp_path):
    config = Config.preset("lmf-core", seed=0)
    store = RunStore(tmp_path / "runs")
    run = {"format": RUN_FORMAT, "category": "b", "seed": 0, "device": "cpu", "backbone_sha256": "a" * 64,
           "config": config.to_dict(), "metrics": {"image_auroc": 0.5}}
    store.save("a", 0, run)                          # a file holding another category's run
    assert store.lookup("a", 0, config, "metrics") == (None, "category")
    store.save("b", 0, run)
    assert store.lookup("b", 0, config, "metrics", expect={"device": "cpu"})[1] == ""
    assert store.lookup("b", 0, config, "metrics", expect={"device": "cuda:0"}) == (None, "device")
    assert store.lookup("b", 0, config, "metrics", expect={"backbone_sha256": "b" * 64}) == (None, "backbone_sha256")
    # a run written before the field is not trusted (session 30; was reused uncompared), the
    # structure study's runs, which record no category or seed, still are
    old = {k: v for k, v in run.items() if k != "backbone_sha256"}
    store.save("b", 0, old)
    assert store.lookup("b", 0, config, "metrics", expect={"backbone_sha256": "a" * 64}) == (None, "no backbone_sha256")
    assert store.lookup("b", 0, config, "metrics", expect={"device": "cpu"})[1] == ""
    store.save("b", 0, {k: v for k, v in old.items() if k not in ("category", "seed")})
    assert store.lookup("b", 0, config, "metrics")[1] == ""


@pytest.mark.parametrize("folder, category, payload", [
    ("eval_ksdd_lmf-core_s5_moments", "ksdd", "metrics"),
    ("structure_ksdd", "ksdd", "data"),
])
def test_run_store_reads_existing_format_1_files(folder, category, payload):
    path = RESULTS / folder / "runs" / f"{category}__seed0.json"
    if not path.is_file():
        pytest.skip(f"{path} not in this checkout")
    stored = json.loads(path.read_text())
    # the files predate Config fields (pq_refine, ivfpq_min_bank, patch_border, map_upsample):
    # a field added later takes its default, the behaviour the run had, so today's Config resumes
    assert not {"patch_border", "map_upsample"} & set(stored["config"])
    run = RunStore(path.parent).load(category, 0, Config.from_dict(stored["config"]), payload)
    assert run is not None and run[payload] == stored[payload]
    # a stored field that differs from the asked config is another run
    other = Config.from_dict(stored["config"]).replace(patch_border="zero")
    assert RunStore(path.parent).load(category, 0, other, payload) is None


# ------------------------------------------------------------------ categories

def _cat(name: str) -> Category:
    return Category(name, [], [], [], [])


def test_select_categories():
    cats = [_cat("a"), _cat("b"), _cat("c")]
    assert category_names(" b, a ,") == ["b", "a"] and category_names(None) is None
    assert [c.name for c in select_categories(cats, "c,a")] == ["a", "c"]      # the cats' order
    assert [c.name for c in select_categories(cats, None)] == ["a", "b", "c"]
    with pytest.raises(PatchbankError, match=r"unknown categories 'x', 'y'; available: a, b, c"):
        select_categories(cats, ["x", "a", "y"])
    with pytest.raises(PatchbankError, match="repeat across the dataset roots: a"):
        select_categories(cats + [_cat("a")], None)


def test_load_categories_sources(tmp_path):
    for i, name in enumerate(("p", "q")):
        make_dataset(tmp_path / "one" / name, n_train=2, n_test_good=1, n_test_defect=1, size=32, seed=i)
    make_dataset(tmp_path / "two" / "r", n_train=2, n_test_good=1, n_test_defect=1, size=32, seed=2)
    assert [c.name for c in load_categories(tmp_path / "one", "q,p")] == ["q", "p"]   # reader's order
    both = load_categories([tmp_path / "one", tmp_path / "two"], ["r", "p"])
    assert [c.name for c in both] == ["p", "r"]
    assert [c.name for c in load_categories(both, ["r"])] == ["r"]
    with pytest.raises(PatchbankError, match="no categories selected"):
        load_categories(tmp_path / "one", [])
    with pytest.raises(PatchbankError, match="available: p, r"):
        load_categories(both, ["s"])


# ------------------------------------------------------------------ reports

def test_mean_std_and_tables(tmp_path):
    assert mean_std([1.0, None, float("nan"), 3.0]) == {"mean": 2.0, "std": 1.0, "n": 2}
    assert mean_std([None]) == {"mean": None, "std": None, "n": 0}
    assert format_mean_std(0.98765, 0.0012) == "0.988 ± 0.001"
    assert format_mean_std(12.345, 1.0, 1) == "12.3 ± 1.0"
    assert format_mean_std(None, None) == "–"
    assert pipe_table(["x", "a", "b"], [["r", "1", "2"]], right=2) == [
        "| x | a | b |", "|---|---:|---:|", "| r | 1 | 2 |"]
    path = write_json(tmp_path / "t.json", {"a": (1, 2)}, indent=None, newline=False)
    assert path.read_text() == '{"a": [1, 2]}' and not list(tmp_path.glob("*.tmp"))


def test_empty_mask_is_refused_before_the_fit(tmp_path, monkeypatch):
    import numpy as np
    from PIL import Image

    from patchbank.detector import Detector
    from patchbank.errors import PatchbankError
    from patchbank.evaluation.runner import evaluate
    from patchbank.io.synthetic import make_dataset

    root = make_dataset(tmp_path / "cat", n_train=6, n_test_good=1, n_test_defect=1, size=64)
    Image.fromarray(np.zeros((64, 64), np.uint8), "L").save(root / "ground_truth" / "spot" / "000_mask.png")
    monkeypatch.setattr(Detector, "fit", lambda *a, **k: pytest.fail("fit ran before the mask check"))
    with pytest.raises(PatchbankError, match=r"000_mask\.png of defective image .*000\.png has no defect pixel"):
        evaluate(root, "lmf-core", {"backbone": "efficientnet_lite0"}, out_dir=tmp_path / "out", progress=False)


def test_every_categorys_masks_are_checked_before_the_first_fit(tmp_path, monkeypatch):
    """Session 29: a bad mask in the last category surfaced after every earlier category had
    been fitted (and their runs saved with the new config, beside the old summary)."""
    import shutil

    from patchbank.detector import Detector
    from patchbank.evaluation.runner import evaluate

    first = make_dataset(tmp_path / "data" / "a", n_train=6, n_test_good=1, n_test_defect=1, size=64)
    shutil.copytree(first, tmp_path / "data" / "z")
    Image.fromarray(np.zeros((64, 64), np.uint8), "L").save(tmp_path / "data" / "z" / "ground_truth" / "spot" / "000_mask.png")
    monkeypatch.setattr(Detector, "fit", lambda *a, **k: pytest.fail("a category was fitted before every mask was checked"))
    with pytest.raises(PatchbankError, match=r"z.*000_mask\.png .*has no defect pixel"):
        evaluate(tmp_path / "data", "lmf-core", {"backbone": "efficientnet_lite0"}, out_dir=tmp_path / "out",
                 progress=False)
