"""Bad and unusual image inputs (issue 15, items 1, 6 and 10): every image mode decodes to the
right RGB values or is refused in one line; corrupt, truncated, empty, huge and tiny files, odd
in-memory inputs, mixed folders and duplicate inputs.  Every input is generated here."""
from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from conftest import dds_with_unknown_pixel_format
from patchbank.errors import PatchbankError
from patchbank.io import images
from patchbank.io.images import as_items, list_images, open_rgb


def png_bytes(width: int, height: int, depth: int = 8, color_type: int = 0, rows: bytes = b"") -> bytes:
    """A PNG written by hand, so that the header can claim anything (filter byte 0 per row)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


def rgb(path) -> np.ndarray:
    return np.asarray(open_rgb(path))


def save(tmp_path, name: str, im: Image.Image, **kw):
    path = tmp_path / name
    im.save(path, **kw)
    return path


def one_line_error(match: str):
    """pytest.raises for a PatchbankError whose message is one line."""
    class _Check:
        def __enter__(self):
            self.ctx = pytest.raises(PatchbankError, match=match)
            self.info = self.ctx.__enter__()
            return self.info

        def __exit__(self, *exc):
            out = self.ctx.__exit__(*exc)
            assert "\n" not in str(self.info.value)
            return out
    return _Check()


# ------------------------------------------------------------------ modes: the right RGB values

SIXTEEN = np.array([[0, 128, 129, 257, 25700, 65535]], np.uint16)
SIXTEEN_AS_8 = np.array([0, 0, 1, 1, 100, 255], np.uint8)   # round(v / 257)


@pytest.mark.parametrize("name, dtype", [("g16.png", "<u2"), ("g16.tif", "<u2"), ("g16b.tif", ">u2")])
def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path, name, dtype):
    im = Image.fromarray(SIXTEEN.astype(dtype))
    assert im.mode in ("I;16", "I;16B")
    path = save(tmp_path, name, im)
    assert Image.open(path).mode in ("I;16", "I;16B")
    got = rgb(path)
    assert got.shape == (1, 6, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got[0, :, 0], SIXTEEN_AS_8)
    np.testing.assert_array_equal(got[..., 0], got[..., 2])


def test_sixteen_bit_pgm_and_twelve_bit_pgm(tmp_path):
    """PIL reads a 16-bit PGM as mode I and scales a 12-bit one (maxval 4095) to 16 bits."""
    (tmp_path / "a.pgm").write_bytes(b"P5\n2 1\n65535\n" + np.array([65535, 257 * 7], ">u2").tobytes())
    (tmp_path / "b.pgm").write_bytes(b"P5\n2 1\n4095\n" + np.array([4095, 0], ">u2").tobytes())
    np.testing.assert_array_equal(rgb(tmp_path / "a.pgm")[0, :, 1], [255, 7])
    np.testing.assert_array_equal(rgb(tmp_path / "b.pgm")[0, :, 1], [255, 0])


def test_sixteen_bit_data_in_few_bits_is_read_with_a_warning(tmp_path):
    # 12-bit camera data stored in 16 bits keeps 17 grey levels after the 1/257 scaling: said,
    # not silent; the values read are unchanged (a model's inputs do not move)
    import warnings

    twelve = save(tmp_path, "t.png", Image.fromarray(np.array([[0, 4000]], np.uint16)))
    with pytest.warns(UserWarning, match=r"values only up to 4095 \(12-bit data\?\) are read as 17 of "
                                         r"256 grey levels.*multiply by 16\)"):
        np.testing.assert_array_equal(rgb(twelve)[0, :, 0], [0, 16])
    with pytest.warns(UserWarning, match=r"up to 1023 \(10-bit data\?\) are read as 5 of 256"):
        open_rgb(np.array([[0, 1000]], np.uint16))
    full = save(tmp_path, "f.png", Image.fromarray(np.array([[0, 16384]], np.uint16)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(rgb(full)[0, :, 0], [0, 64])    # 2**14 and above: no warning


def test_int32_image_in_sixteen_bit_range_is_read_as_sixteen_bit(tmp_path):
    path = save(tmp_path, "i.tif", Image.fromarray(SIXTEEN.astype(np.int32)))
    assert Image.open(path).mode == "I"
    np.testing.assert_array_equal(rgb(path)[0, :, 0], SIXTEEN_AS_8)


@pytest.mark.parametrize("value", [70000, -5])
def test_int32_image_outside_sixteen_bit_range_is_refused(tmp_path, value):
    path = save(tmp_path, "i.tif", Image.fromarray(np.array([[0, value]], np.int32)))
    with one_line_error(r"i\.tif: 32-bit integer pixel values span .*outside 0-65535"):
        rgb(path)


def test_float_image_in_unit_range_is_scaled_by_255(tmp_path):
    path = save(tmp_path, "f.tif", Image.fromarray(np.array([[0, 0.25, 0.5, 1.0]], np.float32)))
    assert Image.open(path).mode == "F"
    np.testing.assert_array_equal(rgb(path)[0, :, 2], [0, 64, 128, 255])


@pytest.mark.parametrize("values, match", [
    ([0.0, 2.0], r"f\.tif: float pixel values span \[0, 2\], outside \[0, 1\]: divide"),
    ([-0.5, 0.5], r"span \[-0\.5, 0\.5\], outside \[0, 1\]"),
    ([0.0, 1000.0], r"outside \[0, 1\]"),
    ([0.5, np.nan], r"f\.tif: 1 pixel\(s\) are NaN or infinite"),
    ([np.inf, 0.5], r"NaN or infinite"),
])
def test_float_image_outside_unit_range_or_not_finite_is_refused(tmp_path, values, match):
    path = save(tmp_path, "f.tif", Image.fromarray(np.array([values], np.float32)))
    with one_line_error(match):
        rgb(path)


def _palette_image() -> Image.Image:
    p = Image.new("P", (3, 1))
    p.putpalette([10, 20, 30, 200, 100, 50, 0, 255, 0] + [0] * 759)
    p.putdata([0, 1, 2])
    return p


@pytest.mark.parametrize("transparency", [None, 1])
def test_palette_png_gives_palette_colours_alpha_dropped(tmp_path, transparency):
    kw = {} if transparency is None else {"transparency": transparency}
    path = save(tmp_path, "p.png", _palette_image(), **kw)
    assert Image.open(path).mode == "P"
    np.testing.assert_array_equal(rgb(path)[0], [[10, 20, 30], [200, 100, 50], [0, 255, 0]])


def test_gif_first_frame_is_read(tmp_path):
    frames = [_palette_image(), _palette_image().point(lambda i: 2 - i if i < 3 else i)]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    assert Image.open(tmp_path / "a.gif").n_frames == 2
    np.testing.assert_array_equal(rgb(tmp_path / "a.gif")[0], [[10, 20, 30], [200, 100, 50], [0, 255, 0]])


@pytest.mark.parametrize("mode, pixels, expected", [
    ("LA", [(10, 0), (200, 255)], [[10, 10, 10], [200, 200, 200]]),
    ("RGBA", [(1, 2, 3, 0), (250, 128, 7, 255)], [[1, 2, 3], [250, 128, 7]]),
    ("1", [0, 1], [[0, 0, 0], [255, 255, 255]]),
    ("L", [0, 77], [[0, 0, 0], [77, 77, 77]]),
])
def test_modes_with_alpha_bilevel_and_gray_give_the_expected_rgb(tmp_path, mode, pixels, expected):
    im = Image.new(mode, (2, 1))
    im.putdata(pixels)
    path = save(tmp_path, f"{mode}.png", im)
    assert Image.open(path).mode == mode
    np.testing.assert_array_equal(rgb(path)[0], expected)


def test_cmyk_tiff_and_jpeg_give_rgb(tmp_path):
    im = Image.new("CMYK", (2, 1))
    im.putdata([(0, 255, 255, 0), (0, 0, 0, 0)])            # red, white
    np.testing.assert_array_equal(rgb(save(tmp_path, "c.tif", im))[0], [[255, 0, 0], [255, 255, 255]])
    big = Image.new("CMYK", (16, 16), (0, 255, 255, 0))
    got = rgb(save(tmp_path, "c.jpg", big, quality=95))
    assert np.abs(got.astype(int) - [255, 0, 0]).max() <= 8


def test_sixteen_bit_rgb_and_gray_alpha_pngs_use_the_high_byte(tmp_path):
    rows = b"\x00" + struct.pack(">6H", 65535, 0, 32896, 2570, 1000, 40000)
    (tmp_path / "rgb16.png").write_bytes(png_bytes(2, 1, 16, 2, rows))
    np.testing.assert_array_equal(rgb(tmp_path / "rgb16.png")[0], [[255, 0, 128], [10, 3, 156]])
    rows = b"\x00" + struct.pack(">4H", 40000, 65535, 771, 0)
    (tmp_path / "la16.png").write_bytes(png_bytes(2, 1, 16, 4, rows))
    np.testing.assert_array_equal(rgb(tmp_path / "la16.png")[0], [[156] * 3, [3] * 3])


@pytest.mark.parametrize("name, mode", [("rgb.png", "RGB"), ("l.png", "L"), ("rgb.jpg", "RGB"),
                                        ("l.jpg", "L"), ("rgb.bmp", "RGB"), ("rgb.webp", "RGB")])
def test_eight_bit_rgb_and_gray_decode_exactly_as_before(tmp_path, name, mode):
    shape = (23, 31, 3) if mode == "RGB" else (23, 31)
    arr = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    path = save(tmp_path, name, Image.fromarray(arr, mode))
    np.testing.assert_array_equal(rgb(path), np.asarray(Image.open(path).convert("RGB")))


def test_other_pil_modes_in_memory(tmp_path):
    hsv = Image.new("HSV", (1, 1), (85, 255, 255))
    np.testing.assert_array_equal(np.asarray(open_rgb(hsv))[0, 0], [0, 255, 0])
    ycc = Image.new("RGB", (1, 1), (30, 60, 90)).convert("YCbCr")
    assert np.abs(np.asarray(open_rgb(ycc)).astype(int)[0, 0] - [30, 60, 90]).max() <= 2
    sixteen = Image.fromarray(SIXTEEN)
    np.testing.assert_array_equal(np.asarray(open_rgb(sixteen))[0, :, 0], SIXTEEN_AS_8)
    with one_line_error(r"PIL image: images of mode La are not supported"):
        open_rgb(Image.new("La", (2, 2)))


# ------------------------------------------------------------------ corrupt, truncated, empty, huge, tiny files

def _noise_png(tmp_path, name="n.png", fmt=None) -> bytes:
    arr = np.random.default_rng(1).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / name, format=fmt)
    return (tmp_path / name).read_bytes()


@pytest.mark.parametrize("name, make, match", [
    ("zero.png", lambda tp: b"", r"cannot read image .*zero\.png: the file is empty \(0 bytes\)"),
    ("text.png", lambda tp: b"hello, this is not an image\n" * 10, r"text\.png: not an image format"),
    ("Thumbs.jpg", lambda tp: bytes(range(256)) * 4, r"Thumbs\.jpg: not an image format"),
    ("sig.png", lambda tp: b"\x89PNG\r\n\x1a\n" + b"\x00" * 5, r"cannot read image .*sig\.png"),
    ("trunc.png", lambda tp: _noise_png(tp, "t.png")[:3000], r"cannot read image .*trunc\.png: .*truncated"),
    ("trunc.jpg", lambda tp: _noise_png(tp, "t.jpg", "JPEG")[:2000], r"trunc\.jpg: image file is truncated"),
    ("header.png", lambda tp: _noise_png(tp, "h.png")[:30], r"cannot read image .*header\.png"),
    ("crc.png", lambda tp: _noise_png(tp, "c.png")[:100] + b"\xff" * 50 + _noise_png(tp, "c.png")[150:],
     r"cannot read image .*crc\.png"),
    ("width0.png", lambda tp: png_bytes(0, 5), r"cannot read image .*width0\.png"),
    ("height0.png", lambda tp: png_bytes(7, 0), r"cannot read image .*height0\.png"),
])
def test_corrupt_truncated_and_empty_files_give_one_line_errors(tmp_path, name, make, match):
    path = tmp_path / name
    path.write_bytes(make(tmp_path))
    with one_line_error(match):
        rgb(path)


def test_header_claiming_20000_by_20000_is_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_bytes(20000, 20000))
    with one_line_error(r"image .*bomb\.png: refused before decoding, over the pixel budget of 89\.5"):
        rgb(path)


def test_pixel_budget_is_checked_from_the_header(tmp_path, monkeypatch):
    """Over the budget, the header alone decides: the IDAT here is garbage and is never read."""
    path = tmp_path / "big.png"
    path.write_bytes(png_bytes(40, 30, rows=b"garbage"))
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 1000)
    with one_line_error(r"big\.png: 40x30 \(WxH\) is 0\.0 megapixels, over the pixel budget"):
        rgb(path)
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 1200)
    with one_line_error(r"cannot read image .*big\.png"):   # within budget: decoded, and corrupt
        rgb(path)


def test_missing_file_folder_and_non_image_extension(tmp_path):
    with one_line_error(r"image not found: .*nope\.png"):
        rgb(tmp_path / "nope.png")
    (tmp_path / "d.png").mkdir()
    with one_line_error(r"cannot read image .*d\.png"):
        rgb(tmp_path / "d.png")
    (tmp_path / "notes.txt").write_text("not an image")
    assert as_items(tmp_path / "notes.txt") == [tmp_path / "notes.txt"]   # a file given by name is tried
    with one_line_error(r"notes\.txt: not an image format"):
        rgb(tmp_path / "notes.txt")


def _other_format(fmt: str) -> bytes:
    import io

    buf = io.BytesIO()
    Image.new("RGB", (30, 20), (90, 120, 150)).save(buf, fmt)
    return buf.getvalue()


@pytest.mark.parametrize("name, make", [
    ("frame.tga", lambda: _other_format("TGA")),
    ("icon.ico", lambda: _other_format("ICO")),
    ("frame.png", lambda: _other_format("TGA")),     # the name does not decide: the content does
    ("bad.dds", dds_with_unknown_pixel_format),      # PIL: NotImplementedError from Image.open
])
def test_formats_pil_knows_but_patchbank_does_not_read_are_refused(tmp_path, name, make):
    """Only the documented formats' plugins open a file or an upload (images.READ_FORMATS): a TGA
    or ICO (which PIL would decode) and a DDS whose header makes PIL's plugin raise
    NotImplementedError are one-line errors, from a path and from bytes alike."""
    from patchbank.io.images import decode_bytes

    data = make()
    (tmp_path / name).write_bytes(data)
    with one_line_error(rf"cannot read image .*{name}: not an image format patchbank reads \(PNG, JPEG"):
        rgb(tmp_path / name)
    with one_line_error(rf"cannot read image {name}: not an image format patchbank reads"):
        decode_bytes(data, name)


@pytest.mark.parametrize("raised", [NotImplementedError("unknown flags"), AttributeError("stkoffset"),
                                    struct.error("unpack requires a buffer"), SyntaxError("not a TIFF")])
def test_any_failure_of_a_plugin_opening_a_header_is_a_one_line_error(tmp_path, monkeypatch, raised):
    """PIL's plugins raise many types on a corrupt header (a malformed SPIDER file: AttributeError);
    whatever an opener raises on the bytes is the input's fault and a one-line error naming it,
    for a file and for an upload (a 400 from the service, not a 500)."""
    from patchbank.io.images import decode_bytes

    path = tmp_path / "x.png"
    path.write_bytes(_other_format("PNG"))

    def failing_open(*args, **kwargs):
        raise raised
    monkeypatch.setattr(images.Image, "open", failing_open)
    with one_line_error(rf"cannot read image .*x\.png: {raised}"):
        rgb(path)
    with one_line_error(rf"cannot read image up\.png: {raised}"):
        decode_bytes(path.read_bytes(), "up.png")


def test_a_fifo_or_a_broken_link_is_refused_without_opening_it(fitted, tmp_path):
    # opening a FIFO for reading blocks until a writer comes: predict on one used to hang
    # forever.  A daemon thread plays the writer after 10 s, so a regression fails (an empty
    # file's error) instead of hanging the suite.
    import os
    import threading

    from patchbank.io.datasets import load_mask
    from patchbank.io.prediction_files import expand_inputs

    fifo = tmp_path / "cam.png"
    os.mkfifo(fifo)

    def writer():
        import time
        time.sleep(10)
        with open(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK), "wb"):
            pass
    threading.Thread(target=writer, daemon=True).start()
    for call in (lambda: fitted.predict(fifo), lambda: fitted.predict([str(fifo)]),
                 lambda: expand_inputs([fifo])):
        with one_line_error(r"cam\.png is not a regular file or a folder \(a FIFO"):
            call()
    for call in (lambda: rgb(fifo), lambda: load_mask(fifo)):
        with one_line_error(r"cannot read (image|mask) .*cam\.png: not a regular file"):
            call()
    (tmp_path / "gone.png").symlink_to(tmp_path / "missing.png")
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")
    for name in ("gone.png", "loop.png"):
        for call in (lambda: fitted.predict(tmp_path / name), lambda: expand_inputs([tmp_path / name])):
            with one_line_error(rf"{name} is a link to a missing file or a loop of links"):
                call()


def test_a_folder_of_folders_skips_images_in_hidden_folders_with_a_warning(tmp_path):
    from patchbank.io.prediction_files import expand_inputs

    for rel in ("good/a.png", "crack/b.png", ".ipynb_checkpoints/b-checkpoint.png", "crack/.x/c.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / rel)
    with pytest.warns(UserWarning, match=r"skipped 2 image\(s\) inside hidden folders"):
        got = expand_inputs([tmp_path])
    assert [p.relative_to(tmp_path).as_posix() for p in got] == ["crack/b.png", "good/a.png"]


def test_png_content_with_jpg_extension_is_read_by_content(tmp_path):
    arr = np.random.default_rng(2).integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "really_png.jpg", format="PNG")
    np.testing.assert_array_equal(rgb(tmp_path / "really_png.jpg"), arr)


# ------------------------------------------------------------------ in-memory inputs

@pytest.mark.parametrize("arr, match", [
    (np.zeros((0, 5, 3), np.uint8), r"image input #0: the image array has a 0-pixel side \(shape \(0, 5, 3\)\)"),
    (np.zeros((5, 0), np.uint8), r"0-pixel side"),
    (np.zeros((0, 0), np.uint8), r"0-pixel side"),
    (np.zeros((4, 4, 0), np.uint8), r"must be HxW, HxWx1, HxWx3 or HxWx4, got shape \(4, 4, 0\)"),
    (np.zeros((4, 4, 2), np.uint8), r"got shape \(4, 4, 2\)"),
    (np.zeros((4, 4, 5), np.uint8), r"got shape \(4, 4, 5\)"),
    (np.zeros(16, np.uint8), r"got shape \(16,\)"),
    (np.zeros((2, 4, 4, 3), np.uint8), r"got shape \(2, 4, 4, 3\) \(pass a list of arrays"),
    (np.zeros((4, 4), bool), r"dtype bool are not supported: use uint8"),
    (np.zeros((4, 4, 3), np.complex64), r"dtype complex64 are not supported"),
    (np.zeros((4, 4), object), r"dtype object are not supported"),
    (np.zeros((4, 4), np.int64), r"dtype int64 are not supported"),
    (np.zeros((4, 4), np.int32), r"dtype int32 are not supported"),
    (np.zeros((4, 4), np.uint32), r"dtype uint32 are not supported"),
])
def test_bad_arrays_are_refused_by_as_items(arr, match):
    with one_line_error(match):
        as_items([arr])
    with one_line_error(match.replace("image input #0", "image array")):
        open_rgb(arr)


@pytest.mark.parametrize("values, match", [
    ([[0.5, np.nan]], r"image array: 1 pixel\(s\) are NaN or infinite"),
    ([[0.5, -np.inf]], r"NaN or infinite"),
    ([[0.0, 255.0]], r"image array: float pixel values span \[0, 255\], outside \[0, 1\]"),
])
def test_float_arrays_with_nan_or_out_of_range_values_are_refused(values, match):
    with one_line_error(match):
        open_rgb(np.array(values, np.float32))


def test_uint16_and_float_arrays_follow_the_file_rules():
    np.testing.assert_array_equal(np.asarray(open_rgb(SIXTEEN))[0, :, 1], SIXTEEN_AS_8)
    floats = np.array([[0, 0.25, 0.5, 1.0]], np.float64)
    np.testing.assert_array_equal(np.asarray(open_rgb(floats))[0, :, 0], [0, 64, 128, 255])
    arr = np.random.default_rng(3).integers(0, 256, size=(5, 6, 4), dtype=np.uint8)
    np.testing.assert_array_equal(np.asarray(open_rgb(arr)), arr[..., :3])   # 4th channel dropped
    np.testing.assert_array_equal(np.asarray(open_rgb(arr[..., :1])), np.repeat(arr[..., :1], 3, axis=2))


def test_bad_pil_images_and_arguments_are_refused():
    with one_line_error(r"image input #1: the image has a 0-pixel side \(0x0, WxH\)"):
        as_items([Image.new("RGB", (2, 2)), Image.new("RGB", (0, 0))])
    with one_line_error(r"PIL image: the image has a 0-pixel side \(3x0"):
        open_rgb(Image.new("L", (3, 0)))
    with one_line_error(r"images must be a folder, a file, a PIL image, an array or a list of those, got NoneType"):
        as_items(None)
    with one_line_error(r"got int"):
        as_items(5)
    with one_line_error(r"unsupported image input #1 of type float"):
        as_items([np.zeros((2, 2), np.uint8), 1.5])
    with one_line_error(r"no images given"):
        as_items([])
    # an upload's bytes were iterated as ints ("input #0 of type int"), a dict's keys read as
    # paths ("file or folder not found: a")
    for data in (b"\x89PNG", bytearray(b"\x89PNG"), memoryview(b"\x89PNG")):
        with one_line_error(rf"images given as {type(data).__name__}: pass a file path, or decode the bytes"):
            as_items(data)
    with one_line_error(r"got dict \(pass its values as a list\)"):
        as_items({"a": np.zeros((2, 2), np.uint8)})


def test_in_memory_pil_image_over_the_budget_is_refused(monkeypatch):
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 99)
    with one_line_error(r"image input #0: 10x10 \(WxH\) is 0\.0 megapixels, over the pixel budget"):
        as_items([Image.new("RGB", (10, 10))])


# ------------------------------------------------------------------ folders

def _png(path, value=100, size=(8, 8)):
    Image.fromarray(np.full(size, value, np.uint8)).save(path)
    return path


def test_gif_webp_bmp_tiff_and_pgm_in_a_folder_are_used(tmp_path):
    for ext in ("png", "gif", "webp", "bmp", "tif", "pgm"):
        Image.fromarray(np.full((8, 8), 90, np.uint8)).save(tmp_path / f"a_{ext}.{ext}")
    files = list_images(tmp_path)
    assert sorted(p.suffix for p in files) == sorted([".png", ".gif", ".webp", ".bmp", ".tif", ".pgm"])
    for p in files:
        assert np.abs(rgb(p).astype(int) - 90).max() <= 2, p


def test_other_files_in_a_folder_are_skipped_with_a_warning(tmp_path):
    _png(tmp_path / "000.png"), _png(tmp_path / "001.png")
    (tmp_path / "Thumbs.db").write_bytes(b"\x00" * 10)
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "old").mkdir()
    with pytest.warns(UserWarning, match=r"skipped 3 entries that are not an image: Thumbs\.db, notes\.txt, old/"):
        files = list_images(tmp_path)
    assert [p.name for p in files] == ["000.png", "001.png"]
    with pytest.warns(UserWarning, match=r"skipped 3 entries"):
        assert len(as_items(tmp_path)) == 2


def test_hidden_image_files_are_never_inputs_and_are_named_in_the_warning(tmp_path):
    """Session 31: a hidden file with an image extension (macOS's ``._000.png`` resource fork, a
    ``.backup.png``) was fitted / predicted in a flat folder without a word (or, not being an
    image, stopped the run), while hidden folders were skipped with a warning."""
    _png(tmp_path / "000.png"), _png(tmp_path / ".backup.png")
    (tmp_path / "._000.png").write_bytes(b"\x00\x05\x16\x07 resource fork")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.warns(UserWarning, match=r"skipped 1 entry that is not an image: notes\.txt .*; skipped 2 "
                                         r"hidden image files \(a name starting with '\.'\): \._000\.png, \.backup\.png$"):
        assert [p.name for p in list_images(tmp_path)] == ["000.png"]
    (tmp_path / "000.png").unlink()
    with one_line_error(r"no images .* found in .*; it holds 1 entry that is not an image: notes\.txt; "
                        r"skipped 2 hidden image files"):
        list_images(tmp_path)


def test_warning_names_the_first_five_skipped_files(tmp_path):
    _png(tmp_path / "a.png")
    for i in range(7):
        (tmp_path / f"x{i}.raw").write_bytes(b"1")
    with pytest.warns(UserWarning, match=r"skipped 7 entries .*: x0\.raw, x1\.raw, x2\.raw, x3\.raw, x4\.raw, \.\.\."):
        list_images(tmp_path)


def test_folders_without_images_are_errors_naming_them(tmp_path):
    (tmp_path / "empty").mkdir()
    with one_line_error(r"no images \(.*\) found in .*empty$"):
        list_images(tmp_path / "empty")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "Thumbs.db").write_bytes(b"\x00")
    with one_line_error(r"no images .* found in .*junk; it holds 1 entry that is not an image: Thumbs\.db"):
        as_items(tmp_path / "junk")


def test_a_corrupt_image_in_a_folder_is_not_skipped(tmp_path):
    _png(tmp_path / "000.png")
    (tmp_path / "001.png").write_bytes(b"broken")
    files = list_images(tmp_path)
    assert [p.name for p in files] == ["000.png", "001.png"]
    with one_line_error(r"001\.png: not an image format"):
        [rgb(p) for p in files]


# ------------------------------------------------------------------ duplicates and links

def test_duplicate_and_linked_inputs_are_all_kept_in_order(tmp_path):
    a, b = _png(tmp_path / "a.png", 10), _png(tmp_path / "b.png", 20)
    link = tmp_path / "link.png"
    link.symlink_to(a)
    assert as_items([a, a]) == [a, a]
    assert as_items([link, a, str(b), a]) == [link, a, b, a]
    assert as_items([tmp_path / "a.png", tmp_path]) == [a, a, b, link]   # the folder lists the link too
    arr = np.zeros((4, 4), np.uint8)
    items = as_items([arr, arr])
    assert len(items) == 2 and items[0] is items[1] is arr


def test_predict_gives_one_prediction_per_input_with_duplicates(fitted, synthetic_root, tmp_path):
    good = sorted((synthetic_root / "test" / "good").glob("*.png"))[0]
    link = tmp_path / "link.png"
    link.symlink_to(good)
    preds = fitted.predict([good, link, good, str(good)])
    assert len(preds) == 4
    assert [p.path for p in preds] == [str(good), str(link), str(good), str(good)]
    assert len({round(float(p.score), 6) for p in preds}) == 1


def test_sixteen_bit_copy_of_an_image_scores_like_the_eight_bit_one(fitted, synthetic_root, tmp_path):
    """The issue's failure: a 16-bit PNG read as all white scored every image the same."""
    paths = [sorted((synthetic_root / "test" / d).glob("*.png"))[0] for d in ("good", "spot", "scratch")]
    eight, sixteen = [], []
    for i, p in enumerate(paths):
        gray = np.asarray(Image.open(p).convert("L"))
        eight.append(save(tmp_path, f"{i}_8.png", Image.fromarray(gray)))
        sixteen.append(save(tmp_path, f"{i}_16.png", Image.fromarray(gray.astype(np.uint16) * 257)))
        assert Image.open(sixteen[-1]).mode == "I;16"
    s8 = [p.score for p in fitted.predict(eight)]
    s16 = [p.score for p in fitted.predict(sixteen)]
    np.testing.assert_allclose(s16, s8, rtol=1e-6)
    assert len({round(float(s), 4) for s in s16}) == 3


@pytest.mark.parametrize("draft_size", [None, (96, 96)], ids=["full scale", "reduced-scale JPEG"])
def test_corrupted_uploads_are_one_line_errors_never_another_exception(draft_size):
    """Seeded corruptions (bytes overwritten anywhere or in the header, cut short) of small
    JPEG, PNG, BMP, TIFF, GIF and WebP files: ``decode_bytes`` (what the service decodes an upload
    with, also drafting a JPEG toward a model's resize) either decodes them to RGB or raises a
    one-line PatchbankError; nothing else escapes."""
    import io
    import random
    import warnings

    from patchbank.io.images import decode_bytes

    rng = random.Random(0)
    pixels = (np.random.default_rng(0).random((120, 160, 3)) * 255).astype(np.uint8)
    sources = {}
    for fmt in ("JPEG", "PNG", "BMP", "TIFF", "GIF", "WEBP"):
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, fmt)
        sources[fmt] = buf.getvalue()
    outcomes = {"decoded": 0, "refused": 0}
    for _ in range(600):
        fmt = rng.choice(sorted(sources))
        data = bytearray(sources[fmt])
        kind = rng.choice(["anywhere", "header", "cut"])
        if kind == "cut":
            data = data[:rng.randrange(1, len(data))]
        else:
            span = len(data) if kind == "anywhere" else min(len(data), 600)
            for _ in range(rng.randint(1, 12)):
                data[rng.randrange(span)] = rng.randrange(256)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                im = decode_bytes(bytes(data), f"x.{fmt.lower()}", draft_size=draft_size)
        except PatchbankError as exc:
            assert "\n" not in str(exc) and str(exc)
            outcomes["refused"] += 1
        else:
            assert im.mode == "RGB" and im.width > 0 and im.height > 0
            outcomes["decoded"] += 1
    assert outcomes["decoded"] > 50 and outcomes["refused"] > 50   # both kinds were reached


@pytest.mark.parametrize("draft_size", [96, (96,), (96, 0), (96.0, 96), (True, 96), "96x96"])
def test_a_bad_draft_size_is_a_one_line_error(draft_size):
    """``decode_bytes``'s ``draft_size`` is a model's ``config.image_size``: anything else is
    refused by name, for a PNG as for a JPEG."""
    import io

    from patchbank.io.images import decode_bytes

    for fmt in ("JPEG", "PNG"):
        buf = io.BytesIO()
        Image.new("RGB", (400, 300)).save(buf, fmt)
        with pytest.raises(PatchbankError, match=r"^draft_size must be None or \(height, width\)") as err:
            decode_bytes(buf.getvalue(), "x", draft_size=draft_size)
        assert "\n" not in str(err.value)
    assert decode_bytes(buf.getvalue(), "x", draft_size=[96, 96]).size == (400, 300)
