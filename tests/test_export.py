"""Export (issue #17): the exported graph gives the torch path's answers on ONNX Runtime and OpenVINO.

Parity is the feature: every image score within 1e-4 relative, the same decisions, and maps
within 1e-3 of their range, at batch 1 and batch 8, for a small lmf-core model (VG-Fusion,
projection, re-weighted max), a model with a centre crop, StructCore's hybrid score over a
top-k mean with k = 3 mean squared distances and a float16 bank stored as ONNX external data,
one category of a multi-category model, the CLI (export, then predict --runtime) and, when
../shared/data is present, an MTD subset with the default preset.  Loading is safe: a tampered
or foreign sidecar is refused in one line.
"""
from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageFilter

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")
pytest.importorskip("onnxscript")

from conftest import FAST, SHARED_DATA, split_items  # noqa: E402
from patchbank.cli import cli  # noqa: E402
from patchbank.detector import Detector  # noqa: E402
from patchbank.errors import PatchbankError  # noqa: E402
from patchbank.export.exporter import export_model  # noqa: E402
from patchbank.export.runtimes import ExportedModel  # noqa: E402
from patchbank.export.sidecar import SIDECAR_NAME, read_sidecar  # noqa: E402

RUNTIMES = ("onnx", "openvino")
MTD = SHARED_DATA / "mtd"


def run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def assert_parity(preds, ref):
    """Scores within 1e-4 relative, same decisions, maps within 1e-3 of their range; returns
    (max relative score difference, max map difference / range)."""
    assert [p.path for p in preds] == [r.path for r in ref]
    rel = max(abs(p.score - r.score) / max(abs(r.score), 1e-12) for p, r in zip(preds, ref))
    assert rel <= 1e-4, rel
    assert [p.is_anomalous for p in preds] == [r.is_anomalous for r in ref]
    for p, r in zip(preds, ref):
        assert p.normalized_score == pytest.approx(r.normalized_score, rel=1e-4, abs=1e-4)
        for name in ("base_score", "struct_score", "hybrid_score"):
            assert getattr(p, name) == pytest.approx(getattr(r, name), rel=1e-4, abs=1e-6), name
        np.testing.assert_allclose(p.descriptor, r.descriptor, rtol=1e-4, atol=1e-6)
        assert p.anomaly_map.shape == r.anomaly_map.shape and p.anomaly_map.dtype == np.float32
        assert p.window == r.window and p.image_map.shape == r.image_map.shape   # original image's grid
    span = max(float(r.anomaly_map.max() - r.anomaly_map.min()) for r in ref)
    diff = max(float(np.abs(p.anomaly_map - r.anomaly_map).max()) for p, r in zip(preds, ref))
    assert diff <= 1e-3 * span, (diff, span)
    return rel, diff / span


def check_all(folder, items, ref, batches=(1, 8), runtimes=RUNTIMES):
    for runtime in runtimes:
        model = ExportedModel(folder, runtime, progress=False)
        for bs in batches:
            assert_parity(model.predict(items, batch_size=bs), ref)


@pytest.fixture(scope="module")
def cli_export(fitted, tmp_path_factory):
    """The session's small lmf-core model saved, then exported by the CLI in both formats."""
    tmp = tmp_path_factory.mktemp("export")
    fitted.save(tmp / "m.patchbank")
    result = run("export", tmp / "m.patchbank", "-o", tmp / "ex", "--format", "onnx",
                 "--format", "openvino")
    assert result.exit_code == 0, result.output
    # without -q, a bar over the export's steps on stderr (tens of seconds for a large bank)
    for step in ("capturing the graph", "writing ONNX", "converting to OpenVINO"):
        assert f"export ({step})" in result.stderr, result.stderr
    assert "export (done): 3/3 steps" in result.stderr
    return tmp, result.stdout


def test_lmf_core_parity_both_runtimes_batch_1_and_8(cli_export, fitted, synthetic_root):
    tmp, _ = cli_export
    items, _ = split_items(synthetic_root)
    ref = Detector.load(tmp / "m.patchbank", progress=False).predict(items, batch_size=8)
    check_all(tmp / "ex", items, ref)


def test_openvino_throughput_hint_splits_the_batch_over_its_requests(cli_export, synthetic_root):
    tmp, _ = cli_export
    items, _ = split_items(synthetic_root)
    ref = Detector.load(tmp / "m.patchbank", progress=False).predict(items, batch_size=8)
    model = ExportedModel(tmp / "ex", "openvino", hint="throughput", progress=False)
    assert len(model.runtime.requests) >= 1
    for bs in (1, 3, 8):
        assert_parity(model.predict(items, batch_size=bs), ref)
    with pytest.raises(PatchbankError, match="hint must be one of"):
        ExportedModel(tmp / "ex", "openvino", hint="fastest")


def test_cli_export_then_predict_runtime_equals_torch(cli_export, synthetic_root):
    tmp, stdout = cli_export
    assert "dynamic batch" in stdout and "bank in the graph" in stdout and "wrote" in stdout
    test_dir = synthetic_root / "test"
    assert run("predict", tmp / "m.patchbank", test_dir, "-o", tmp / "p_torch", "-q", "--heatmaps").exit_code == 0
    rows = {}
    for runtime in RUNTIMES:
        out = tmp / f"p_{runtime}"
        result = run("predict", tmp / "ex", test_dir, "-o", out, "-q", "--heatmaps", "--runtime", runtime)
        assert result.exit_code == 0, result.output
        rows[runtime] = list(csv.DictReader(open(out / "predictions.csv")))
        assert len(list((out / "heatmaps").glob("*.png"))) == len(rows[runtime])
    torch_rows = list(csv.DictReader(open(tmp / "p_torch" / "predictions.csv")))
    for runtime, got in rows.items():
        assert [r["path"] for r in got] == [r["path"] for r in torch_rows]
        assert [r["is_anomalous"] for r in got] == [r["is_anomalous"] for r in torch_rows]
        assert [r["threshold"] for r in got] == [r["threshold"] for r in torch_rows]
        for g, t in zip(got, torch_rows):
            assert float(g["score"]) == pytest.approx(float(t["score"]), rel=1e-4)
    info = run("info", tmp / "ex")
    assert info.exit_code == 0 and "graph files" in info.stdout and "memory bank" in info.stdout
    import torch
    assert f"torch {torch.__version__}" in info.stdout       # the fit's versions, from the sidecar
    assert "sizes sqrt(H x W) 96-96 px" in info.stdout       # the training images' (96 px), likewise
    # never overwritten without --overwrite; the runtime of a model file / a non-export folder
    again = run("export", tmp / "m.patchbank", "-o", tmp / "ex")
    assert again.exit_code == 2 and "--overwrite" in again.stderr
    wrong = run("predict", tmp / "m.patchbank", test_dir, "-o", tmp / "p_x", "--runtime", "onnx")
    assert wrong.exit_code == 2 and "patchbank export" in wrong.stderr
    assert len(wrong.stderr.strip().splitlines()) == 1
    empty = tmp / "not_an_export"
    empty.mkdir()
    bad = run("predict", empty, test_dir, "-o", tmp / "p_y", "--runtime", "openvino")
    assert bad.exit_code == 2 and "not an export folder" in bad.stderr


def test_crop_hybrid_topk_fp16_bank_external_data(synthetic_root, tmp_path):
    """Centre crop, StructCore hybrid over top-k mean with k=3 mean squared distances, a float16
    bank (the model file's, so the torch path uses the same rounded rows) stored as ONNX
    external data (forced by a tiny threshold), exported after its threshold was moved: the
    export starts at the moved threshold and decides as the moved detector does."""
    cfg = dict(FAST, image_size=112, crop_size=96, image_score="hybrid", base_score="topk_mean",
               k=3, distance="squared", knn_reduce="mean", bank_dtype="float16")
    det = Detector.from_preset("lmf-core", progress=False, **cfg).fit(synthetic_root / "train" / "good")
    det.save(tmp_path / "m.patchbank")
    det = Detector.load(tmp_path / "m.patchbank", progress=False)
    items, _ = split_items(synthetic_root)
    t = float(np.median([p.normalized_score for p in det.predict(items)]))
    det.set_threshold(t)
    data = export_model(det, tmp_path / "ex", ["onnx", "openvino"], external_over=1)
    assert data["threshold_override"] == t and data["threshold"] == t
    assert ExportedModel(tmp_path / "ex", "onnx", progress=False).threshold_ == t
    assert data["external_data"] and (tmp_path / "ex" / "model.onnx.data").is_file()
    assert data["bank"]["dtype"] == "float16"
    assert data["bank"]["bytes"] == data["bank"]["entries"] * data["bank"]["dim"] * 2
    import onnx

    graph = onnx.load(str(tmp_path / "ex" / "model.onnx"), load_external_data=False).graph
    halves = [t for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT16]
    assert any(list(h.dims) == [data["bank"]["entries"], data["bank"]["dim"]] for h in halves)
    check_all(tmp_path / "ex", items, det.predict(items, batch_size=8))


def test_multi_category_refused_or_one_category_exported(synthetic_root, tmp_path):
    from patchbank.multi import MultiDetector

    train = sorted((synthetic_root / "train" / "good").glob("*.png"))
    multi = MultiDetector.from_preset("lmf-core", progress=False, n_prototypes=4, **FAST).fit(
        {"a": train[:8], "b": train[8:]})
    with pytest.raises(PatchbankError, match="not supported.*--category"):
        export_model(multi, tmp_path / "ex")
    with pytest.raises(PatchbankError, match="unknown category"):
        export_model(multi, tmp_path / "ex", category="c")
    data = export_model(multi, tmp_path / "ex", ["onnx"], category="b")
    assert data["category"] == "b" and data["formats"] == ["onnx"]
    items, _ = split_items(synthetic_root)
    ref = multi.predict(items, category="b", batch_size=8)
    check_all(tmp_path / "ex", items, ref, batches=(8,))
    # an ONNX-only export still runs on OpenVINO (it reads the ONNX file)
    check_all(tmp_path / "ex", items[:3], ref[:3], batches=(1,), runtimes=("openvino",))


def _sidecar_folder(cli_export, tmp_path):
    src = cli_export[0] / "ex"
    dst = tmp_path / "ex"
    shutil.copytree(src, dst)
    return dst, json.loads((dst / SIDECAR_NAME).read_text())


def _write(folder, data):
    (folder / SIDECAR_NAME).write_text(json.dumps(data))


def _flip_byte(path, at=0.5):
    """Change one byte of ``path`` (at the fraction ``at`` of its length): same size, another sha256."""
    raw = bytearray(path.read_bytes())
    raw[int(len(raw) * at)] ^= 0xFF
    path.write_bytes(bytes(raw))


def _as_version_2(data):
    """``data`` as an older version 2 export wrote it: no graph_sha256, nor the fields added
    during version 2 (map_size, train_aspect, train_scale, fitted_with)."""
    data.update(format_version=2)
    for key in ("graph_sha256", "map_size", "train_aspect", "train_scale", "fitted_with"):
        data.pop(key)


def _image_size(size):
    """Edit the preprocessing to ``size`` and the sizes derived from it, consistently."""
    def change(d):
        d["config"].update(image_size=[size, size])
        d.update(input_size=[size, size], map_size=[size, size])
    return change


@pytest.mark.parametrize("change, needle", [
    (lambda d: d.update(format_version=99), "format version 99"),
    (lambda d: d.update(format="pickle"), "not a patchbank export sidecar"),
    (lambda d: d.update(formats=["../../x"]), "formats must be"),
    (lambda d: d.update(threshold="0.5"), "threshold must be a finite number"),
    (lambda d: d.update(mean=[0, 0]), "mean must be"),
    (lambda d: d.update(mean=[0.0, 0.0, 0.0]), "mean must be the normalisation of backbone efficientnet_lite0 [0.5, 0.5, 0.5]"),
    (lambda d: d.update(std=[0.229, 0.224, 0.225]), "std must be the normalisation of backbone efficientnet_lite0"),
    (lambda d: d["config"].update(image_size=-3), "invalid config"),
    (lambda d: d.pop("outputs"), "'outputs'"),
    (lambda d: d.update(format_version=1), "format version 1"),
    (lambda d: d.update(threshold_override="2.0"), "threshold_override must be a finite number or null"),
    (lambda d: d.update(threshold_override=float("inf")), "threshold_override must be"),
    (lambda d: d.update(calibration_base_scores=[]), "calibration_base_scores must be"),
    (lambda d: d["calibration_base_scores"].__setitem__(0, float("nan")), "calibration_base_scores must be"),
    (lambda d: d["calibration_descriptors"].pop(), "calibration_descriptors must be"),
    (lambda d: d["calibration_descriptors"][0].append(1.0), "calibration_descriptors must be"),
    (lambda d: d.pop("calibrated_threshold"), "'calibrated_threshold'"),
    (lambda d: d.update(train_aspect=-1.0), "train_aspect must be a positive number or null"),
    (lambda d: d.update(train_aspect="tall"), "train_aspect must be"),
    (lambda d: d.update(train_scale=[120.0, 80.0]), "train_scale must be null or"),
    (lambda d: d.update(train_scale=[0, 80.0]), "train_scale must be"),
    (lambda d: d.update(fitted_with="torch 2"), "fitted_with must be"),
    (lambda d: d.update(fitted_with={"torch": 2}), "fitted_with must be"),
    # every key is declared: unknown or mistyped fields, and values the config fixes
    (lambda d: d.update(evil="os.system"), "unknown field 'evil'"),
    (lambda d: d.update(format_version=2.0), "format version 2.0 is not supported"),
    (lambda d: d.update(files=5), "files must be an object of the formats' file names"),
    (lambda d: d.update(files="model.onnx"), "files must be"),
    (lambda d: d.update(files={"../../m.patchbank": 1, "/etc/passwd": 1}), "files must be"),
    (lambda d: d["files"].update({"model.onnx": -1}), "files must be"),
    (lambda d: d["files"].pop("model.xml"), "files must be"),
    (lambda d: d.update(formats=["onnx"]), "files must be"),         # lists the OpenVINO files too
    (lambda d: d.update(formats=["onnx", "onnx"]), "formats must be a non-empty list of distinct"),
    (lambda d: d.update(bank={}), "bank must be an object of the bank's entries"),
    (lambda d: d.update(bank={"entries": float("nan"), "dim": "x", "bytes": -1}), "bank must be"),
    (lambda d: d["bank"].update(dtype="int8"), "bank must be"),
    (lambda d: d.update(patch_grid="evil"), "patch_grid must be"),
    (lambda d: d.update(search="faiss-ivf"), "search must be 'exact'"),
    (lambda d: d.update(backbone_sha256=5), "backbone_sha256 must be null or"),
    (lambda d: d.update(backbone_sha256="ab" * 31), "backbone_sha256 must be"),
    (lambda d: d["config"].update(weights="/etc/passwd"), "config.weights is '/etc/passwd'"),
    (lambda d: d["config"].update(backbone="os.system"), "config.backbone 'os.system' is not a backbone of this patchbank"),
    (lambda d: d.update(input="foo"), "input must be 'images'"),
    (lambda d: d.update(input_layout="NHWC uint8"), "input_layout must be"),
    (lambda d: d.update(outputs=["a"]), "outputs must be"),
    (lambda d: d["config"].update(image_size=[64, 64]), "input_size must be config.network_size [64, 64]"),
    (lambda d: d.update(input_size=[1, 1]), "input_size must be config.network_size"),
    (lambda d: d.update(map_size=[2, 2]), "map_size must be config.input_size"),
    (lambda d: d.pop("map_size"), "field 'map_size' is missing"),
    (lambda d: d.update(target_fpr=0.5), "target_fpr must be config.target_fpr"),
    (lambda d: d.update(category="../../x"), "category must be null or a category name"),
    (lambda d: d.update(external_data=True), "external_data must be true exactly when"),
    (lambda d: d.update(notes=[{"a": 1}]), "notes must be a list of strings"),
    (lambda d: d.pop("graph_sha256"), "field 'graph_sha256' is missing"),
    (lambda d: d["graph_sha256"].update({"model.onnx": "x"}), "graph_sha256 must be"),
    (lambda d: d["graph_sha256"].pop("model.bin"), "graph_sha256 must be"),
    # OpenVINO reads model.bin beside model.xml whatever the sidecar lists (session 31: dropped
    # from files and graph_sha256, a changed model.bin loaded unchecked and scored wrong)
    (lambda d: (d["files"].pop("model.bin"), d["graph_sha256"].pop("model.bin")),
     "model.onnx, model.xml, model.bin among them"),
    (lambda d: d.pop("train_scale"), "field 'train_scale' is missing"),
])
def test_tampered_sidecar_is_refused(cli_export, synthetic_root, tmp_path, change, needle):
    folder, data = _sidecar_folder(cli_export, tmp_path)
    change(data)
    _write(folder, data)
    with pytest.raises(PatchbankError, match=re.escape(needle)):
        read_sidecar(folder)
    # and so for info (never a traceback) and predict: one line naming the sidecar
    images = synthetic_root / "test" / "good"
    for args in (["info", folder], ["predict", folder, images, "-o", tmp_path / "out", "--runtime", "onnx"]):
        result = run(*args)
        assert result.exit_code == 2 and needle in result.stderr, result.output
        assert len(result.stderr.strip().splitlines()) == 1 and str(folder / SIDECAR_NAME) in result.stderr


def test_the_sidecar_records_every_graph_files_size_and_sha256(cli_export, monkeypatch):
    import patchbank.export.sidecar as sidecar
    import patchbank.service.registry as registry
    from patchbank.io.model_file import file_sha256
    from patchbank.service.settings import ModelSpec, ServeSettings

    folder = cli_export[0] / "ex"
    data = read_sidecar(folder)
    assert data["format_version"] == 3 and data["config"]["weights"] is None
    names = ["model.bin", "model.onnx", "model.xml"]
    assert sorted(data["files"]) == sorted(data["graph_sha256"]) == names
    for name in names:
        assert data["graph_sha256"][name] == file_sha256(folder / name)
        assert data["files"][name] == (folder / name).stat().st_size
    # each runtime hashes the files it reads, once, on load, and keeps the hashes: serve reports
    # them without reading the files again (it hashes the sidecar, the file it rewrites)
    hashed = []

    def counting(path):
        hashed.append(Path(path).name)
        return file_sha256(path)

    monkeypatch.setattr(sidecar, "file_sha256", counting)
    monkeypatch.setattr(registry, "file_sha256", counting)
    for runtime, read in (("onnx", ["model.onnx"]), ("openvino", ["model.xml", "model.bin"])):
        hashed.clear()
        served = registry.load_served(ModelSpec("ex", str(folder)), ServeSettings(runtime=runtime))
        assert served.graph_sha256 == served.model.graph_sha256_ == {n: data["graph_sha256"][n] for n in read}
        assert sorted(hashed) == sorted(read + [SIDECAR_NAME])


@pytest.fixture(scope="module")
def other_export(synthetic_root, tmp_path_factory):
    """Another model's ONNX export: a 64 px model fit on half the training images."""
    tmp = tmp_path_factory.mktemp("other_export")
    train = sorted((synthetic_root / "train" / "good").glob("*.png"))
    det = Detector.from_preset("lmf-core", progress=False, **dict(FAST, image_size=64)).fit(train[::2])
    export_model(det, tmp / "ex", ["onnx"])
    return tmp / "ex"


def test_another_models_graph_copied_into_the_folder_is_refused(cli_export, other_export, tmp_path):
    """The audit's case: another model's model.onnx copied over this export's (its size fixed in
    the sidecar too) would score with that model against this sidecar's threshold; refused on
    load by its sha256.  A version 2 sidecar has no sha256: the graph's input shape is checked
    against the sidecar's input_size instead, and info says the files cannot be verified."""
    folder, data = _sidecar_folder(cli_export, tmp_path)
    shutil.copy(other_export / "model.onnx", folder / "model.onnx")
    with pytest.raises(PatchbankError, match=r"model\.onnx is \d+ bytes, the sidecar says \d+; export again"):
        ExportedModel(folder, "onnx")
    data["files"]["model.onnx"] = (folder / "model.onnx").stat().st_size
    _write(folder, data)
    for runtime in RUNTIMES:     # OpenVINO reads model.xml: that one is this export's own
        if runtime == "onnx":
            with pytest.raises(PatchbankError, match=r"model\.onnx does not match the sha256 in the sidecar"):
                ExportedModel(folder, runtime)
        else:
            assert ExportedModel(folder, runtime, progress=False).runtime.graph_format == "openvino"
    result = run("info", folder)
    assert result.exit_code == 2 and "model.onnx does not match the sha256 in the sidecar" in result.stderr
    _as_version_2(data)
    _write(folder, data)
    with pytest.raises(PatchbankError, match=r"model\.onnx: the graph reads images \[batch, 3, 64, 64\], the "
                                             r"sidecar's input is images \[batch, 3, 96, 96\] \(input_size\)"):
        ExportedModel(folder, "onnx")


@pytest.mark.parametrize("runtime, name, at", [
    ("onnx", "model.onnx", 0.5), ("openvino", "model.xml", 0.5), ("openvino", "model.bin", 0.5)])
def test_a_changed_graph_file_is_refused_by_its_runtime_and_info(cli_export, tmp_path, runtime, name, at):
    folder, _ = _sidecar_folder(cli_export, tmp_path)
    _flip_byte(folder / name, at)
    with pytest.raises(PatchbankError, match=f"{name} does not match the sha256 in the sidecar.*; export again"):
        ExportedModel(folder, runtime)
    result = run("info", folder)
    assert result.exit_code == 2 and f"{name} does not match the sha256" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    (folder / name).write_bytes((folder / name).read_bytes()[:-4])
    with pytest.raises(PatchbankError, match=f"{name} is \\d+ bytes, the sidecar says"):
        read_sidecar(folder)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_graph_not_of_the_sidecars_input_size_is_refused_on_load(cli_export, tmp_path, runtime):
    """The preprocessing edited consistently (config, input_size, map_size) passes the sidecar's
    checks; the runtime compares the graph's own input with it (was: a raw ONNX Runtime /
    OpenVINO traceback at predict time)."""
    folder, data = _sidecar_folder(cli_export, tmp_path)
    _image_size(64)(data)
    _write(folder, data)
    graph = "model.onnx" if runtime == "onnx" else "model.xml"
    with pytest.raises(PatchbankError, match=fr"{graph}: the graph reads images \[batch, 3, 96, 96\], the "
                                             r"sidecar's input is images \[batch, 3, 64, 64\]"):
        ExportedModel(folder, runtime)


def test_a_version_2_export_still_loads_and_info_says_it_is_unverified(cli_export, synthetic_root, tmp_path):
    folder, data = _sidecar_folder(cli_export, tmp_path)
    items, _ = split_items(synthetic_root)
    ref = ExportedModel(folder, "onnx", progress=False).predict(items[:4])
    assert "every graph file matches the sidecar's" in run("info", folder).stdout
    _as_version_2(data)
    _write(folder, data)
    for runtime in RUNTIMES:
        model = ExportedModel(folder, runtime, progress=False)
        assert model.info()["format_version"] == 2 and model.graph_sha256_   # hashed, for serve
        got = model.predict(items[:4])
        assert [p.score for p in got] == pytest.approx([p.score for p in ref], rel=1e-4)
    info = run("info", folder)
    assert info.exit_code == 0
    assert ("graph sha256       not recorded (export format version 2): the graph files cannot be verified; "
            "export again to record them") in info.stdout
    data["format_version"] = 1
    _write(folder, data)
    with pytest.raises(PatchbankError, match="format version 1 is not supported.*export again"):
        read_sidecar(folder)


def test_info_shows_the_threshold_in_use_and_the_calibrated_one(cli_export, tmp_path):
    """``patchbank info DIR`` showed the graph's baked-in threshold and hid threshold_override,
    the operating point predict uses; now it shows the one in use, the override and the
    calibrated one, as for a model file."""
    folder, _ = _sidecar_folder(cli_export, tmp_path)
    model = ExportedModel(folder, "onnx", progress=False)
    calibrated = model.calibrated_threshold_
    plain = run("info", folder).stdout
    assert f"threshold          {calibrated:.4f} on the normalised score" in plain
    assert "threshold override" not in plain and "fit threshold" not in plain and "graph threshold" not in plain
    model.set_threshold(80.0).save_threshold()
    moved = run("info", folder).stdout
    assert "threshold          80.0000 on the normalised score" in moved
    assert "threshold override 80.0" in moved
    assert f"fit threshold      {calibrated:.4f} (calibrated at fit" in moved
    assert f"graph threshold    {calibrated:.4f} (the graph's own is_anomalous output" in moved


def test_an_export_keeps_the_fits_library_versions(cli_export, fitted):
    # the sidecar carries the model file's record of the software the fit ran on; the runtime's
    # info (and so the service's model description) reports it; an older sidecar has none
    from patchbank.export.runtimes import ExportedModel

    tmp, _ = cli_export
    data = read_sidecar(tmp / "ex")
    assert data["fitted_with"] == fitted.info()["fitted_with"]
    assert ExportedModel(tmp / "ex", "onnx", progress=False).info()["fitted_with"] == data["fitted_with"]


def test_sidecar_naming_a_missing_graph_or_not_json_is_refused(cli_export, tmp_path):
    folder, _ = _sidecar_folder(cli_export, tmp_path)
    (folder / "model.xml").unlink()
    with pytest.raises(PatchbankError, match="model.xml is missing"):
        ExportedModel(folder, "openvino")
    (folder / SIDECAR_NAME).write_text("{not json")
    with pytest.raises(PatchbankError, match="not a readable JSON sidecar"):
        ExportedModel(folder, "onnx")
    with pytest.raises(PatchbankError, match="unknown runtime"):
        folder2, _ = _sidecar_folder(cli_export, tmp_path / "b")
        ExportedModel(folder2, "tensorrt")


def test_an_onnx_export_needs_a_utf8_folder_path(cli_export, fitted, synthetic_root, tmp_path):
    # ONNX Runtime opens files by UTF-8 names only: an ONNX export to a folder whose path holds
    # other bytes is refused before the work, and such a folder (moved there) is refused on load
    # instead of failing inside ONNX Runtime; OpenVINO reads any path
    import os
    from pathlib import Path

    latin1 = Path(os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9"))
    with pytest.raises(PatchbankError, match=r"ONNX export folder path is not valid UTF-8: .*caf\\xe9.*rename it"):
        export_model(fitted, latin1 / "ex", ["onnx"])
    assert not latin1.exists()
    shutil.copytree(cli_export[0] / "ex", latin1 / "moved")
    with pytest.raises(PatchbankError, match="ONNX export folder path is not valid UTF-8"):
        ExportedModel(latin1 / "moved", "onnx")
    items, _ = split_items(synthetic_root)
    ref = ExportedModel(cli_export[0] / "ex", "openvino", progress=False).predict(items[:2])
    got = ExportedModel(latin1 / "moved", "openvino", progress=False).predict(items[:2])
    assert [p.score for p in got] == [p.score for p in ref]


def test_missing_extra_is_one_line():
    from patchbank.cli.export import check_extra

    with pytest.raises(PatchbankError, match=r"pip install 'patchbank\[export\]'"):
        check_extra(["no_such_module_patchbank_test"])


@pytest.mark.realdata
@pytest.mark.skipif(not (MTD / "train" / "good").is_dir(), reason=f"real data not found at {MTD}")
def test_mtd_subset_default_preset_parity(tmp_path):
    from patchbank.io.images import list_images

    train = list_images(MTD / "train" / "good")[::19][:40]
    test = (list_images(MTD / "test" / "good")[::40][:8] + list_images(MTD / "test" / "blowhole")[::10][:4]
            + list_images(MTD / "test" / "crack")[::10][:4])
    det = Detector.from_preset("patchbank", progress=False).fit(train)
    export_model(det, tmp_path / "ex", ["onnx", "openvino"])
    check_all(tmp_path / "ex", test, det.predict(test, batch_size=8))


def test_a_faiss_model_is_exported_with_the_exact_search_and_says_so(fitted):
    from types import SimpleNamespace

    from patchbank.export.graph import search_note

    assert search_note(fitted) is None          # exact: the graph computes what torch computes
    note = search_note(SimpleNamespace(search_kind_="faiss-ivf"))
    assert "faiss-ivf" in note and "exactly" in note


def test_operating_point_is_the_detectors(cli_export, synthetic_root):
    """The sidecar's calibration arrays rebuild the Detector's operating point: thresholds, region
    level, heatmap range; a moved threshold decides like the Detector's (an export of a moved
    detector starts at its threshold: test_crop_hybrid_topk_fp16_bank_external_data)."""
    tmp, _ = cli_export
    det = Detector.load(tmp / "m.patchbank", progress=False)
    model = ExportedModel(tmp / "ex", "onnx", progress=False)
    assert model.threshold_ == model.calibrated_threshold_ == det.calibrated_threshold_
    assert model.sidecar["threshold_override"] is None
    for t in (None, -1.0, 0.5, 3.0):
        assert model.map_level(t) == det.map_level(t)
    assert model.heatmap_range() == det.heatmap_range()
    items, _ = split_items(synthetic_root)
    ref = det.predict(items, batch_size=8)
    t = float(np.median([r.normalized_score for r in ref]))
    det.set_threshold(t)
    model.set_threshold(t)
    assert model.map_level() == det.map_level() and model.threshold_ == t
    assert_parity(model.predict(items, batch_size=8), det.predict(items, batch_size=8))
    with pytest.raises(PatchbankError, match="finite number"):
        model.set_threshold(float("nan"))


def test_an_export_decides_with_the_whole_image_check_as_the_detector_does(synthetic_root, tmp_path):
    """A model with the whole-image and focus checks (the default preset's): the sidecar carries
    the map means, the training images' blurriness and both thresholds, both runtimes flag what
    the detector flags, the graph's own is_anomalous holds both checks, a moved threshold leaves
    them, and a sidecar without the means or the blurriness is refused."""
    with pytest.warns(UserWarning, match="calibrated on only"):
        whole = Detector.from_preset("lmf-core", progress=False, whole_image_check=True,
                                     focus_check=True, **FAST).fit(synthetic_root / "train" / "good")
    goods = sorted((synthetic_root / "test" / "good").glob("*.png"))
    blurred = [Image.open(p).convert("RGB").filter(ImageFilter.GaussianBlur(6)) for p in goods]
    data = export_model(whole, tmp_path / "ex", ["onnx", "openvino"])
    assert data["map_threshold"] == whole.calibration_.map_threshold_
    assert len(data["calibration_map_means"]) == whole.calibration_.map_means_.size
    assert data["blur_threshold"] == whole.calibration_.blur_threshold_
    assert data["training_blurriness"] == whole.calibration_.training_blurriness_.tolist()
    # a slight blur: out of focus (blurrier than every training image) with a map mean that
    # need not be raised; the focus flag alone must carry the decision through the export
    slight = [Image.open(p).convert("RGB").filter(ImageFilter.GaussianBlur(1.5)) for p in goods[:2]]
    sharp = sorted((synthetic_root / "train" / "good").glob("*.png"))[:3]   # inside the training range
    items = blurred[:3] + slight + sharp
    ref = whole.predict(items)
    assert [p.out_of_focus for p in ref] == [True] * 5 + [False] * 3
    for runtime in ("openvino", "onnx"):
        ex = ExportedModel(tmp_path / "ex", runtime, progress=False)
        got = ex.predict(items)
        assert [p.whole_image_anomalous for p in got] == [p.whole_image_anomalous for p in ref]
        assert [p.out_of_focus for p in got] == [p.out_of_focus for p in ref]
        assert [p.is_anomalous for p in got] == [p.is_anomalous for p in ref]
        assert [p.map_mean for p in got] == pytest.approx([p.map_mean for p in ref], rel=1e-5)
        assert [p.blurriness for p in got] == [p.blurriness for p in ref]   # the same torch arithmetic
        assert ex.info()["blur_threshold"] == whole.calibration_.blur_threshold_
    # the graph's own is_anomalous output holds both checks too
    x, _ = next(iter(ex.stream(items[:5])))
    assert np.asarray(ex.runtime.run(x.numpy())[2]).tolist() == [True] * 5
    ex.set_threshold(1e9)
    assert all(p.is_anomalous for p in ex.predict(items[:3]))
    # a sidecar that lost its means is refused in one line
    sidecar = json.loads((tmp_path / "ex" / SIDECAR_NAME).read_text())
    sidecar.pop("calibration_map_means")
    (tmp_path / "ex" / SIDECAR_NAME).write_text(json.dumps(sidecar))
    with pytest.raises(PatchbankError, match="whole_image_check needs calibration_map_means"):
        read_sidecar(tmp_path / "ex")
    sidecar = json.loads((tmp_path / "ex" / SIDECAR_NAME).read_text())
    sidecar["config"]["whole_image_check"] = False
    sidecar.pop("map_threshold")
    sidecar["training_blurriness"] = sidecar["training_blurriness"][:-1] + [float("nan")]
    (tmp_path / "ex" / SIDECAR_NAME).write_text(json.dumps(sidecar))
    with pytest.raises(PatchbankError, match="focus_check needs training_blurriness"):
        read_sidecar(tmp_path / "ex")
    sidecar["config"]["focus_check"] = False
    sidecar["training_blurriness"] = [1.0]
    (tmp_path / "ex" / SIDECAR_NAME).write_text(json.dumps(sidecar))
    with pytest.raises(PatchbankError, match="training_blurriness / blur_threshold are present but"):
        read_sidecar(tmp_path / "ex")


def test_two_exports_into_one_folder_at_once_never_both_succeed(cli_export, tmp_path):
    """Two ``patchbank export`` processes into one folder (session 29: both said "wrote", and the
    folder held one model's files, either one): one export writes the folder at a time (a lock on
    it, the target checked again under it), so without --overwrite the second is refused; the
    folder is one export whose files match its sidecar."""
    import subprocess
    import sys

    tmp, _ = cli_export
    cmd = lambda model, *extra: [sys.executable, "-m", "patchbank.cli", "export", str(model), "-o",   # noqa: E731
                                 str(tmp_path / "ex"), "-q", *extra]
    procs = [subprocess.Popen(cmd(tmp / "m.patchbank"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    results = [(p.communicate(timeout=600)[1], p.returncode)[::-1] for p in procs]
    assert sorted(code for code, _ in results) == [0, 2], results
    assert "already exists" in next(err for code, err in results if code == 2)
    ExportedModel(tmp_path / "ex", "onnx", progress=False)     # the files match the sidecar


# ----------------------------------------------------------------------------- session 31
@pytest.fixture(scope="module")
def fp16_external_export(fitted, tmp_path_factory):
    """The session's float32 model exported as ONNX with a float16 bank, its weights as external
    data (forced by a tiny threshold); (model file, export folder, sidecar)."""
    tmp = tmp_path_factory.mktemp("fp16_external")
    fitted.save(tmp / "m.patchbank")
    data = export_model(fitted, tmp / "ex", ["onnx"], bank_dtype="float16", external_over=1)
    assert data["external_data"] and sorted(data["files"]) == ["model.onnx", "model.onnx.data"]
    return tmp / "m.patchbank", tmp / "ex", data


def test_a_graph_reading_external_data_the_sidecar_does_not_list_is_refused(fp16_external_export,
                                                                          synthetic_root, tmp_path):
    """Session 31: a sidecar edited to say the ONNX graph has no external data (model.onnx.data
    dropped from files and graph_sha256, external_data false) let ONNX Runtime, and OpenVINO
    reading the ONNX graph, read the unchecked data file the graph names.  The runtime reads the
    locations from the graph itself: each must be the data file the sidecar lists, and a listed
    data file must be the one the graph reads."""
    from patchbank.export.onnx_writer import external_data_locations
    from patchbank.export.sidecar import check_external_data

    _, source, _ = fp16_external_export
    folder = tmp_path / "ex"
    shutil.copytree(source, folder)
    assert external_data_locations(folder / "model.onnx") == {"model.onnx.data"}
    for runtime in RUNTIMES:                    # as exported: both runtimes load it
        assert ExportedModel(folder, runtime, progress=False).runtime.graph_format == "onnx"
    data = json.loads((folder / SIDECAR_NAME).read_text())
    data["files"].pop("model.onnx.data")
    data["graph_sha256"].pop("model.onnx.data")
    data["external_data"] = False
    _write(folder, data)
    _flip_byte(folder / "model.onnx.data")      # what the edit would let through unchecked
    needle = (f"{folder / SIDECAR_NAME}: the graph model.onnx references external data 'model.onnx.data' "
              f"that the sidecar does not list as its data file; export again")
    for runtime in RUNTIMES:
        with pytest.raises(PatchbankError) as err:
            ExportedModel(folder, runtime, progress=False)
        assert str(err.value) == needle
        result = run("predict", folder, synthetic_root / "test" / "good", "-o", tmp_path / f"p_{runtime}",
                     "--runtime", runtime)
        assert result.exit_code == 2 and result.stderr.strip() == f"error: {needle}"
    # a listed data file the graph does not read, and a location that is another listed file
    with pytest.raises(PatchbankError, match="lists model.onnx.data but the graph model.onnx does not read it"):
        check_external_data(folder, {"files": {"model.onnx": 1, "model.onnx.data": 1}}, set())
    with pytest.raises(PatchbankError, match="references external data 'model.bin' that the sidecar"):
        check_external_data(folder, {"files": {"model.onnx": 1, "model.xml": 1, "model.bin": 1}}, {"model.bin"})
    (tmp_path / "junk.onnx").write_bytes(b"\xff" * 64)
    with pytest.raises(PatchbankError, match="junk.onnx is not a readable ONNX graph"):
        external_data_locations(tmp_path / "junk.onnx")


def test_external_data_is_found_in_every_tensor_an_onnx_graph_holds(tmp_path):
    """The locations are read from initializers, sparse initializers, node attribute tensors,
    subgraphs and functions; a tensor marked external without a location names ''."""
    import onnx
    from onnx import TensorProto, helper

    from patchbank.export.onnx_writer import external_data_locations

    def external(name, location):
        t = helper.make_tensor(name, TensorProto.FLOAT, [1], [0.0])
        t.ClearField("float_data")
        t.data_location = TensorProto.EXTERNAL
        if location is not None:
            t.external_data.add(key="location", value=location)
        return t

    sub = helper.make_graph([], "sub", [], [helper.make_tensor_value_info("s", TensorProto.FLOAT, [1])],
                            [external("s", "in_subgraph.bin")])
    nodes = [helper.make_node("Constant", [], ["c"], value=external("c", "in_attribute.bin")),
             helper.make_node("If", ["b"], ["y"], then_branch=sub, else_branch=sub)]
    sparse = helper.make_sparse_tensor(external("v", "in_sparse.bin"),
                                       helper.make_tensor("i", TensorProto.INT64, [1], [0]), [4])
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("b", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
                              [external("w", "in_initializer.bin"), external("u", None)],
                              sparse_initializer=[sparse])
    model = helper.make_model(graph)
    model.functions.add().node.append(helper.make_node("Constant", [], ["f"], value=external("f", "in_function.bin")))
    (tmp_path / "m.onnx").write_bytes(model.SerializeToString())
    assert external_data_locations(tmp_path / "m.onnx") == {
        "in_subgraph.bin", "in_attribute.bin", "in_sparse.bin", "in_initializer.bin", "", "in_function.bin"}
    assert onnx.load(str(tmp_path / "m.onnx"), load_external_data=False).graph.name == "g"


def test_a_float16_bank_of_a_float32_model_is_noted(fp16_external_export, fitted):
    """Session 31: ``--bank-dtype float16`` on a float32 model rounds the bank (scores up to ~4e-5
    relative, normalised scores ~5e-4 apart) and said nothing; the sidecar's notes say so, and
    ``patchbank export`` and ``patchbank info`` print them.  A bank stored in its own dtype, or
    a float16 bank stored as float32 (exact), is not noted."""
    from types import SimpleNamespace

    from patchbank.export.graph import bank_dtype_note

    _, folder, data = fp16_external_export
    note = bank_dtype_note(fitted, "float16")
    assert data["notes"] == [note] and "float32" in note and "float16" in note and "differ slightly" in note
    assert read_sidecar(folder)["notes"] == [note]
    info = run("info", folder)
    assert info.exit_code == 0 and f"{'note':<18} {note}" in info.stdout
    assert bank_dtype_note(fitted, "float32") is None
    assert bank_dtype_note(SimpleNamespace(config=SimpleNamespace(bank_dtype="float16")), "float32") is None


def test_an_export_never_writes_its_own_model_or_weights_file(fp16_external_export, fitted, tmp_path):
    """Session 31: ``export out/model.onnx -o out --overwrite`` (a model file named like an export
    file in the export folder) replaced its own input with the graph.  Refused before the model
    is loaded, whatever --overwrite says, for the model file and the --weights file, each name an
    export writes; the library takes the files read as ``reads=``."""
    model, _, _ = fp16_external_export
    for name in ("model.onnx", "model.onnx.data", "model.xml", "model.bin", SIDECAR_NAME):
        out = tmp_path / name.replace(".", "_")
        out.mkdir()
        shutil.copy(model, out / name)
        before = (out / name).read_bytes()
        for args in ([out / name], [model, "--weights", out / name]):
            result = run("export", *args, "-o", out, "--overwrite", "--format", "onnx", "--format", "openvino")
            assert result.exit_code == 2, result.output
            assert result.stderr.strip() == (f"error: the output {out / name} is the input {out / name} (the same "
                                              f"file): writing it would destroy that input; choose another output path")
        assert (out / name).read_bytes() == before and [p.name for p in out.iterdir()] == [name]
    with pytest.raises(PatchbankError, match="is the input"):
        export_model(fitted, model.parent, ["onnx"], overwrite=True, reads=[model.parent / "." / "model.onnx"])
    (tmp_path / "linked").mkdir()
    (tmp_path / "linked" / "model.bin").symlink_to(model)        # links resolved
    with pytest.raises(PatchbankError, match="is the input"):
        export_model(fitted, tmp_path / "linked", ["openvino"], overwrite=True, reads=[model])


def test_an_export_file_name_taken_by_a_folder_is_refused_before_any_work(fp16_external_export, fitted,
                                                                          tmp_path, monkeypatch):
    """Session 31: ``export --overwrite`` into a folder where ``model.onnx.data`` or ``model.xml``
    is a folder ended in an IsADirectoryError traceback, after removing part of the earlier
    export.  Refused in one line before any work (and again under the folder's lock, where a
    folder that appeared meanwhile leaves the earlier export whole)."""
    import patchbank.export.exporter as exporter

    model, source, _ = fp16_external_export
    for name in ("model.onnx.data", "model.xml", SIDECAR_NAME, SIDECAR_NAME + ".tmp"):
        out = tmp_path / name.replace(".", "_")
        (out / name).mkdir(parents=True)
        with pytest.raises(PatchbankError, match=re.escape(f"{out / name} is not a file (a folder?); an export "
                                                           f"writes that name")):
            export_model(fitted, out, ["onnx"], overwrite=True)
        assert [p.name for p in out.iterdir()] == [name]
    result = run("export", model, "-o", out, "--overwrite")
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
    assert f"{out / (SIDECAR_NAME + '.tmp')} is not a file" in result.stderr
    # a folder made between the first check and the lock: the earlier export is left whole
    folder = tmp_path / "earlier"
    shutil.copytree(source, folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    make_folder = exporter.make_folder

    def and_a_folder(path):
        make_folder(path)
        (path / "model.xml").mkdir()
        return path

    monkeypatch.setattr(exporter, "make_folder", and_a_folder)
    monkeypatch.setattr(exporter, "ExportGraph", lambda *args: None)     # refused before it is used
    monkeypatch.setattr(exporter, "export_program", lambda *args: None)
    with pytest.raises(PatchbankError, match="model.xml is not a file"):
        export_model(fitted, folder, ["onnx", "openvino"], overwrite=True)
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before
    ExportedModel(folder, "onnx", progress=False)


def test_a_file_of_an_export_folder_given_as_the_model_says_to_give_the_folder(fp16_external_export,
                                                                               synthetic_root, tmp_path):
    """Session 31: ``predict ex/patchbank_export.json IMAGES --runtime onnx`` said the sidecar
    was a model file to run 'patchbank export' on; torch said it was no readable model file."""
    _, folder, _ = fp16_external_export
    images = synthetic_root / "test" / "good"
    cases = [(folder / SIDECAR_NAME, "onnx", f"{folder / SIDECAR_NAME} is the sidecar of the export folder "
                                             f"{folder}: give the folder itself ({folder}) to --runtime onnx"),
             (folder / "model.onnx", "openvino", f"{folder / 'model.onnx'} is a file of the export folder "
                                                 f"{folder}: give the folder itself ({folder}) to --runtime openvino"),
             (folder / SIDECAR_NAME, "torch", f"{folder / SIDECAR_NAME} is the sidecar of an export folder, not a "
                                              f"model file: run the folder {folder} with --runtime onnx or "
                                              f"--runtime openvino")]
    for model, runtime, message in cases:
        result = run("predict", model, images, "-o", tmp_path / runtime, "--runtime", runtime)
        assert result.exit_code == 2 and result.stderr.strip() == f"error: {message}", result.output
