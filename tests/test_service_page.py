"""The inspection page at ``/``, in a real browser: Debian's headless Chromium driven by
playwright against a real ``patchbank serve`` process.

An image dropped on the page (set on its file input) shows the decision, the normalised score
and the threshold that ``Detector.predict`` gives for the same image, the heatmap overlay on a
canvas of the ORIGINAL image's size, and a one-line error for a file that is not an image.
"""
from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
from PIL import Image, ImageFilter

from patchbank.detector import Detector

pytest.importorskip("fastapi")
sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install chromium)")


@pytest.fixture(scope="module")
def served(synthetic_root, tmp_path_factory):
    from patchbank.service.process import ServerProcess

    tmp = tmp_path_factory.mktemp("page")
    det = Detector.from_preset("lmf-core", progress=False, backbone="efficientnet_lite0",
                               image_size=(96, 96), crop_size=(80, 80), whole_image_check=True,
                               focus_check=True)
    det.fit(synthetic_root / "train" / "good")
    model = tmp / "widget.patchbank"
    det.save(model)
    with ServerProcess([model], ["--quiet", "--threads", "1"], log=tmp / "server.log") as server:
        yield server, Detector.load(model, progress=False), tmp


@pytest.fixture(scope="module")
def page(served):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        pg = browser.new_page(viewport={"width": 1200, "height": 900})
        pg.goto(served[0].url + "/")
        pg.wait_for_function("document.getElementById('status').textContent.startsWith('ready')", timeout=30000)
        yield pg
        browser.close()


def _enlarged(src, dst, size=(180, 120)):
    """A synthetic test image enlarged to a non-square size, so the original's coordinates differ
    from the model's 80 x 80 input."""
    Image.open(src).convert("RGB").resize(size, Image.BILINEAR).save(dst)
    return dst


def test_dropped_image_shows_the_libraries_decision_and_heatmap(served, page, synthetic_root):
    server, det, tmp = served
    src = sorted((synthetic_root / "test" / "spot").glob("*.png"))[0]
    img = _enlarged(src, tmp / "spot_wide.png")
    want = det.predict([Image.open(img)])[0]
    page.set_input_files("#file", str(img))
    page.wait_for_function("document.getElementById('canvas').dataset.rendered === '1'", timeout=60000)
    assert page.inner_text("#badge") == ("FAIL" if want.is_anomalous else "PASS")
    assert page.inner_text("#score") == f"{want.normalized_score:.3f}"
    assert page.inner_text("#thr") == f"{det.threshold_:.3f}"
    size = page.evaluate("[document.getElementById('canvas').width, document.getElementById('canvas').height]")
    assert size == [180, 120]                                   # the original image's own size
    shot = np.asarray(Image.open(io.BytesIO(page.screenshot(full_page=True))).convert("L"), dtype=float)
    assert shot.std() > 10                                      # something drawn, not a blank page
    assert page.inner_text("#error") == ""


def test_threshold_override_on_the_page_moves_the_decision(served, page, synthetic_root):
    server, det, tmp = served
    img = _enlarged(sorted((synthetic_root / "test" / "good").glob("*.png"))[0], tmp / "good_wide.png")
    want = det.predict([Image.open(img)])[0]
    page.fill("#threshold", f"{want.normalized_score - 1.0:.4f}")
    page.set_input_files("#file", str(img))
    page.wait_for_function("document.getElementById('canvas').dataset.rendered === '1'", timeout=60000)
    assert page.inner_text("#badge") == "FAIL"
    page.fill("#threshold", "")


def test_a_blurred_frame_fails_and_the_page_says_the_whole_image_is_unlike_the_training_images(
        served, page, synthetic_root):
    server, det, tmp = served
    good = sorted((synthetic_root / "test" / "good").glob("*.png"))[1]
    Image.open(good).convert("RGB").filter(ImageFilter.GaussianBlur(6)).save(tmp / "blurred.png")
    want = det.predict([Image.open(tmp / "blurred.png")])[0]
    assert want.whole_image_anomalous
    page.set_input_files("#file", str(tmp / "blurred.png"))
    page.wait_for_function("document.getElementById('whole') !== null", timeout=60000)
    assert page.inner_text("#badge") == "FAIL"
    assert "the whole image is unlike the training images" in page.inner_text("#whole")
    page.set_input_files("#file", str(good))               # a good frame: no such line
    page.wait_for_function("document.getElementById('whole') === null", timeout=60000)


def test_a_slightly_blurred_frame_fails_and_the_page_says_it_is_out_of_focus(served, page, synthetic_root):
    server, det, tmp = served
    train = sorted((synthetic_root / "train" / "good").glob("*.png"))[2]
    Image.open(train).convert("RGB").filter(ImageFilter.GaussianBlur(1.5)).save(tmp / "soft.png")
    want = det.predict([Image.open(tmp / "soft.png")])[0]
    assert want.out_of_focus and want.is_anomalous
    page.set_input_files("#file", str(train))              # a training frame: never out of focus
    page.wait_for_function("document.getElementById('focus') === null", timeout=60000)
    page.set_input_files("#file", str(tmp / "soft.png"))
    page.wait_for_function("document.getElementById('focus') !== null", timeout=60000)
    assert page.inner_text("#badge") == "FAIL"
    assert "out of focus: blurrier than every training image" in page.inner_text("#focus")
    assert f"blurriness {want.blurriness:.4g}" in page.inner_text("#focus")


def test_a_file_that_is_not_an_image_shows_a_one_line_error(served, page):
    server, det, tmp = served
    bad = tmp / "notes.png"
    bad.write_bytes(b"these are notes, not pixels")
    page.set_input_files("#file", str(bad))
    page.wait_for_function("document.getElementById('error').textContent.length > 0", timeout=30000)
    text = page.inner_text("#error")
    assert "\n" not in text and "notes.png" in text
    assert server.alive()


def test_a_jpeg_with_an_exif_orientation_is_shown_as_stored_under_its_heatmap(served, page):
    """patchbank reads a JPEG's pixels as stored (EXIF orientation not applied); the browser
    would turn a camera's rotated JPEG (orientation 6: 90 degrees) and stretch the 300 x 200
    heatmap over the turned 200 x 300 picture.  The page shows the stored pixels on a canvas of
    the scored size: white on the stored image's left, black on its right."""
    server, det, tmp = served
    stored = np.zeros((200, 300, 3), np.uint8)
    stored[:, :150] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp / "rotated.jpg"
    Image.fromarray(stored).save(path, quality=95, exif=exif)
    page.set_input_files("#file", str(path))
    page.wait_for_function("document.getElementById('canvas').dataset.rendered === '1'", timeout=60000)
    page.uncheck("#show-heat")
    page.uncheck("#show-region")
    size = page.evaluate("[document.getElementById('canvas').width, document.getElementById('canvas').height]")
    assert size == [300, 200]
    grey = page.evaluate("""() => { const ctx = document.getElementById('canvas').getContext('2d');
        const at = (x, y) => { const d = ctx.getImageData(x, y, 1, 1).data; return (d[0] + d[1] + d[2]) / 3; };
        return [at(40, 40), at(40, 160), at(260, 40), at(260, 160)]; }""")
    assert min(grey[:2]) > 200 and max(grey[2:]) < 50, grey
    assert page.inner_text("#error") == ""
    page.check("#show-heat")
    page.check("#show-region")
