"""``patchbank serve EXPORT_DIR --runtime onnx|openvino``: an export folder served like a model file.

A small model (efficientnet_lite0, 112 px resized, 96 px centre crop) is saved and exported to
ONNX and OpenVINO, and served by a real uvicorn process (``ServerProcess``) talked to with httpx.
Its answers are compared with the torch model's: the same model file run in-process through the
service's own registry and response writer (what ``patchbank serve MODEL`` answers): scores
within 1e-4 relative, equal decisions, heatmap / mask / polygons of the same shape and nearly
equal content, per-request thresholds, PUT / DELETE threshold (persist writes the sidecar's
``threshold_override``, which a reload applies), ``GET /v2/models/{name}``, and the CLI's
one-line refusals of a model file with an export runtime and of an export folder with torch.
"""
from __future__ import annotations

import base64
import contextlib
import io
import json
import shutil
import time

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import assert_one_line_error, split_items

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")
pytest.importorskip("onnxscript")

from patchbank.cli import cli   # noqa: E402
from patchbank.detector import Detector   # noqa: E402
from patchbank.errors import PatchbankError   # noqa: E402
from patchbank.export.exporter import export_model   # noqa: E402
from patchbank.export.runtimes import ExportedModel   # noqa: E402
from patchbank.export.sidecar import SIDECAR_NAME   # noqa: E402
from patchbank.io.heatmap import png_bytes   # noqa: E402
from patchbank.io.images import decode_bytes   # noqa: E402
from patchbank.service.codec import InferOptions   # noqa: E402
from patchbank.service.process import ServerProcess   # noqa: E402
from patchbank.io.model_file import file_sha256  # noqa: E402
from patchbank.service.registry import ModelRegistry  # noqa: E402
from patchbank.service.results import image_result   # noqa: E402
from patchbank.service.settings import ModelSpec, ServeSettings, parse_model_arg   # noqa: E402

CROP = dict(backbone="efficientnet_lite0", image_size=112, crop_size=96, batch_size=8)
REL = 1e-4
pytestmark = pytest.mark.filterwarnings("ignore:the threshold is calibrated on only")


@pytest.fixture(scope="module")
def models(synthetic_root, tmp_path_factory):
    """The model file, its export (ONNX + OpenVINO), a copy of the export that PUT may rewrite,
    and request images (test images, one of them resized to 180 x 120)."""
    tmp = tmp_path_factory.mktemp("serve_runtime")
    Detector.from_preset("lmf-core", progress=False, **CROP).fit(synthetic_root / "train" / "good").save(
        tmp / "m.patchbank")
    det = Detector.load(tmp / "m.patchbank", progress=False)
    export_model(det, tmp / "ex", ["onnx", "openvino"])
    shutil.copytree(tmp / "ex", tmp / "scratch")
    items, _ = split_items(synthetic_root)
    named = {p.name: p.read_bytes() for p in items[:2] + items[-3:]}
    named["wide.png"] = png_bytes(np.asarray(Image.open(items[-1]).convert("RGB").resize((180, 120), Image.BILINEAR)))
    return {"tmp": tmp, "file": tmp / "m.patchbank", "ex": tmp / "ex", "scratch": tmp / "scratch",
            "named": named}


@contextlib.contextmanager
def _served(models, runtime: str):
    """An httpx client of a real server of ``ex`` and ``scratch`` under ``runtime``; afterwards,
    no request reached a 500 (it would log a traceback)."""
    log = models["tmp"] / f"{runtime}.log"
    args = ["--runtime", runtime, "--quiet", "--threads", "1", "--max-wait-ms", "20"]
    with ServerProcess([f"ex={models['ex']}", models["scratch"]], args, log=log, timeout=120) as proc, \
            httpx.Client(base_url=proc.url, timeout=60) as client:
        yield client
    assert "Traceback" not in log.read_text(errors="replace")


@pytest.fixture(scope="module")
def server(models):
    with _served(models, "onnx") as client:
        yield client


@pytest.fixture(scope="module")
def torch_side(models):
    """The torch model served in-process: the registry and response writer ``patchbank serve
    MODEL`` runs, so its entries are what the torch server answers."""
    registry = ModelRegistry(ServeSettings(models=(ModelSpec("m", str(models["file"])),))).load()
    registry.ready = True
    served = registry.get("m")

    def answer(named: dict[str, bytes], **options) -> list[dict]:
        images = [decode_bytes(data, name, draft_size=served.read_size) for name, data in named.items()]
        scored = registry.predict("m", None, images)
        opts = InferOptions(**options)
        return [image_result(served, name, s, opts, time.perf_counter()) for name, s in zip(named, scored)]
    return answer, served.model


def _infer(client, named: dict[str, bytes], model: str = "ex", **params) -> list[dict]:
    files = [("files", (name, data, "image/png")) for name, data in named.items()]
    r = client.post(f"/v2/models/{model}/infer", params=params, files=files)
    assert r.status_code == 200, r.text
    return r.json()["results"]


def _same_scores(got: list[dict], want: list[dict]) -> None:
    for g, w in zip(got, want, strict=True):
        assert (g["name"], g["width"], g["height"]) == (w["name"], w["width"], w["height"])
        assert g["score"] == pytest.approx(w["score"], rel=REL)
        assert g["normalized_score"] == pytest.approx(w["normalized_score"], rel=REL, abs=1e-4)
        assert g["is_anomalous"] == w["is_anomalous"] and g["threshold"] == pytest.approx(w["threshold"])
        assert (g["category"], g["routed"]) == (None, False)


def _image(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))


def _poly_boxes(polygons) -> list[np.ndarray]:
    return sorted((np.r_[np.min(p, 0), np.max(p, 0)] for p in map(np.asarray, polygons)),
                  key=lambda b: tuple(b))


def test_a_jpeg_upload_is_read_as_the_export_reads_the_file(server, models, tmp_path):
    """The export runtime's server decodes a JPEG at the reduced scale its file reader uses
    (450 px toward the 112 px resize: 1/4), so it answers as ``ExportedModel.predict`` on the file."""
    first = next(iter(models["named"].values()))
    buf = io.BytesIO()
    Image.open(io.BytesIO(first)).convert("RGB").resize((450, 450), Image.BILINEAR).save(buf, "JPEG")
    (tmp_path / "big.jpg").write_bytes(buf.getvalue())
    exported = ExportedModel(models["ex"], "onnx", progress=False)
    want, = exported.predict([tmp_path / "big.jpg"])
    full, = exported.predict([decode_bytes(buf.getvalue(), "big.jpg")])   # a full-scale decode
    assert abs(full.score - want.score) > 10 * REL * abs(want.score)      # reads other pixels
    r = server.post("/v2/models/ex/infer", files=[("files", ("big.jpg", buf.getvalue(), "image/jpeg"))])
    assert r.status_code == 200, r.text
    got = r.json()["results"][0]
    assert (got["width"], got["height"]) == (450, 450)
    assert got["score"] == pytest.approx(want.score, rel=REL)
    assert got["normalized_score"] == pytest.approx(want.normalized_score, rel=REL, abs=1e-4)


def test_results_equal_the_torch_servers(server, models, torch_side):
    answer, det = torch_side
    got, want = _infer(server, models["named"]), answer(models["named"])
    _same_scores(got, want)
    assert {g["is_anomalous"] for g in got} == {True, False}   # both decisions are exercised
    # a per-request threshold: decisions at that threshold, the model's own unchanged
    t = float(np.median([g["normalized_score"] for g in got]))
    _same_scores(_infer(server, models["named"], threshold=t), answer(models["named"], threshold=t))
    _same_scores(_infer(server, models["named"]), want)


def test_heatmap_mask_and_polygons_match_the_torch_model(server, models, torch_side):
    answer, det = torch_side
    named = {"wide.png": models["named"]["wide.png"], "spot": models["named"][list(models["named"])[-2]]}
    (w_score,) = answer({"wide.png": named["wide.png"]})
    low = w_score["normalized_score"] - 0.5      # the wide image is anomalous at this threshold
    for mask in ("png", "polygons"):
        got = _infer(server, named, heatmap="true", mask=mask, threshold=low)
        want = answer(named, heatmap=True, mask=mask, threshold=low)
        _same_scores(got, want)
        for g, w in zip(got, want):
            assert g["heatmap_range"] == pytest.approx(w["heatmap_range"], rel=1e-9)
            heat_g, heat_w = _image(g["heatmap_png"]), _image(w["heatmap_png"])
            assert heat_g.shape == heat_w.shape == (g["height"], g["width"], 4)
            assert (heat_g[..., 3] == heat_w[..., 3]).all()          # the same inspected area
            assert np.abs(heat_g.astype(int) - heat_w.astype(int)).max() <= 3
            if mask == "png":
                m_g, m_w = _image(g["mask_png"]), _image(w["mask_png"])
                assert m_g.shape == m_w.shape == (g["height"], g["width"])
                assert (m_g == m_w).mean() > 0.995
            else:
                assert len(g["polygons"]) == len(w["polygons"]) and g["polygons"]
                for bg, bw in zip(_poly_boxes(g["polygons"]), _poly_boxes(w["polygons"])):
                    assert np.abs(bg - bw).max() <= 1.5
    assert det.heatmap_range() == pytest.approx(tuple(got[0]["heatmap_range"]), rel=1e-9)


def test_model_description(server, models, torch_side):
    _, det = torch_side
    d = server.get("/v2/models/ex").json()
    info = det.info()
    assert (d["name"], d["kind"], d["runtime"], d["backbone"]) == ("ex", "single", "onnx", "efficientnet_lite0")
    assert d["input_size"] == [96, 96] and d["image_size"] == [112, 112] and d["crop_size"] == [96, 96]
    assert (d["bank_entries"], d["bank_dim"], d["bank_bytes"]) == (info["bank_entries"], info["bank_dim"],
                                                                   info["bank_bytes"])
    assert d["threshold"] == d["calibrated_threshold"] == pytest.approx(det.threshold_, rel=1e-12)
    assert d["format_version"] == 3 and d["patchbank_version"] and d["categories"] is None
    assert d["sha256"] == file_sha256(models["ex"] / SIDECAR_NAME) and d["sha256_file"] == SIDECAR_NAME
    assert d["graph_sha256"] == {"model.onnx": file_sha256(models["ex"] / "model.onnx")}
    assert d["path"] == str(models["ex"]) and d["batching"]["enabled"]
    listed = server.get("/v2/models").json()["models"]
    assert [m["name"] for m in listed] == ["ex", "scratch"] and all(m["ready"] for m in listed)
    assert server.get("/v2/health/ready").status_code == 200


def test_put_and_delete_threshold_and_persist_into_the_sidecar(server, models, torch_side):
    answer, _ = torch_side
    named, sidecar = models["named"], models["scratch"] / SIDECAR_NAME
    before = file_sha256(sidecar)
    scores = [g["normalized_score"] for g in _infer(server, named, model="scratch")]
    t = float(np.median(scores))
    d = server.put("/v2/models/scratch/threshold", json={"threshold": t}).json()
    assert d["threshold"] == pytest.approx(t) and d["calibrated_threshold"] != d["threshold"]
    got = _infer(server, named, model="scratch")
    assert [g["is_anomalous"] for g in got] == [not (s <= t) for s in scores]
    assert all(g["threshold"] == pytest.approx(t) for g in got)
    _same_scores(_infer(server, named), answer(named))          # the other model did not move
    assert file_sha256(sidecar) == before                       # not persisted
    # persist: the sidecar records it, its checks still pass, a reload applies it
    d = server.put("/v2/models/scratch/threshold", json={"threshold": t, "persist": True}).json()
    assert json.loads(sidecar.read_text())["threshold_override"] == pytest.approx(t)
    assert d["sha256"] == file_sha256(sidecar) != before
    assert ExportedModel(models["scratch"], "onnx", progress=False).threshold_ == pytest.approx(t)
    assert not list(models["scratch"].glob("*.tmp"))
    # a bad threshold is refused and changes nothing
    r = server.put("/v2/models/scratch/threshold", json={"threshold": "high"})
    assert 400 <= r.status_code < 500 and list(r.json()) == ["error"]
    assert server.get("/v2/models/scratch").json()["threshold"] == pytest.approx(t)
    # DELETE with persist: back to the calibrated threshold, the override null again
    d = server.delete("/v2/models/scratch/threshold", params={"persist": "true"}).json()
    assert d["threshold"] == d["calibrated_threshold"]
    assert json.loads(sidecar.read_text())["threshold_override"] is None
    assert file_sha256(sidecar) == before                       # the sidecar as exported
    _same_scores(_infer(server, named, model="scratch"), answer(named))
    # a sidecar changed on disk since the server loaded it (exported again) is never overwritten
    original = sidecar.read_text()
    sidecar.write_text(json.dumps(dict(json.loads(original), notes=["exported again"])))
    try:
        r = server.put("/v2/models/scratch/threshold", json={"threshold": t, "persist": True})
        assert r.status_code == 503 and "changed since it was loaded" in r.json()["error"]
        assert json.loads(sidecar.read_text())["threshold_override"] is None
        assert server.get("/v2/models/scratch").json()["threshold"] == d["calibrated_threshold"]
    finally:
        sidecar.write_text(original)


def test_a_threshold_persisted_into_the_sidecar_reaches_every_process_serving_the_export(models):
    """Two registries of one export folder stand for two worker processes: what one persists
    into the sidecar the other takes at its next call; a sidecar that now describes another
    export (its other keys changed) is not followed and not written over."""
    folder = models["tmp"] / "follow_ex"
    shutil.copytree(models["ex"], folder)
    specs = (ModelSpec("ex", str(folder)),)
    a, b = (ModelRegistry(ServeSettings(models=specs, runtime="onnx", threads=1, workers=2)).load()
            for _ in range(2))
    a.ready = b.ready = True
    calibrated = b.describe("ex")["calibrated_threshold"]
    image = decode_bytes(next(iter(models["named"].values())), "x.png")
    for writer, reader, value in ((a, b, 4.75), (b, a, -0.5), (a, b, None)):
        writer.set_threshold("ex", value, persist=True)
        want = calibrated if value is None else value
        assert reader.describe("ex")["threshold"] == pytest.approx(want)
        assert reader.predict("ex", None, [image])[0].threshold == pytest.approx(want)
    sidecar = folder / SIDECAR_NAME
    sidecar.write_text(json.dumps(dict(json.loads(sidecar.read_text()), threshold_override=8.0,
                                       notes=["exported again"])))
    assert b.describe("ex")["threshold"] == pytest.approx(calibrated)    # another export: not taken
    with pytest.raises(PatchbankError, match="changed since it was loaded"):
        b.set_threshold("ex", 1.0, persist=True)
    assert json.loads(sidecar.read_text())["threshold_override"] == 8.0


def test_openvino_server_gives_the_same_answers(models, torch_side):
    answer, _ = torch_side
    named = dict(list(models["named"].items())[:3])
    with _served(models, "openvino") as c:
        _same_scores(_infer(c, named, mask="png"), answer(named, mask="png"))
        d = c.get("/v2/models/ex").json()
        assert d["runtime"] == "openvino" and set(d["graph_sha256"]) == {"model.xml", "model.bin"}


def test_the_cli_refuses_a_wrong_runtime_in_one_line(models):
    def serve(*args):
        r = CliRunner().invoke(cli, ["serve", *map(str, args), "--port", "0"])
        return r.exit_code, r.stderr

    assert_one_line_error(*serve(models["file"], "--runtime", "onnx"), "is a model file",
                          "patchbank export", "drop --runtime")
    assert_one_line_error(*serve(models["ex"]), "is an export folder", "--runtime onnx")
    assert_one_line_error(*serve(f"x={models['ex']}", "--runtime", "torch"), "is an export folder")
    assert_one_line_error(*serve(models["ex"], "--runtime", "openvino", "--device", "cuda"), "runs on the CPU")
    assert_one_line_error(*serve(models["tmp"] / "nope", "--runtime", "onnx"), "not found")
    # a folder that is no export: said so, not "is an export folder" (predict and export too)
    plain = models["tmp"] / "plain"
    plain.mkdir(exist_ok=True)
    assert_one_line_error(*serve(plain), "is a folder, not a model file", "--runtime onnx")
    for args in (["predict", plain, plain, "-o", plain / "o"],
                 ["predict", plain, plain, "-o", plain / "o", "--engine", "ray"]):
        r = CliRunner().invoke(cli, [str(a) for a in args])
        assert_one_line_error(r.exit_code, r.stderr, "is a folder, not a model file")
    r = CliRunner().invoke(cli, ["predict", str(models["ex"]), str(plain), "-o", str(plain / "o")])
    assert_one_line_error(r.exit_code, r.stderr, "is an export folder", "--runtime onnx")
    r = CliRunner().invoke(cli, ["export", str(models["ex"]), "-o", str(plain / "e")])
    assert_one_line_error(r.exit_code, r.stderr, "is a folder; export reads a .patchbank model file")
    # a wrong one among several is refused before any model loads
    assert_one_line_error(*serve(models["ex"], models["file"], "--runtime", "onnx"), "is a model file")
    assert parse_model_arg(str(models["ex"])).name == "ex"      # an export folder is named after itself


def test_an_export_without_a_matching_calibration_is_refused(models, tmp_path):
    folder = tmp_path / "ex"
    shutil.copytree(models["ex"], folder)
    data = json.loads((folder / SIDECAR_NAME).read_text())
    data["calibration_base_scores"] = [v * 1.5 for v in data["calibration_base_scores"]]
    (folder / SIDECAR_NAME).write_text(json.dumps(data))
    with pytest.raises(PatchbankError, match="calibration arrays give score_mean"):
        ExportedModel(folder, "onnx", progress=False)
