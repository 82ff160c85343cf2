"""``patchbank serve``: a real uvicorn process (``python -m patchbank.cli serve``) on a free
127.0.0.1 port, talked to with httpx.

Its answers are compared with the library's (``Detector.predict`` / ``MultiDetector.predict``
on the same decoded images); every bad request must be a 4xx with a one-line JSON ``error``,
after which the server still answers.
"""
from __future__ import annotations

import base64
import io
import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageFilter

from conftest import assert_one_line_error, dds_with_unknown_pixel_format, split_items, stripes_images

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from patchbank.cli import cli   # noqa: E402
from patchbank.detector import Detector   # noqa: E402
from patchbank.errors import PatchbankError   # noqa: E402
from patchbank.io.image_coords import region_mask, to_original   # noqa: E402
from patchbank.io.images import decode_bytes   # noqa: E402
from patchbank.multi import MultiDetector   # noqa: E402
from patchbank.service.errors import ServiceError   # noqa: E402
from patchbank.io.model_file import file_sha256  # noqa: E402
from patchbank.service.registry import ModelRegistry  # noqa: E402
from patchbank.service.results import finite   # noqa: E402
from patchbank.service.settings import ModelSpec, ServeSettings, parse_model_arg   # noqa: E402

SMALL = dict(backbone="efficientnet_lite0", image_size=(96, 96), crop_size=(80, 80), batch_size=8)
MAX_IMAGES = 6
MAX_PIXELS = 200_000
MAX_DECODED_PIXELS = 3 * MAX_PIXELS
REL = 1e-5
pytestmark = pytest.mark.filterwarnings("ignore:the threshold is calibrated on only")


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def files(synthetic_root, tmp_path_factory):
    """The model files served (single, multi, and a copy of single that PUT may rewrite) and
    the test images as PNG bytes."""
    tmp = tmp_path_factory.mktemp("serve")
    # aspect auto: the square training images' shared H / W (1.0) is recorded, so a request
    # image of another shape is reported (other_shape); the crop is cut from the feature maps
    # (the backbone reads the whole 96 x 96 resize), and a blurred frame is flagged by its map's
    # mean (whole_image_check), as in the default preset
    single = Detector.from_preset("lmf-core", progress=False, aspect="auto", crop_at="features",
                                  whole_image_check=True, **SMALL).fit(synthetic_root / "train" / "good")
    single.save(tmp / "single.patchbank")
    shutil.copy(tmp / "single.patchbank", tmp / "scratch.patchbank")
    stripes_train = stripes_images(tmp / "stripes" / "train", 12, seed=1)
    stripes_test = stripes_images(tmp / "stripes" / "test", 3, seed=2)
    multi = MultiDetector.from_preset("lmf-core", progress=False, n_prototypes=16, **SMALL)
    multi.fit({"part": synthetic_root / "train" / "good", "stripes": stripes_train})
    multi.save(tmp / "line.patchbank")
    items, _ = split_items(synthetic_root)
    part = {p.name: p.read_bytes() for p in items[:3] + items[-2:]}
    wide = Image.open(items[-1]).convert("RGB").resize((180, 120), Image.BILINEAR)
    blurred = Image.open(items[0]).convert("RGB").filter(ImageFilter.GaussianBlur(6))
    return {"blurred": {"blurred.png": _png(blurred)},"tmp": tmp, "single": tmp / "single.patchbank", "scratch": tmp / "scratch.patchbank",
            "line": tmp / "line.patchbank", "part": part, "wide": _png(wide),
            "stripes": {f"stripe{i}.png": p.read_bytes() for i, p in enumerate(stripes_test)}}


@pytest.fixture(scope="module")
def server(files):
    from patchbank.service.process import ServerProcess

    models = [f"single={files['single']}", f"line={files['line']}", files["scratch"]]
    args = ["--quiet", "--threads", "1", "--max-request-mb", "1", "--max-images", str(MAX_IMAGES),
            "--max-pixels", str(MAX_PIXELS), "--max-decoded-pixels", str(MAX_DECODED_PIXELS),
            "--max-wait-ms", "50"]
    log = files["tmp"] / "server.log"
    proc = ServerProcess(models, args, log=log, timeout=120)
    try:
        proc.start()
        with httpx.Client(base_url=proc.url, timeout=60) as client:
            yield client
    finally:
        proc.stop()
    text = log.read_text(errors="replace")   # no request reached a 500 (it would log a traceback)
    assert "Traceback" not in text and "Exception in ASGI" not in text, text[-3000:]
    # SIGTERM stops a server cleanly however it was started (session 31: --fd, as ServerProcess
    # starts it, ended 143 "aborted (SIGTERM)", --port 0)
    assert proc.proc.returncode == 0 and "aborted" not in text


@pytest.fixture(scope="module")
def reference(files):
    """The library's own models, loaded from the same files."""
    return Detector.load(files["single"], progress=False), MultiDetector.load(files["line"], progress=False)


def _expected(model, named: dict[str, bytes], **kw):
    """The library's answers for images decoded as the model reads files (a JPEG at a reduced
    scale toward its resize; PNG as stored)."""
    size = tuple(model.config.image_size)
    return model.predict([decode_bytes(data, name, draft_size=size) for name, data in named.items()], **kw)


def _multipart(named: dict[str, bytes], part: str = "files"):
    return [(part, (name, data, "image/png")) for name, data in named.items()]


def _assert_same(got: dict, want, threshold: float):
    assert got["score"] == pytest.approx(want.score, rel=REL)
    assert got["normalized_score"] == pytest.approx(want.normalized_score, rel=REL, abs=1e-6)
    assert got["is_anomalous"] == want.is_anomalous
    assert got["whole_image_anomalous"] == want.whole_image_anomalous
    assert got["out_of_focus"] == want.out_of_focus
    assert got["map_mean"] == pytest.approx(want.map_mean, rel=REL)
    assert got["blurriness"] == pytest.approx(want.blurriness, rel=1e-9)
    assert got["threshold"] == pytest.approx(threshold, rel=1e-12)
    assert got["category"] == want.category


def _assert_error(response, *statuses, needle=""):
    """A 4xx (one of ``statuses``) whose body is exactly ``{"error": <one line>}``."""
    assert response.status_code in statuses, (response.status_code, response.text)
    body = response.json()
    assert list(body) == ["error"] and isinstance(body["error"], str) and body["error"]
    assert "\n" not in body["error"] and "Traceback" not in body["error"]
    assert needle in body["error"], body["error"]


# --------------------------------------------------------------------------------------------
# health, listing, description, docs, page

def test_health_listing_and_docs(server):
    assert server.get("/v2/health/live").json() == {"live": True}
    assert server.get("/v2/health/ready").json() == {"ready": True}
    listed = server.get("/v2/models").json()["models"]
    assert [m["name"] for m in listed] == ["single", "line", "scratch"] and all(m["ready"] for m in listed)
    assert server.get("/docs").status_code == 200
    paths = server.get("/openapi.json").json()["paths"]
    assert {"/v2/models/{name}/infer", "/v2/models/{name}/threshold", "/v2/health/ready"} <= set(paths)
    errors = paths["/v2/models/{name}/infer"]["post"]["responses"]
    assert {"200", "400", "404", "413", "415", "422"} <= set(errors)
    assert "--max-decoded-pixels" in errors["413"]["description"]
    page = server.get("/")
    if page.headers["content-type"].startswith("text/html"):
        assert page.status_code == 200 and "<html" in page.text.lower()
    else:
        _assert_error(page, 404, needle="index.html")


def test_model_descriptions(server, files, reference):
    det, multi = reference
    d = server.get("/v2/models/single").json()
    assert (d["name"], d["kind"], d["backbone"]) == ("single", "single", "efficientnet_lite0")
    assert d["input_size"] == [80, 80] and d["image_size"] == [96, 96] and d["crop_size"] == [80, 80]
    assert d["threshold"] == d["calibrated_threshold"] == pytest.approx(det.threshold_, rel=1e-12)
    assert d["whole_image_check"] is True
    assert d["map_threshold"] == pytest.approx(det.calibration_.map_threshold_, rel=1e-12)
    assert d["bank_entries"] == det.info()["bank_entries"] and d["bank_dim"] == det.info()["bank_dim"]
    assert d["sha256"] == file_sha256(files["single"]) and d["path"] == str(files["single"])
    assert d["format_version"] == det.info()["format_version"] and d["patchbank_version"]
    assert d["fitted_with"] == det.info()["fitted_with"] and d["fitted_with"]["torch"]
    assert d["target_fpr"] == det.config.target_fpr and d["categories"] is None
    assert d["threshold_rule"] == det.config.threshold_rule == "conformal"
    assert d["map_offset"] == det.config.map_offset == "none"     # the maps are not offset
    assert (d["aspect"], d["train_aspect"]) == ("auto", 1.0) == (det.config.aspect, det.info()["train_aspect"])
    assert d["train_scale"] == det.info()["train_scale"] == [96.0, 96.0]     # the 96 px training images
    assert (d["crop_at"], d["network_size"]) == ("features", [96, 96]) == (det.config.crop_at,
                                                                          list(det.config.network_size))
    assert d["batching"]["enabled"] and d["batching"]["max_wait_ms"] == 50
    m = server.get("/v2/models/line").json()
    assert m["kind"] == "multi" and [c["name"] for c in m["categories"]] == ["part", "stripes"]
    for c in m["categories"]:
        assert c["threshold"] == pytest.approx(multi.detectors_[c["name"]].threshold_, rel=1e-12)
        # session 30: the shape other_shape is judged against, per category (was only the top-level null)
        shape = multi.detectors_[c["name"]].train_shape_.header()
        assert (c["train_aspect"], c["train_scale"]) == (shape["train_aspect"], shape["train_scale"])
        assert c["train_scale"] is not None
    assert m["bank_entries"] == sum(c["bank_entries"] for c in m["categories"])
    assert server.get("/v2/models/scratch").json()["name"] == "scratch"   # named after the file
    _assert_error(server.get("/v2/models/nope"), 404, needle="nope")


# --------------------------------------------------------------------------------------------
# infer: equal to the library

def test_multipart_and_json_give_the_librarys_results(server, files, reference):
    det, _ = reference
    named = dict(list(files["part"].items())[:3])
    want = _expected(det, named)
    r = server.post("/v2/models/single/infer", files=_multipart(named))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "single" and body["n_images"] == 3 and body["time_ms"] > 0
    for name, got, w in zip(named, body["results"], want):
        assert got["name"] == name and (got["width"], got["height"]) == (96, 96)
        assert got["routed"] is False and got["time_ms"] > 0 and got["other_shape"] is False
        assert "heatmap_png" not in got and "mask_png" not in got and "polygons" not in got
        _assert_same(got, w, det.threshold_)
    payload = {"images": [{"name": n, "data": base64.b64encode(d).decode()} for n, d in named.items()]}
    as_json = server.post("/v2/models/single/infer", json=payload).json()["results"]
    for got, w in zip(as_json, want):
        _assert_same(got, w, det.threshold_)
    one = server.post("/v2/models/single/infer", files=[("file", ("x.png", named[next(iter(named))]))])
    _assert_same(one.json()["results"][0], want[0], det.threshold_)


def test_multi_category_routing_and_a_given_category(server, files, reference):
    _, multi = reference
    named = {**dict(list(files["part"].items())[:2]), **files["stripes"]}
    want = _expected(multi, named)
    assert [w.category for w in want] == ["part"] * 2 + ["stripes"] * 3
    got = server.post("/v2/models/line/infer", files=_multipart(named)).json()["results"]
    for g, w in zip(got, want):
        assert g["routed"] is True
        _assert_same(g, w, multi.detectors_[w.category].threshold_)
    given = server.post("/v2/models/line/infer", params={"category": "stripes"},
                        files=_multipart(named)).json()["results"]
    want_given = _expected(multi, named, category="stripes")
    for g, w in zip(given, want_given):
        assert g["routed"] is False and g["category"] == "stripes"
        _assert_same(g, w, multi.detectors_["stripes"].threshold_)
    _assert_error(server.post("/v2/models/line/infer", params={"category": "nope"},
                              files=_multipart(named)), 404, needle="nope")
    _assert_error(server.post("/v2/models/single/infer", params={"category": "part"},
                              files=_multipart(named)), 400, needle="one category")


def test_a_per_request_threshold_moves_only_that_requests_decision(server, files, reference):
    det, _ = reference
    named = dict(list(files["part"].items())[:1])
    (want,) = _expected(det, named)
    for t, anomalous in ((want.normalized_score - 1.0, True), (want.normalized_score + 1.0, False)):
        (got,) = server.post("/v2/models/single/infer", params={"threshold": t},
                             files=_multipart(named)).json()["results"]
        assert got["is_anomalous"] is anomalous and got["threshold"] == pytest.approx(t)
        payload = {"images": [{"data": base64.b64encode(named[next(iter(named))]).decode()}], "threshold": t}
        (as_json,) = server.post("/v2/models/single/infer", json=payload).json()["results"]
        assert as_json["is_anomalous"] is anomalous and as_json["name"] == "image0"
    (after,) = server.post("/v2/models/single/infer", files=_multipart(named)).json()["results"]
    _assert_same(after, want, det.threshold_)
    # a blurred frame is anomalous by its map's mean, whatever threshold the request sets
    (blur,) = _expected(det, files["blurred"])
    assert blur.whole_image_anomalous and not want.whole_image_anomalous
    (got,) = server.post("/v2/models/single/infer", params={"threshold": 1e6},
                         files=_multipart(files["blurred"])).json()["results"]
    assert got["is_anomalous"] is True and got["whole_image_anomalous"] is True
    assert got["map_mean"] == pytest.approx(blur.map_mean, rel=REL)
    assert got["map_mean"] > det.calibration_.map_threshold_


def test_images_far_smaller_than_the_training_images_are_flagged(server, files):
    """The training images are 96 px (sqrt(H x W)): 48 px is exactly half, still like them; 47 px
    is below half and reported ``other_shape`` (the library's rule, tests/test_train_shape.py)."""
    first = Image.open(io.BytesIO(next(iter(files["part"].values())))).convert("RGB")
    named = {f"{n}.png": _png(first.resize((n, n), Image.BILINEAR)) for n in (48, 47)}
    r = server.post("/v2/models/single/infer", files=_multipart(named))
    assert r.status_code == 200, r.text
    assert [(g["width"], g["other_shape"]) for g in r.json()["results"]] == [(48, False), (47, True)]


def test_heatmap_mask_and_polygons_are_in_the_original_images_pixels(server, files, reference):
    det, _ = reference
    named = {"wide.png": files["wide"]}
    (want,) = _expected(det, named)
    low = want.normalized_score - 0.5     # a threshold that makes the image anomalous
    r = server.post("/v2/models/single/infer", params={"heatmap": "true", "mask": "png", "threshold": low},
                    files=_multipart(named))
    (got,) = r.json()["results"]
    assert (got["width"], got["height"]) == (180, 120)
    assert got["other_shape"] is True          # H / W 0.67 against the training images' 1.0
    heat = Image.open(io.BytesIO(base64.b64decode(got["heatmap_png"])))
    assert heat.size == (180, 120) and heat.mode == "RGBA"
    alpha = np.asarray(heat)[..., 3]
    # the 80 x 80 centre crop of the 96 x 96 resize: the outer 8/96 on each side is not inspected
    assert (alpha[:, :5] == 0).all() and (alpha[:5, :] == 0).all() and (alpha[20:100, 25:155] == 255).all()
    assert got["heatmap_range"] == pytest.approx(list(det.heatmap_range()), rel=1e-6)
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(got["mask_png"]))))
    assert mask.shape == (120, 180) and set(np.unique(mask)) <= {0, 255}
    local = region_mask(to_original(want.anomaly_map, (120, 180), det.config), det.map_level(low))
    assert ((mask > 0) == local).mean() > 0.995 and local.any()
    r = server.post("/v2/models/single/infer", params={"mask": "polygons", "threshold": low},
                    files=_multipart(named))
    (got,) = r.json()["results"]
    assert "mask_png" not in got and "heatmap_png" not in got and got["polygons"]
    pts = np.array([p for poly in got["polygons"] for p in poly])
    assert (pts[:, 0] >= -0.5).all() and (pts[:, 0] <= 179.5).all()
    assert (pts[:, 1] >= -0.5).all() and (pts[:, 1] <= 119.5).all()
    ys, xs = np.nonzero(local)     # the outlines surround the mask's pixels
    assert pts[:, 0].min() <= xs.min() and pts[:, 0].max() >= xs.max()
    assert pts[:, 1].min() <= ys.min() and pts[:, 1].max() >= ys.max()


# --------------------------------------------------------------------------------------------
# moving the threshold

def test_put_threshold_moves_the_operating_point_without_touching_the_file(server, files, reference):
    det, _ = reference
    named = dict(list(files["part"].items())[:1])
    (want,) = _expected(det, named)
    before = files["single"].read_bytes()
    moved = want.normalized_score - 1.0
    try:
        d = server.put("/v2/models/single/threshold", json={"threshold": moved}).json()
        assert d["threshold"] == pytest.approx(moved) and d["calibrated_threshold"] == pytest.approx(det.threshold_)
        (got,) = server.post("/v2/models/single/infer", files=_multipart(named)).json()["results"]
        assert got["is_anomalous"] is True and got["threshold"] == pytest.approx(moved)
        assert files["single"].read_bytes() == before
        _assert_error(server.put("/v2/models/single/threshold", json={"threshold": 1, "category": "x"}), 400)
    finally:
        reset = server.delete("/v2/models/single/threshold").json()
    assert reset["threshold"] == pytest.approx(det.threshold_)
    (got,) = server.post("/v2/models/single/infer", files=_multipart(named)).json()["results"]
    _assert_same(got, want, det.threshold_)
    assert files["single"].read_bytes() == before


def test_put_threshold_with_persist_rewrites_the_model_file(server, files, reference):
    det, _ = reference
    path = files["scratch"]
    try:
        d = server.put("/v2/models/scratch/threshold", json={"threshold": 7.25, "persist": True}).json()
        assert d["threshold"] == 7.25 and d["sha256"] == file_sha256(path)
        assert Detector.load(path, progress=False).threshold_ == 7.25
    finally:
        d = server.put("/v2/models/scratch/threshold", json={"threshold": None, "persist": True}).json()
    assert d["threshold"] == pytest.approx(det.threshold_)
    assert Detector.load(path, progress=False).threshold_ == pytest.approx(det.threshold_)


def test_put_threshold_of_a_multi_category_model(server, files, reference):
    _, multi = reference
    cal = {n: multi.detectors_[n].threshold_ for n in ("part", "stripes")}
    try:
        m = server.put("/v2/models/line/threshold", json={"threshold": -3.0, "category": "stripes"}).json()
        got = {c["name"]: c["threshold"] for c in m["categories"]}
        assert got["stripes"] == -3.0 and got["part"] == pytest.approx(cal["part"])
        (r,) = server.post("/v2/models/line/infer", params={"category": "stripes"},
                           files=_multipart(dict(list(files["stripes"].items())[:1]))).json()["results"]
        assert r["threshold"] == -3.0 and r["is_anomalous"] is True
        m = server.put("/v2/models/line/threshold", json={"threshold": 4.0}).json()   # every category
        assert all(c["threshold"] == 4.0 for c in m["categories"])
        _assert_error(server.put("/v2/models/line/threshold", json={"threshold": 1, "category": "x"}), 404)
    finally:
        m = server.delete("/v2/models/line/threshold").json()
    assert {c["name"]: c["threshold"] for c in m["categories"]} == pytest.approx(cal)


def test_a_persisted_threshold_reaches_every_process_serving_the_file(files, reference):
    """Two registries on one file stand for two worker processes (or servers): a threshold one
    persists is taken by the other at its next call (it answered with the old one, and its own
    persist was refused with 503, before session 31); a file that now holds another model is
    not followed; with workers > 1 a threshold moved without persist is refused (409)."""
    det, multi = reference
    tmp = files["tmp"] / "follow"
    tmp.mkdir()
    for name in ("single", "line"):
        shutil.copy(files[name], tmp / f"{name}.patchbank")
    specs = (ModelSpec("single", str(tmp / "single.patchbank")), ModelSpec("line", str(tmp / "line.patchbank")))
    a, b = (ModelRegistry(ServeSettings(models=specs, workers=2)).load() for _ in range(2))
    a.ready = b.ready = True
    image = decode_bytes(next(iter(files["part"].values())), "x.png")
    for step, value in enumerate((5.5, -2.0, None)):
        writer, reader = (a, b) if step % 2 == 0 else (b, a)      # each persists in turn
        writer.set_threshold("single", value, persist=True)
        want = det.threshold_ if value is None else value
        assert reader.describe("single")["threshold"] == pytest.approx(want)
        (scored,) = reader.predict("single", None, [image])
        assert scored.threshold == pytest.approx(want)
        assert scored.prediction.is_anomalous == (not scored.prediction.normalized_score <= want) or \
            scored.prediction.whole_image_anomalous or scored.prediction.out_of_focus
    # a multi-category model: one category's persisted threshold, the others as they were
    a.set_threshold("line", -3.0, category="stripes", persist=True)
    got = {c["name"]: c["threshold"] for c in b.describe("line")["categories"]}
    assert got == pytest.approx({"stripes": -3.0, "part": multi.detectors_["part"].threshold_})
    b.set_threshold("line", 4.0, persist=True)
    assert {c["threshold"] for c in a.describe("line")["categories"]} == {4.0}
    # moved without persist: one process's memory only, so refused where there are several
    with pytest.raises(ServiceError) as err:
        a.set_threshold("single", 1.0)
    assert err.value.status == 409 and "persist" in str(err.value)
    # another model written over the file (a new fit): not followed, and not written over
    before = b.describe("single")["threshold"]
    shutil.copy(files["scratch"], tmp / "new.patchbank")
    Detector.load(tmp / "new.patchbank", progress=False).set_threshold(9.0).save(tmp / "new.patchbank", overwrite=True)
    refit = Detector.from_preset("lmf-core", progress=False, seed=5, **SMALL).fit(
        [p for p in (files["tmp"] / "stripes" / "train").iterdir()])
    refit.save(tmp / "single.patchbank", overwrite=True)
    assert b.describe("single")["threshold"] == pytest.approx(before)
    with pytest.raises(ServiceError) as err:
        b.set_threshold("single", 2.0, persist=True)
    assert err.value.status == 503 and "changed since it was loaded" in str(err.value)
    assert Detector.load(tmp / "single.patchbank", progress=False).threshold_ == pytest.approx(refit.threshold_)


def test_a_persist_racing_another_processs_persist_is_written_with_both(files, tmp_path, monkeypatch):
    """Another process's persist landing between this one's look at the file and its lock was a
    503 ("restart the server"), and one landing just after its write left it serving its own
    threshold for good (session 31 audit); the file is now read again under the lock.  A file
    gone is a 503, not a 500, and a link and its target share one lock."""
    import os

    import patchbank.service.registry as registry_module
    from patchbank.io.output_files import lock_path_for

    path = tmp_path / "line.patchbank"
    shutil.copy(files["line"], path)
    spec = (ModelSpec("line", str(path)),)
    a, b = (ModelRegistry(ServeSettings(models=spec, workers=2)).load() for _ in range(2))
    a.ready = b.ready = True
    real, raced = registry_module.file_lock, []

    def racing(*args, **kwargs):      # b persists just before a takes the lock
        if not raced:
            raced.append(True)
            b.set_threshold("line", -3.0, "stripes", persist=True)
        return real(*args, **kwargs)

    monkeypatch.setattr(registry_module, "file_lock", racing)
    a.set_threshold("line", 5.0, "part", persist=True)
    on_disk = MultiDetector.load(path, progress=False)
    assert (on_disk.detectors_["stripes"].threshold_, on_disk.detectors_["part"].threshold_) == (-3.0, 5.0)
    for reg in (a, b):
        assert {c["name"]: c["threshold"] for c in reg.describe("line")["categories"]} == {"stripes": -3.0, "part": 5.0}
    os.rename(path, tmp_path / "away.patchbank")
    with pytest.raises(ServiceError) as err:
        a.set_threshold("line", 1.0, persist=True)
    assert err.value.status == 503 and "cannot be read" in str(err.value)
    link = tmp_path / "current.patchbank"
    link.symlink_to(tmp_path / "away.patchbank")
    assert lock_path_for(link) == lock_path_for(tmp_path / "away.patchbank")


def test_the_warm_up_frame_is_not_reported_as_an_image_of_another_shape(synthetic_root, tmp_path):
    """The warm-up scores a grey frame of the model's resize: on a model trained on images under
    half that size every server start (every worker) printed the ``unlike the training images``
    warning about it (session 31); a request's image is still reported."""
    import warnings

    small = tmp_path / "small"
    small.mkdir()
    for p in sorted((synthetic_root / "train" / "good").glob("*.png"))[:10]:
        Image.open(p).convert("RGB").resize((40, 40), Image.BILINEAR).save(small / p.name)
    Detector.from_preset("lmf-core", progress=False, target_fpr=0.1, **SMALL).fit(small).save(tmp_path / "s.patchbank")
    registry = ModelRegistry(ServeSettings(models=(ModelSpec("s", str(tmp_path / "s.patchbank")),))).load()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        registry.warm_up()
    assert registry.ready
    with pytest.warns(UserWarning, match="unlike the training images"):
        registry.predict("s", None, [Image.new("RGB", (96, 96), (128, 128, 128))])


def test_two_worker_processes_answer_with_one_persisted_threshold(files):
    """--workers 2, a real server: after a persist through whichever worker answers, every
    later answer of both workers (told apart by the pid GET reports) has the new threshold."""
    from patchbank.service.process import ServerProcess

    path = files["tmp"] / "workers_follow.patchbank"
    shutil.copy(files["single"], path)
    log = files["tmp"] / "workers_follow.log"
    with ServerProcess([f"m={path}"], ["--quiet", "--threads", "1", "--workers", "2"], log=log,
                       timeout=120) as proc:
        def fresh(method: str, url: str, **kw) -> httpx.Response:
            for _ in range(200):     # a new connection each time, so either worker may answer
                with httpx.Client(base_url=proc.url, timeout=60) as c:
                    r = c.request(method, url, **kw)
                if r.status_code != 503 or "not ready" not in r.text:   # the other may still load
                    return r
                time.sleep(0.1)
            return r

        seen: dict[int, list[float]] = {}
        for value in (3.25, -1.5, 6.0):
            r = fresh("PUT", "/v2/models/m/threshold", json={"threshold": value, "persist": True})
            assert r.status_code == 200, r.text
            for _ in range(40):
                d = fresh("GET", "/v2/models/m").json()
                seen.setdefault(d["worker"]["pid"], []).append(d["threshold"])
                assert d["threshold"] == pytest.approx(value) and d["worker"]["workers"] == 2
        assert len(seen) == 2, seen       # both workers answered
        r = fresh("PUT", "/v2/models/m/threshold", json={"threshold": 1.0})
        assert r.status_code == 409 and list(r.json()) == ["error"]
    assert Detector.load(path, progress=False).threshold_ == pytest.approx(6.0)
    assert "Traceback" not in log.read_text(errors="replace")


# --------------------------------------------------------------------------------------------
# bad requests: one-line 4xx, and the server goes on

def _tga() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (80, 90, 100)).save(buf, "TGA")
    return buf.getvalue()


def _truncated(files):
    data = next(iter(files["part"].values()))
    return data[: len(data) // 2]


BAD = {
    "garbage bytes": (400, lambda f: dict(files=[("file", ("g.png", b"not an image at all"))])),
    "empty file": (400, lambda f: dict(files=[("file", ("e.png", b""))])),
    "truncated png": (400, lambda f: dict(files=[("file", ("t.png", _truncated(f)))])),
    "bad base64": (400, lambda f: dict(json={"images": [{"name": "b", "data": "@@@not base64@@@"}]})),
    "malformed json": (400, lambda f: dict(content=b'{"images": [', headers={"content-type": "application/json"})),
    "json not an object": (422, lambda f: dict(json=[1, 2])),
    "json images not a list": (422, lambda f: dict(json={"images": "x"})),
    "json image without data": (422, lambda f: dict(json={"images": [{"name": "x"}]})),
    "no images": (400, lambda f: dict(json={"images": []})),
    "wrong content type": (415, lambda f: dict(content=b"hello", headers={"content-type": "text/plain"})),
    "no content type": (415, lambda f: dict(content=b"hello")),
    "too many pixels": (400, lambda f: dict(files=[("file", ("big.png", _png(Image.new("RGB", (600, 400)))))])),
    # each image under --max-pixels, together over --max-decoded-pixels: refused from the headers
    "images over the decoded-pixel limit": (413, lambda f: dict(files=_multipart(
        {f"{i}.png": _png(Image.new("RGB", (450, 400))) for i in range(4)}))),
    "too many images": (413, lambda f: dict(files=_multipart({f"{i}.png": next(iter(f["part"].values()))
                                                              for i in range(MAX_IMAGES + 1)}))),
    "body over the limit": (413, lambda f: dict(files=[("file", ("x.png", b"\0" * (2 << 20)))])),
    # larger than the loopback socket buffers: read and dropped, so the client reads the 413
    "streamed body at 3.75x the limit": (413, lambda f: dict(
        content=iter([b"\0" * (1 << 16)] * 60),
        headers={"content-type": "application/json", "content-length": str(60 << 16)})),
    "chunked body over the limit": (413, lambda f: dict(content=iter([b"{" + b" " * (1 << 16)] * 40),
                                                         headers={"content-type": "application/json"})),
    "chunked multipart over the limit": (413, lambda f: dict(
        content=iter([b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.png\"\r\n\r\n"]
                     + [b"\0" * (1 << 16)] * 40),
        headers={"content-type": "multipart/form-data; boundary=b"})),
    "wrong part name": (400, lambda f: dict(files=[("image", ("x.png", next(iter(f["part"].values()))))])),
    "bad mask option": (400, lambda f: dict(params={"mask": "jpeg"}, files=_multipart(dict(list(f["part"].items())[:1])))),
    "bad threshold option": (400, lambda f: dict(params={"threshold": "abc"}, files=_multipart(dict(list(f["part"].items())[:1])))),
    "nan threshold option": (400, lambda f: dict(params={"threshold": "nan"}, files=_multipart(dict(list(f["part"].items())[:1])))),
    "bad heatmap option": (400, lambda f: dict(json={"images": [{"data": base64.b64encode(next(iter(f["part"].values()))).decode()}],
                                                     "heatmap": "maybe"})),
    "unknown option": (400, lambda f: dict(params={"treshold": "1"}, files=_multipart(dict(list(f["part"].items())[:1])))),
    # float() of a 400-digit JSON integer raises OverflowError (was a 500)
    "huge integer threshold": (400, lambda f: dict(
        content=b'{"images": [{"data": "' + base64.b64encode(next(iter(f["part"].values()))) + b'"}], '
                b'"threshold": ' + b"9" * 400 + b"}", headers={"content-type": "application/json"})),
    # the first value was never checked: ?mask=bogus&mask=png passed
    "repeated query option": (400, lambda f: dict(params=[("mask", "bogus"), ("mask", "png")],
                                                   files=_multipart(dict(list(f["part"].items())[:1])))),
    # formats PIL knows and patchbank does not read; a DDS header made PIL raise NotImplementedError (a 500)
    "a DDS upload": (400, lambda f: dict(files=[("file", ("x.dds", dds_with_unknown_pixel_format()))])),
    "a TGA upload": (400, lambda f: dict(files=[("file", ("x.tga", _tga()))])),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_infer_request_is_a_one_line_4xx_and_the_server_goes_on(server, files, case):
    status, kwargs = BAD[case]
    _assert_error(server.post("/v2/models/single/infer", **kwargs(files)), status)
    assert server.get("/v2/health/live").status_code == 200
    ok = server.post("/v2/models/single/infer", files=_multipart(dict(list(files["part"].items())[:1])))
    assert ok.status_code == 200


def test_a_request_over_the_decoded_pixel_limit_names_it_and_others_wait_their_turn(server):
    named = {f"{i}.png": _png(Image.new("RGB", (450, 400))) for i in range(4)}   # 4 x 180,000
    _assert_error(server.post("/v2/models/single/infer", files=_multipart(named)), 413,
                  needle=f"decode to 720,000 pixels, over the server's limit of {MAX_DECODED_PIXELS:,}")
    three = dict(list(named.items())[:3])        # 540,000 each: two such requests never fit at once
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: server.post("/v2/models/single/infer", files=_multipart(three)),
                                range(4)))
    assert [a.status_code for a in answers] == [200] * 4
    assert len({tuple(r["score"] for r in a.json()["results"]) for a in answers}) == 1
    decoding = server.get("/v2/models/single").json()["decoding"]
    assert decoding == {"max_decoded_pixels": MAX_DECODED_PIXELS, "pixels_held": 0, "requests_waiting": 0}


def test_a_jpeg_upload_is_read_as_the_library_reads_the_file(server, files, reference, tmp_path):
    """A JPEG is decoded at the reduced scale the model's file reader uses (libjpeg's 1/4 here:
    400 px toward the 96 px resize), so the service answers as ``predict`` on the file does; the
    size it reports and the heatmap it draws are the uploaded image's own."""
    det, multi = reference
    image = Image.open(io.BytesIO(next(iter(files["part"].values())))).convert("RGB")
    buf = io.BytesIO()
    image.resize((400, 400), Image.BILINEAR).save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    (tmp_path / "part.jpg").write_bytes(data)
    want, = det.predict([tmp_path / "part.jpg"])
    r = server.post("/v2/models/single/infer", params={"heatmap": "true"},
                    files=[("files", ("part.jpg", data, "image/jpeg"))])
    assert r.status_code == 200, r.text
    got = r.json()["results"][0]
    _assert_same(got, want, det.threshold_)
    assert (got["width"], got["height"]) == (400, 400)
    assert Image.open(io.BytesIO(base64.b64decode(got["heatmap_png"]))).size == (400, 400)
    # the full-scale decode the service used to make reads other pixels: a different answer
    full, = det.predict([decode_bytes(data, "part.jpg")])
    assert abs(full.score - want.score) > 100 * REL * abs(want.score)
    # a multi-category model reads it the same way (routed, then scored by its category)
    routed, = multi.predict([tmp_path / "part.jpg"])
    r = server.post("/v2/models/line/infer", files=[("files", ("part.jpg", data, "image/jpeg"))])
    _assert_same(r.json()["results"][0], routed, multi.detectors_[routed.category].threshold_)


def test_other_bad_requests_are_one_line_4xx(server, files):
    img = _multipart(dict(list(files["part"].items())[:1]))
    _assert_error(server.post("/v2/models/nope/infer", files=img), 404, needle="nope")
    _assert_error(server.get("/v2/nothing/here"), 404)
    _assert_error(server.get("/v2/models/single/infer"), 405)
    _assert_error(server.put("/v2/models/single/threshold", content=b"{oops",
                             headers={"content-type": "application/json"}), 400, needle="JSON")
    _assert_error(server.put("/v2/models/single/threshold", json={"threshold": "abc"}), 422, needle="threshold")
    _assert_error(server.put("/v2/models/single/threshold", json={"thresh": 1}), 422)
    _assert_error(server.put("/v2/models/single/threshold", content=b'{"threshold": NaN}',
                             headers={"content-type": "application/json"}), 400, needle="finite")
    _assert_error(server.put("/v2/models/nope/threshold", json={"threshold": 1}), 404)
    _assert_error(server.put("/v2/models/single/threshold", content=iter([b" " * (1 << 16)] * 40),
                             headers={"content-type": "application/json"}), 413)   # chunked, no length
    _assert_error(server.put("/v2/models/single/threshold", content=b" " * (2 << 20),
                             headers={"content-type": "application/json"}), 413)
    assert server.get("/v2/models/single").json()["threshold"] == server.get(
        "/v2/models/single").json()["calibrated_threshold"]
    assert server.get("/v2/health/ready").status_code == 200


# --------------------------------------------------------------------------------------------
# batching

def test_head_trailing_slashes_and_unknown_query_parameters_of_the_threshold_routes(server, files):
    """HEAD answers every GET route (health checks that send HEAD); a trailing slash is a one-line
    404, not a bare redirect; a threshold change refuses a query parameter it does not take (a
    typo such as persit=true must not pass as a change that was not persisted)."""
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models", "/v2/models/single", "/"):
        head = server.head(path)
        assert head.status_code == 200 and head.content == b"", path
    _assert_error(server.post("/v2/models/single/infer/", files=_multipart(dict(list(files["part"].items())[:1]))),
                  404, needle="no such path")
    _assert_error(server.delete("/v2/models/single/threshold", params={"persit": "true"}), 400,
                  needle="unknown query parameter 'persit'")
    _assert_error(server.delete("/v2/models/single/threshold", params=[("persist", "false"), ("persist", "true")]),
                  400, needle="given twice")
    _assert_error(server.put("/v2/models/single/threshold", params={"persist": "true"}, json={"threshold": 1.0}),
                  400, needle="unknown query parameter 'persist'")
    m = server.get("/v2/models/single").json()
    assert m["threshold"] == m["calibrated_threshold"]       # none of them changed anything


def test_a_client_that_goes_away_mid_body_leaves_no_traceback(server, files):
    """A client that stops sending half-way through its body (a timeout, a crash): the server
    logs one line, not a traceback (the module fixture checks the log), and goes on."""
    import socket

    port = int(str(server.base_url).rsplit(":", 1)[1].strip("/"))
    data = next(iter(files["part"].values()))
    for kind, body in (("application/json", b'{"images": [{"data": "'),
                       ("multipart/form-data; boundary=x",
                        b'--x\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n' + data[:100])):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"POST /v2/models/single/infer HTTP/1.1\r\nHost: x\r\nContent-Type: " + kind.encode()
                         + b"\r\nContent-Length: " + str(len(body) + 1000).encode() + b"\r\n\r\n" + body)
            time.sleep(0.3)
    time.sleep(0.3)
    assert server.post("/v2/models/single/infer", files=_multipart(dict(list(files["part"].items())[:1]))).status_code == 200


def test_a_request_whose_client_went_away_while_it_waited_is_never_scored(files):
    """In process, through the ASGI interface uvicorn uses: a request waits for its decoded-pixel
    share (the whole budget is held); its client disconnects (``http.disconnect``, as uvicorn
    delivers it); the request leaves the queue at once (499, nobody reads it) and is neither
    decoded nor scored after the share is freed.  uvicorn does not cancel a handler itself: the
    request used to wait, then be decoded and scored for nobody."""
    import asyncio

    from patchbank.service.app import create_app

    registry = ModelRegistry(ServeSettings(models=(ModelSpec("single", str(files["single"])),))).load().warm_up()
    app = create_app(registry.settings, registry)
    state = app.state.service
    boundary = b"pbtest"
    body = (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
            b"Content-Type: image/png\r\n\r\n" + next(iter(files["part"].values())) + b"\r\n--" + boundary + b"--\r\n")
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/v2/models/single/infer", "raw_path": b"/v2/models/single/infer",
             "root_path": "", "query_string": b"", "client": ("127.0.0.1", 5), "server": ("127.0.0.1", 80),
             "headers": [(b"host", b"x"), (b"content-type", b"multipart/form-data; boundary=" + boundary),
                         (b"content-length", str(len(body)).encode())]}

    async def scenario():
        gone, sent, body_sent = asyncio.Event(), [], []

        async def receive():
            if not body_sent:
                body_sent.append(True)
                return {"type": "http.request", "body": body, "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)

        async with app.router.lifespan_context(app):
            async with state.pixels.hold(state.pixels.capacity):       # no share is free
                request = asyncio.create_task(app(scope, receive, send))
                for _ in range(500):
                    if state.pixels.waiting == 1:
                        break
                    await asyncio.sleep(0.01)
                assert state.pixels.waiting == 1
                gone.set()
                await asyncio.wait_for(request, 10)
                assert state.pixels.waiting == 0
            await asyncio.sleep(0.2)                                       # the share is free now
            assert state.batcher.stats("single").items == 0
        return sent

    sent = asyncio.run(scenario())
    start = next(m for m in sent if m["type"] == "http.response.start")
    assert start["status"] == 499
    assert registry.models["single"].lock is not None


def test_concurrent_requests_are_batched_and_answer_as_sequential_ones(server, files):
    named = list(files["part"].items()) + list(files["stripes"].items())
    calls_before = server.get("/v2/models/single").json()["batching"]["calls"]

    def one(item):
        name, data = item
        r = server.post("/v2/models/single/infer", files=_multipart({name: data}))
        assert r.status_code == 200, r.text
        return r.json()["results"][0]

    sequential = [one(item) for item in named]
    calls_mid = server.get("/v2/models/single").json()["batching"]["calls"]
    assert calls_mid - calls_before == len(named)          # one call each when alone
    with ThreadPoolExecutor(len(named)) as pool:
        concurrent = list(pool.map(one, named))
    batching = server.get("/v2/models/single").json()["batching"]
    assert batching["calls"] - calls_mid < len(named) and batching["largest_call"] > 1
    for c, s in zip(concurrent, sequential):
        assert c["name"] == s["name"] and c["is_anomalous"] == s["is_anomalous"]
        assert c["score"] == pytest.approx(s["score"], rel=REL)
        assert c["normalized_score"] == pytest.approx(s["normalized_score"], rel=REL, abs=1e-6)


def test_two_worker_processes_without_batching_give_the_librarys_results(files, reference):
    """--workers 2: each worker builds the app from the environment (app_from_env) and loads
    the model itself; --no-batching runs each request alone."""
    from patchbank.service.process import ServerProcess

    det, _ = reference
    named = dict(list(files["part"].items())[:2])
    want = _expected(det, named)
    log = files["tmp"] / "workers.log"
    with ServerProcess([f"single={files['single']}"], ["--quiet", "--threads", "1", "--workers", "2",
                                                      "--no-batching"], log=log, timeout=120) as proc:
        with httpx.Client(base_url=proc.url, timeout=60) as client:
            for _ in range(4):   # requests land on either worker; both must answer alike
                for _ in range(100):   # the other worker may still be loading (503)
                    r = client.post("/v2/models/single/infer", files=_multipart(named))
                    if r.status_code != 503:
                        break
                    time.sleep(0.1)
                assert r.status_code == 200, r.text
                for got, w in zip(r.json()["results"], want):
                    _assert_same(got, w, det.threshold_)
            assert client.get("/v2/models/single").json()["batching"]["enabled"] is False
    assert "Traceback" not in log.read_text(errors="replace")


# --------------------------------------------------------------------------------------------
# without a server: the command's checks, settings, registry

def test_serve_refuses_a_bad_model_file_before_starting(tmp_path):
    bogus = tmp_path / "bogus.patchbank"
    bogus.write_bytes(b"not a model")
    for args, needle in ((["serve", str(tmp_path / "missing.patchbank")], "missing.patchbank"),
                         (["serve", str(bogus)], "bogus.patchbank"),
                         (["serve", f"bad/name={bogus}"], "invalid model name"),
                         (["serve", f"..={bogus}"], "invalid model name '..'"),   # session 30: unreachable by URL
                         (["serve", f".={bogus}"], "invalid model name '.'"),
                         (["serve", f"a={bogus}", f"a={bogus}"], "given twice"),
                         (["serve", str(bogus), "--max-pixels", "999999999999"], "--max-pixels"),
                         (["serve", str(bogus), "--max-decoded-pixels", "1000"], "--max-decoded-pixels"),
                         (["serve", str(bogus), "--host", "256.1.1.1"], "cannot listen on 256.1.1.1")):
        result = CliRunner().invoke(cli, args + ["--port", "0"])   # (8000 may be taken here)
        assert_one_line_error(result.exit_code, result.stderr, needle)


def test_serve_refuses_an_fd_that_is_not_a_listening_tcp_socket(tmp_path):
    import socket

    model = tmp_path / "m.patchbank"           # never read: the descriptor is checked first
    with open(tmp_path / "file.txt", "w") as f, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, \
            socket.socket() as unlistened:
        unlistened.bind(("127.0.0.1", 0))
        for fd, needle in ((999_999, "--fd 999999 is not an open socket"),
                           (f.fileno(), f"--fd {f.fileno()} is not an open socket"),
                           (udp.fileno(), "is not a listening TCP socket"),
                           (unlistened.fileno(), "is not a listening TCP socket")):
            result = CliRunner().invoke(cli, ["serve", str(model), "--fd", str(fd)])
            assert_one_line_error(result.exit_code, result.stderr, needle)
        unlistened.listen()                    # the caller's descriptors are left open
        assert unlistened.fileno() >= 0 and udp.fileno() >= 0 and not f.closed


def test_serve_refuses_a_port_in_use_before_loading(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(cli, ["serve", str(tmp_path / "m.patchbank"), "--port", str(port)])
    assert_one_line_error(result.exit_code, result.stderr, f"cannot listen on 127.0.0.1:{port}")


def test_the_request_total_counts_the_pixels_each_image_decodes_to():
    """A JPEG counts at the reduced scale it decodes at (2000 px toward a 96 px resize: 1/8,
    250 x 250), a PNG at its full size; the total is checked before any image is decoded."""
    from patchbank.service.codec import Upload, decode_uploads, open_uploads

    def encoded(fmt: str) -> bytes:
        buf = io.BytesIO()
        Image.new("RGB", (2000, 2000), (90, 120, 150)).save(buf, fmt)
        return buf.getvalue()

    jpeg, png = Upload("a.jpg", encoded("JPEG")), Upload("a.png", encoded("PNG"))
    opened, total = open_uploads([jpeg], 4_000_000, 62_500, (96, 96))
    assert total == 62_500
    out, = decode_uploads(opened, [jpeg])
    assert out.size == (250, 250) and out.mode == "RGB"
    with pytest.raises(ServiceError) as err:
        open_uploads([jpeg, jpeg], 4_000_000, 100_000, (96, 96))
    assert err.value.status == 413 and "125,000 pixels, over the server's limit of 100,000" in str(err.value)
    with pytest.raises(ServiceError) as err:
        open_uploads([png], 4_000_000, 100_000, (96, 96))
    assert err.value.status == 413 and "4,000,000 pixels" in str(err.value)
    opened, total = open_uploads([png], 4_000_000, 4_000_000, (96, 96))
    assert total == 4_000_000 and decode_uploads(opened, [png])[0].size == (2000, 2000)


def test_settings_refuse_a_decoded_pixel_limit_below_the_image_limit():
    with pytest.raises(PatchbankError, match="--max-decoded-pixels, 1,000.*--max-pixels, 2,000"):
        ServeSettings(max_pixels=2000, max_decoded_pixels=1000)
    assert ServeSettings(max_pixels=2000, max_decoded_pixels=2000).max_decoded_pixels == 2000
    with pytest.raises(PatchbankError, match="workers must be >= 1"):   # session 31's field
        ServeSettings(workers=0)
    assert ServeSettings.from_json(ServeSettings(workers=3).to_json()).workers == 3


def test_settings_round_trip_and_model_names(tmp_path):
    s = ServeSettings(models=(ModelSpec("a", "/x/a.patchbank"),), max_wait_ms=0, threads=2)
    assert ServeSettings.from_json(s.to_json()) == s
    assert parse_model_arg("/x/line.patchbank") == ModelSpec("line", "/x/line.patchbank")
    assert parse_model_arg("cam1=/x/m.patchbank") == ModelSpec("cam1", "/x/m.patchbank")
    odd = tmp_path / "a=b.patchbank"
    odd.write_bytes(b"")
    with pytest.raises(PatchbankError, match="invalid model name 'a=b'"):   # a path, badly named
        parse_model_arg(str(odd))
    assert parse_model_arg(f"x={odd}") == ModelSpec("x", str(odd))


def test_registry_is_unready_until_loaded_and_json_has_no_nan():
    registry = ModelRegistry(ServeSettings(models=(ModelSpec("a", "/nonexistent.patchbank"),)))
    with pytest.raises(ServiceError) as info:
        registry.get("a")
    assert info.value.status == 503 and "still loading" in str(info.value)
    with pytest.raises(ServiceError) as info:
        registry.get("b")
    assert info.value.status == 404
    assert finite(float("nan")) is None and finite(float("inf")) is None and finite(1.5) == 1.5


@pytest.mark.parametrize("error,traceback", [(PatchbankError("weights file w.pt is corrupt"), False),
                                             (OSError("No such file"), False), (ZeroDivisionError("bug"), True)])
def test_a_failed_warm_up_is_logged_in_one_line_unless_it_is_a_bug(files, monkeypatch, caplog, error, traceback):
    """A model that loads but fails its warm-up (a weights file broken after the check, a file
    gone, memory) is logged as one line without a traceback, and the server stays unready saying
    why; an unexpected exception (a bug) keeps its traceback in the log."""
    import asyncio
    import logging

    from patchbank.service.app import _load

    registry = ModelRegistry(ServeSettings(models=(ModelSpec("single", str(files["single"])),)))

    def fail(*_):
        raise error

    monkeypatch.setattr(registry, "warm_up", fail)
    with caplog.at_level(logging.ERROR, logger="patchbank.service"):
        asyncio.run(_load(registry))
    (record,) = [r for r in caplog.records if r.name == "patchbank.service"]
    assert str(error) in record.getMessage() and "\n" not in record.getMessage()
    assert (record.exc_info is not None) == traceback
    with pytest.raises(ServiceError) as info:
        registry.get("single")
    assert info.value.status == 503 and str(error) in str(info.value)


def test_persisting_a_multi_category_models_threshold_keeps_the_other_category(files, tmp_path):
    path = tmp_path / "line.patchbank"
    shutil.copy(files["line"], path)
    registry = ModelRegistry(ServeSettings(models=(ModelSpec("line", str(path)),))).load().warm_up()
    before = MultiDetector.load(path, progress=False)
    registry.set_threshold("line", 3.5, "stripes", persist=True)
    after = MultiDetector.load(path, progress=False)
    assert after.detectors_["stripes"].threshold_ == 3.5
    assert after.detectors_["part"].threshold_ == before.detectors_["part"].threshold_
    assert registry.describe("line")["sha256"] == file_sha256(path)
    with pytest.raises(PatchbankError, match="finite"):   # a refused value changes nothing
        registry.set_threshold("line", float("nan"), None, persist=True)
    assert MultiDetector.load(path, progress=False).detectors_["stripes"].threshold_ == 3.5
    assert registry.models["line"].detector("part").threshold_ == before.detectors_["part"].threshold_


def test_persist_never_writes_over_a_file_changed_since_it_was_loaded(files, tmp_path):
    """Session 30: persist saved the server's copy over whatever the file had become: a category
    added by ``fit --add`` meanwhile, a whole new fit, or another server's persisted threshold
    were lost (all answered 200).  Now 503 and the file as it is for another model; another
    server's persisted threshold is first taken (session 31; session 30 answered 503), so both
    thresholds are in the file; a link stays a link and the file keeps its mode."""
    import os

    from patchbank.service.registry import ServiceError

    path = tmp_path / "line.patchbank"
    shutil.copy(files["line"], path)
    one = ModelRegistry(ServeSettings(models=(ModelSpec("line", str(path)),))).load().warm_up()
    two = ModelRegistry(ServeSettings(models=(ModelSpec("line", str(path)),))).load().warm_up()
    one.set_threshold("line", 3.5, "stripes", persist=True)
    two.set_threshold("line", 5.0, "part", persist=True)     # takes one's stripes first
    on_disk = MultiDetector.load(path, progress=False)
    assert (on_disk.detectors_["stripes"].threshold_, on_disk.detectors_["part"].threshold_) == (3.5, 5.0)
    shutil.copy(files["single"], path)                       # a new fit over the file
    with pytest.raises(ServiceError):
        one.set_threshold("line", 4.0, "stripes", persist=True)
    assert path.read_bytes() == open(files["single"], "rb").read()
    # through a link, with a narrow mode: the link and the mode stay, the linked file is written
    target = tmp_path / "models" / "v3.patchbank"
    target.parent.mkdir()
    shutil.copy(files["single"], target)
    os.chmod(target, 0o600)
    link = tmp_path / "current.patchbank"
    link.symlink_to(target)
    served = ModelRegistry(ServeSettings(models=(ModelSpec("cur", str(link)),))).load().warm_up()
    served.set_threshold("cur", 4.25, persist=True)
    assert link.is_symlink() and (target.stat().st_mode & 0o777) == 0o600
    assert Detector.load(target, progress=False).threshold_ == 4.25


def test_an_unexpected_error_is_a_one_line_500_and_the_server_goes_on(files, monkeypatch):
    """The last-resort handler (in process, with Starlette's TestClient): a bug in the model
    call answers 500 with one line, never a traceback, and the next request is served."""
    from fastapi.testclient import TestClient

    from patchbank.service.app import create_app

    registry = ModelRegistry(ServeSettings(models=(ModelSpec("single", str(files["single"])),))).load()
    app = create_app(registry.settings, registry)
    img = _multipart(dict(list(files["part"].items())[:1]))
    with TestClient(app, raise_server_exceptions=False) as client:
        for _ in range(100):
            if client.get("/v2/health/ready").status_code == 200:
                break
            time.sleep(0.05)
        real = registry.predict
        monkeypatch.setattr(registry, "predict", lambda *a: 1 / 0)
        _assert_error(client.post("/v2/models/single/infer", files=img), 500, needle="ZeroDivisionError")
        monkeypatch.setattr(registry, "predict", real)
        assert client.post("/v2/models/single/infer", files=img).status_code == 200
