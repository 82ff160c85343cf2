"""Reading images and turning them into normalised backbone input, in streamed batches.

Preprocessing follows the PatchCore / LMF-Core protocol: resize to ``config.image_size`` (bilinear,
antialiased), centre-crop to ``config.crop_size``, scale to [0, 1], normalise with the backbone's
mean and std.  With ``crop_at="features"`` the backbone reads the whole resize
(:func:`prepare_input`) and the crop is cut from its feature maps
(:class:`patchbank.pipeline.features.FeatureCrop`); the map still lies on the crop
(:func:`prepare_view`).  Decoding runs in a small thread pool one batch ahead of the consumer (PIL releases
the GIL while decoding and resizing).

What is read, and how (every input becomes 8-bit RGB before resizing)
---------------------------------------------------------------------
* **Files** with an extension in :data:`IMAGE_EXTENSIONS` (PNG, JPEG, BMP, TIFF, WebP, GIF,
  PBM/PGM/PPM/PNM).  A file or an upload is read by its content, and only as one of these
  formats (:data:`READ_FORMATS`): bytes of any other format PIL knows (TGA, DDS, ICO, ...) are
  refused like unknown bytes.  A multi-frame GIF or TIFF is read at its first frame.  EXIF orientation and
  ICC profiles are not applied: pixels are used as stored (as the masks are).  A JPEG file, or
  uploaded JPEG bytes (:func:`decode_bytes` with the model's resize), decodes at libjpeg's
  reduced scale (1/2, 1/4, 1/8) not below the resize (:func:`draft_jpeg`): the same bytes give the
  same pixels on every path; its window keeps the full size.
* **8-bit modes**: ``RGB`` as is; ``L`` (grayscale) and ``1`` (bilevel: 0 / 255) repeated into
  the three channels; palette ``P`` by its palette colours; ``RGBA``, ``LA``, ``PA``: the alpha
  channel is dropped (transparent pixels keep their stored colour, nothing is composited);
  ``CMYK``, ``YCbCr``, ``HSV``, ``LAB`` with PIL's conversion (no colour profile).  A 48-bit RGB
  PNG is read by PIL as 8-bit RGB (high byte).
* **16-bit grayscale** (``I;16``, ``I;16B``, ...): scaled by the type's full range,
  ``round(value / 257)`` (65535 -> 255, 257 -> 1).  12-bit camera data stored in 16 bits
  (0-4095) therefore comes out dark (0-16): multiply it by 16 first.  An image whose values
  stay below 16,384 is read with a ``UserWarning`` saying so (:func:`warn_narrow_sixteen_bit`).
* **32-bit integer** (``I``; PIL also uses it as the container of 16-bit data): values must lie
  in 0-65535 and are scaled like 16-bit; any value outside is refused (save the image as 16-bit
  or 8-bit, or as float in [0, 1]).
* **Float** (``F``): every value must be finite and in [0, 1] and is scaled by 255; NaN or
  infinite pixels and values outside [0, 1] are refused, the message says the range found.
* **In-memory inputs** (see :func:`as_items`): a PIL image (the same mode rules as a file, but
  decoded as it is: a JPEG opened by the caller decodes at full scale, where its path would be
  read at the reduced scale above, so pass the path, or the bytes through :func:`decode_bytes`
  with the model's ``config.image_size``, for the file's answer), or a numpy array
  HxW, HxWx1, HxWx3 or HxWx4 (the 4th channel is dropped) of dtype ``uint8`` (as is), ``uint16``
  (like 16-bit files) or float (like ``F`` files).  Other dtypes (bool, signed or 32/64-bit
  integers, complex, object) are refused: the scale of such an array is a guess.
* **Size**: a side of 0 pixels is refused; so is an image over :data:`MAX_IMAGE_PIXELS`, read
  from the file's header before any pixel is decoded.
* **Folders** (:func:`list_images`): every file with an image extension is used (sorted by name);
  anything else in the folder (``Thumbs.db``, ``notes.txt``, a sub-folder) is skipped with one
  ``UserWarning`` naming how many entries and the first few; a folder without images is an error.
  A file with an image extension that cannot be decoded is an error when it is read, never skipped.

Every problem is a one-line :class:`PatchbankError` naming the file (or the in-memory input) and
what is wrong.  8-bit ``RGB`` and ``L`` images decode exactly as ``Image.open(p).convert("RGB")``
(a JPEG larger than twice the resize: as the same after ``draft``).
"""
from __future__ import annotations

import hashlib
import io
import numbers
import os
import stat
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from patchbank.errors import PatchbankError
from patchbank.io.image_coords import Window, network_window, view_window

if TYPE_CHECKING:   # torch is imported where tensors are made: decoding alone (a Ray decoding
    import torch    # task) does not pay for importing it

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif",
                    ".pbm", ".pgm", ".ppm", ".pnm")

#: The pixel budget: an image whose header claims more pixels (width x height) is refused before
#: decoding.  89,478,485 (about 89 megapixels, e.g. 9500 x 9400) is PIL's own decompression-bomb
#: threshold (``1024**3 // 4 // 3``), so no image accepted here makes PIL warn, and at twice it
#: PIL refuses to open the file at all.  It is above the common industrial area-scan sensors
#: (5-65 MP); decoded as 8-bit RGB such an image takes 268 MB, and a 16-bit or float one about
#: 1 GB of working copies while it is scaled, per decoding thread.  The model resizes every image
#: to ``config.image_size`` anyway: downscale larger frames (or tiles of a line-scan strip)
#: first, or raise this value together with ``PIL.Image.MAX_IMAGE_PIXELS``.
MAX_IMAGE_PIXELS = 89_478_485

#: The image formats read, by PIL's names: those of :data:`IMAGE_EXTENSIONS` (PIL's JPEG plugin
#: also opens an MPO, a JPEG carrying more frames; PPM is PIL's name for PBM / PGM / PPM / PNM).
#: Files and uploads are opened by these plugins only, whatever their name or content: the rest
#: of PIL's plugins (DDS, SPIDER, ...) read formats no camera writes for inspection, and are not
#: tried on untrusted bytes.
READ_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP", "GIF", "PPM")
#: How a refused format is named in the one-line error.
READ_FORMATS_NAMED = "PNG, JPEG, BMP, TIFF, WebP, GIF, PBM / PGM / PPM"

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
_NAMED_SKIPPED = 5   # how many skipped entries a warning names


def one_line(text: Any) -> str:
    """``text`` with every run of whitespace (newlines included) collapsed to one space."""
    return " ".join(str(text).split())


# ------------------------------------------------------------------------------------------------
# folders and inputs
# ------------------------------------------------------------------------------------------------

def _scan(folder: Path) -> tuple[list[Path], list[str], list[str]]:
    """(image files, names of the other entries: ``sub/`` for a folder, names of hidden image
    files), all sorted; an entry with an image extension that cannot be read is an error
    (:func:`refuse_unreadable`).  A hidden file (its name starts with ``.``: macOS's ``._x.jpg``
    resource forks, an editor's backup) is never an input, as hidden folders are not."""
    entries = sorted(folder.iterdir())
    refuse_unreadable(entries)
    images = [p for p in entries if is_image_file(p)]
    files = [p for p in images if not p.name.startswith(".")]
    hidden = [p.name for p in images if p.name.startswith(".")]
    used = set(images)
    skipped = [p.name + ("/" if p.is_dir() else "") for p in entries if p not in used]
    return files, skipped, hidden


def is_image_file(p: Path) -> bool:
    """A regular file (or a link to one) whose name ends in one of :data:`IMAGE_EXTENSIONS`."""
    return p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS


def _first_names(names: Sequence[str]) -> str:
    """The first :data:`_NAMED_SKIPPED` of ``names``, comma-separated, ``...`` if there are more."""
    return ", ".join(names[:_NAMED_SKIPPED]) + (", ..." if len(names) > _NAMED_SKIPPED else "")


def _skipped_text(skipped: Sequence[str]) -> str:
    n = len(skipped)
    return f"{n} entr{'y' if n == 1 else 'ies'} that {'is' if n == 1 else 'are'} not an image: {_first_names(skipped)}"


def image_files(folder: str | os.PathLike) -> list[Path]:
    """Sorted image files directly inside an existing ``folder`` (possibly none); every other
    entry is skipped with one ``UserWarning`` naming how many and the first few."""
    folder = Path(folder)
    files, skipped, hidden = _scan(folder)
    warn_skipped(folder, skipped, hidden)
    return files


def refuse_unreadable(entries: Sequence[Path]) -> None:
    """Raise for the first of a folder's ``entries`` that has an image extension but is neither
    a regular file nor a folder (a broken link, a loop of links, a FIFO): a file with an image
    extension is never skipped.  The reason is :func:`not_an_input`'s, as for such a path given
    directly."""
    bad = [p for p in entries if p.suffix.lower() in IMAGE_EXTENSIONS and not p.is_file() and not p.is_dir()]
    if bad:
        more = f" (and {len(bad) - 1} more such entries)" if len(bad) > 1 else ""
        raise PatchbankError(f"{not_an_input(bad[0])}{more}")


def warn_skipped(folder: Path, skipped: Sequence[str], hidden: Sequence[str] = ()) -> None:
    """One ``UserWarning`` for ``folder`` naming how many entries were skipped as not images,
    and how many hidden image files (names starting with ``.``), and the first few of each."""
    parts = [f"skipped {_skipped_text(skipped)} (image extensions: {', '.join(IMAGE_EXTENSIONS)})"] if skipped else []
    if hidden:
        parts.append(_hidden_text(hidden))
    if parts:
        warnings.warn(f"{folder}: {'; '.join(parts)}", UserWarning, stacklevel=3)


def _hidden_text(hidden: Sequence[str]) -> str:
    n = len(hidden)
    return f"skipped {n} hidden image file{'' if n == 1 else 's'} (a name starting with '.'): {_first_names(hidden)}"


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Sorted image files directly inside ``folder``; an error if it is missing or holds none.

    Other entries are skipped with a ``UserWarning`` (see :func:`image_files`)."""
    folder = Path(folder)
    if not folder.exists():
        raise PatchbankError(f"folder not found: {folder}")
    if not folder.is_dir():
        raise PatchbankError(f"not a folder: {folder}")
    files, skipped, hidden = _scan(folder)
    if not files:
        others = ([f"it holds {_skipped_text(skipped)}"] if skipped else []) + ([_hidden_text(hidden)] if hidden else [])
        raise PatchbankError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {folder}"
                             + "".join(f"; {text}" for text in others))
    warn_skipped(folder, skipped, hidden)
    return files


def as_items(images: Any) -> list[Any]:
    """Normalise the user's ``images`` argument to a list of paths / PIL images / arrays.

    Accepts a folder, a single file, a PIL image, an HxW(xC) array, or a sequence of those
    (folders inside a sequence are expanded).  Every input is kept, in the order given, even the
    same file twice or a link and its target: one prediction per input.  In-memory inputs are
    checked here (shape, dtype, size; pixel values when decoded) and named by their position.
    """
    if isinstance(images, (str, os.PathLike)):
        if not os.fspath(images):
            raise PatchbankError("an image path is empty (\"\"): give a file or a folder")
        path = Path(images)
        if path.is_dir():
            return list(list_images(path))
        if not path.is_file():
            raise PatchbankError(not_an_input(path))
        return [path]
    if isinstance(images, (Image.Image, np.ndarray)):
        images = [images]
    if isinstance(images, (bytes, bytearray, memoryview)):
        raise PatchbankError(f"images given as {type(images).__name__}: pass a file path, or decode the "
                             f"bytes first (PIL.Image.open(io.BytesIO(data)))")
    if isinstance(images, Mapping):
        raise PatchbankError(f"images must be a folder, a file, a PIL image, an array or a list of "
                             f"those, got {type(images).__name__} (pass its values as a list)")
    try:
        sequence = list(images)
    except TypeError:
        raise PatchbankError(f"images must be a folder, a file, a PIL image, an array or a list "
                             f"of those, got {type(images).__name__}") from None
    items: list[Any] = []
    for i, item in enumerate(sequence):
        if isinstance(item, (str, os.PathLike)):
            items.extend(as_items(item))
        elif isinstance(item, (Image.Image, np.ndarray)):
            _check_in_memory(item, f"image input #{i}")
            items.append(item)
        else:
            raise PatchbankError(f"unsupported image input #{i} of type {type(item).__name__}")
    if not items:
        raise PatchbankError("no images given")
    return items


def distinct_images(items: list[Any]) -> list[Any]:
    """``items`` (:func:`as_items`' list) without an image given already: the same file (a link
    to it, or the same path twice), a file with the same bytes, or an array equal to an earlier
    one (shape, dtype and values); first occurrence kept, with one ``UserWarning`` saying how
    many were dropped and naming the first.  For the training images of a fit: each is scored
    against the others' bank entries to calibrate the threshold, so a repeated image would be
    scored against its own copy, a near-zero score that pulls the threshold down.  PIL images
    are kept as given (hashing them would decode them here)."""
    seen: dict[Any, int] = {}
    kept, dropped = [], []
    for i, item in enumerate(items):
        keys = _identity_keys(item)
        first = next((seen[k] for k in keys if k in seen), None)
        if first is None:
            seen.update((k, i) for k in keys)
            kept.append(item)
        else:
            dropped.append((i, first))
    if dropped:
        i, first = dropped[0]
        name = lambda j: item_name(items[j]) or f"image input #{j}"   # noqa: E731
        warnings.warn(f"{len(dropped)} of {len(items)} training images repeat an image given already "
                      f"(the same file, a link to it, the same bytes or the same array; first: "
                      f"{name(i)} = {name(first)}): each is fitted once, since a repeated image "
                      f"would be scored against its own copy when the threshold is calibrated",
                      UserWarning, stacklevel=3)
    return kept


def _identity_keys(item: Any) -> tuple:
    """What makes an input the same image as another: a file's real path and its bytes' sha256,
    an array's shape, dtype and bytes' sha256; nothing for a PIL image."""
    if isinstance(item, (str, os.PathLike)):
        from patchbank.io.model_file import file_sha256   # (it imports torch; decoding alone does not)

        return ("path", os.path.realpath(item)), ("bytes", file_sha256(item))
    if isinstance(item, np.ndarray):
        data = np.ascontiguousarray(item)
        return (("array", data.shape, data.dtype.str, hashlib.sha256(data).hexdigest()),)
    return ()


#: Why a FIFO, socket or device is refused: opening one for reading can block forever.
NOT_REGULAR = "not a regular file or a folder (a FIFO, socket or device cannot be read as an image)"


def not_an_input(p: Path) -> str:
    """The one-line reason why ``p``, neither a folder nor a regular file, cannot be read:
    missing, a broken or looping link, or another kind of file (:data:`NOT_REGULAR`)."""
    if p.is_symlink() and not p.exists():
        return f"{p} is a link to a missing file or a loop of links"
    if os.path.lexists(p):
        return f"{p} is {NOT_REGULAR}"
    return f"file or folder not found: {p}"


def item_name(item: Any) -> str | None:
    """The name an input is reported under: its path as a string, None for in-memory images."""
    return str(item) if isinstance(item, (str, os.PathLike)) else None


# ------------------------------------------------------------------------------------------------
# checks and pixel scaling
# ------------------------------------------------------------------------------------------------

def check_size(size: tuple[int, int], name: str) -> None:
    """Refuse a (width, height) with a 0-pixel side or over :data:`MAX_IMAGE_PIXELS`."""
    w, h = size
    if w <= 0 or h <= 0:
        raise PatchbankError(f"{name}: the image has a 0-pixel side ({w}x{h}, WxH)")
    if w * h > MAX_IMAGE_PIXELS:
        raise PatchbankError(f"{name}: {w}x{h} (WxH) is {w * h / 1e6:.1f} megapixels, over the pixel "
                             f"budget of {MAX_IMAGE_PIXELS / 1e6:.1f} (patchbank.io.images.MAX_IMAGE_PIXELS): "
                             f"downscale it first")


def _check_array(arr: np.ndarray, name: str) -> None:
    """Shape and dtype of an in-memory image array (its values are checked by :func:`_to_uint8`)."""
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
        raise PatchbankError(f"{name}: an image array must be HxW, HxWx1, HxWx3 or HxWx4, got shape "
                             f"{arr.shape} (pass a list of arrays, not one batch array)")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise PatchbankError(f"{name}: the image array has a 0-pixel side (shape {arr.shape})")
    check_size((arr.shape[1], arr.shape[0]), name)       # the pixel budget, as for files and PIL images
    kind = arr.dtype.kind
    if not (arr.dtype == np.uint8 or (kind == "u" and arr.dtype.itemsize == 2) or kind == "f"):
        raise PatchbankError(f"{name}: image arrays of dtype {arr.dtype} are not supported: use uint8 "
                             f"(0-255), uint16 (0-65535) or float in [0, 1] (e.g. arr.astype(np.uint8))")


def _check_in_memory(item: Image.Image | np.ndarray, name: str) -> None:
    if isinstance(item, np.ndarray):
        _check_array(item, name)
    else:
        check_size(item.size, name)


def _to_uint8(arr: np.ndarray, name: str) -> np.ndarray:
    """uint8 pixels from uint8, 16-bit unsigned or float pixels (the module's scaling rule)."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr)
        if bad.any():
            raise PatchbankError(f"{name}: {int(bad.sum())} pixel(s) are NaN or infinite")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0.0 or hi > 1.0:
            raise PatchbankError(f"{name}: float pixel values span [{lo:.6g}, {hi:.6g}], outside [0, 1]: "
                                 f"divide by the largest value the camera can give (or save as 8- or "
                                 f"16-bit integers)")
        wide = arr.astype(np.promote_types(arr.dtype, np.float32), copy=False)   # float16 -> float32
        return np.rint(wide * 255.0).astype(np.uint8)
    # 16-bit: round(v / 257) in integer arithmetic (65535 -> 255)
    warn_narrow_sixteen_bit(int(arr.max()))
    return ((arr.astype(np.uint32) + 128) // 257).astype(np.uint8)


#: 16-bit data below this (14-bit and narrower camera data, or a very dark image) keeps fewer than
#: 65 of the 256 grey levels once scaled by 257: :func:`warn_narrow_sixteen_bit` says so.
NARROW_SIXTEEN_BIT = 1 << 14


def warn_narrow_sixteen_bit(largest: int) -> None:
    """Warn (a ``UserWarning``, worded by bit depth so that a process says it once per depth)
    when a 16-bit image's ``largest`` value leaves most of the 16-bit range unused: 12-bit
    camera data stored in 16 bits (0-4095) is read as 17 grey levels, and nothing else would
    say so."""
    if largest >= NARROW_SIXTEEN_BIT:
        return
    bits = max(int(largest).bit_length(), 1)
    top = (1 << bits) - 1
    warnings.warn(f"16-bit images with values only up to {top} ({bits}-bit data?) are read as "
                  f"{(top + 128) // 257 + 1} of 256 grey levels (16-bit values are scaled by 1/257): "
                  f"scale them to the full 16-bit range first (for {bits}-bit data multiply by "
                  f"{1 << (16 - bits)})", UserWarning, stacklevel=2)


def _high_range_to_rgb(im: Image.Image, name: str) -> Image.Image:
    """RGB from a 16-bit, 32-bit integer or float grayscale image (see the module docstring)."""
    arr = np.asarray(im)
    if im.mode == "I":
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 65535:
            raise PatchbankError(f"{name}: 32-bit integer pixel values span [{lo}, {hi}], outside "
                                 f"0-65535: save the image as 16-bit or 8-bit, or as float in [0, 1]")
        arr = arr.astype(np.uint16)
    return Image.fromarray(_to_uint8(arr, name), "L").convert("RGB")


def _to_rgb(im: Image.Image, name: str) -> Image.Image:
    """A decoded image of any supported mode as an 8-bit RGB image; an RGB image is itself (PIL's
    ``convert`` would copy it: a large image's pixels would be held twice while it is read)."""
    if im.mode == "RGB":
        return im
    if im.mode in _SIXTEEN_BIT_MODES or im.mode in ("I", "F"):
        return _high_range_to_rgb(im, name)
    try:
        return im.convert("RGB")
    except ValueError:
        raise PatchbankError(f"{name}: images of mode {im.mode} are not supported (convert it to "
                             f"RGB, L, 16-bit or float)") from None


def _array_to_rgb(arr: np.ndarray, name: str) -> Image.Image:
    _check_array(arr, name)
    arr = _to_uint8(arr, name)
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return Image.fromarray(arr[..., :3])


# ------------------------------------------------------------------------------------------------
# decoding
# ------------------------------------------------------------------------------------------------

def open_image(path: str | os.PathLike, what: str = "image") -> Image.Image:
    """Open a file and read its header only (no pixel is decoded); use it as a context manager.

    Raises:
        PatchbankError: the file is missing, empty, not one of :data:`READ_FORMATS`, has a
            corrupt header, or its size is refused by :func:`check_size` (``what`` names the
            file's role: "image", "mask").
    """
    path = Path(path)
    try:
        st = path.stat()
        special = not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode))
        empty = stat.S_ISREG(st.st_mode) and st.st_size == 0
    except OSError:       # missing, a loop of links, no permission: Image.open says which
        special = empty = False
    if special:           # a FIFO would block the open forever
        raise PatchbankError(f"cannot read {what} {path}: {NOT_REGULAR}")
    if empty:
        raise PatchbankError(f"cannot read {what} {path}: the file is empty (0 bytes)")
    try:
        im = _open_header(path, f"{what} {path}")
    except FileNotFoundError:
        raise PatchbankError(f"{what} not found: {path}") from None
    try:
        check_size(im.size, f"{what} {path}")
    except PatchbankError:
        im.close()
        raise
    return im


def _open_header(source: Path | io.BytesIO, label: str) -> Image.Image:
    """``Image.open`` by the :data:`READ_FORMATS` plugins only; every failure but a missing file
    (raised as is) and memory is a one-line :class:`PatchbankError` naming ``label``
    ("image x.png").  PIL's plugins raise many types on a corrupt header (OSError, ValueError,
    SyntaxError, struct.error, ...): all of them are the input's fault."""
    try:
        return Image.open(source, formats=READ_FORMATS)
    except Image.DecompressionBombError as exc:
        raise PatchbankError(f"{label}: refused before decoding, over the pixel budget of "
                             f"{MAX_IMAGE_PIXELS / 1e6:.1f} megapixels ({one_line(exc)})") from None
    except UnidentifiedImageError:
        raise PatchbankError(f"cannot read {label}: not an image format patchbank reads "
                             f"({READ_FORMATS_NAMED}), or a corrupt header") from None
    except (FileNotFoundError, MemoryError):
        raise
    except Exception as exc:
        raise PatchbankError(f"cannot read {label}: {one_line(exc) or type(exc).__name__}") from None


FULL_SIZE = "patchbank_full_size"
"""Key of a drafted JPEG's full (W, H) in its PIL ``info`` (``convert`` keeps ``info``)."""
DRAFT_BOX = "patchbank_draft_box"
"""Key of the box ``(0, 0, W / s, H / s)`` a JPEG decoded at 1 / s covers in its decoded pixels:
libjpeg rounds each side up (a 1001-px side at 1/8 decodes to 126 px, 1,008 px of the original),
so the image ends inside its last pixel, not at its edge."""


def draft_jpeg(im: Image.Image, draft_size: tuple[int, int] | None) -> None:
    """Let an opened, not yet decoded JPEG decode at a reduced scale (libjpeg's 1/2, 1/4 or 1/8),
    never below ``draft_size`` (H, W), recording its full (W, H) in ``info[FULL_SIZE]``; other
    formats, or ``draft_size`` None, are left as they are.  Every reader of encoded images
    (files, uploads) drafts through here, so the same bytes give the same pixels."""
    if draft_size is not None and not (isinstance(draft_size, (tuple, list)) and len(draft_size) == 2
                                       and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v > 0
                                               for v in draft_size)):
        raise PatchbankError(f"draft_size must be None or (height, width) in pixels, two positive "
                             f"integers (a model's config.image_size), got {draft_size!r}")
    if draft_size is not None and im.format in ("JPEG", "MPO"):
        im.info[FULL_SIZE] = im.size    # (W, H) before the reduced-scale decode
        drafted = im.draft("RGB", (draft_size[1], draft_size[0]))
        if drafted is not None and drafted[1][2:] != im.size:
            im.info[DRAFT_BOX] = drafted[1]


def open_bytes(data: bytes, name: str, max_pixels: int | None = None,
               draft_size: tuple[int, int] | None = None) -> Image.Image:
    """An image file's bytes (an upload) opened from their header, not decoded: refused when
    empty, unrecognised or over ``max_pixels`` (default :data:`MAX_IMAGE_PIXELS`) before any
    pixel is decoded; with ``draft_size`` (H, W) a JPEG is set to decode at a reduced scale as
    :func:`decoded_image` sets a file (:func:`draft_jpeg`), so ``size`` is what will be decoded.
    ``name`` names the input in the one-line :class:`PatchbankError`.  :func:`decode_opened`
    decodes it."""
    if not data:
        raise PatchbankError(f"cannot read image {name}: it is empty (0 bytes)")
    budget = MAX_IMAGE_PIXELS if max_pixels is None else min(int(max_pixels), MAX_IMAGE_PIXELS)
    im = _open_header(io.BytesIO(data), f"image {name}")
    w, h = im.size
    try:
        if w * h > budget:
            raise PatchbankError(f"image {name}: {w}x{h} (WxH) is {w * h:,} pixels, over the limit "
                                 f"of {budget:,}")
        check_size(im.size, f"image {name}")
    except PatchbankError:
        im.close()
        raise
    draft_jpeg(im, draft_size)
    return im


def decode_opened(im: Image.Image, name: str) -> Image.Image:
    """Decode an image :func:`open_bytes` opened to 8-bit RGB by the rules of the module
    docstring (a one-line :class:`PatchbankError` for truncated or corrupt data)."""
    with im:
        _load(im, f"image {name}")
        return _to_rgb(im, f"image {name}")


def decode_bytes(data: bytes, name: str, max_pixels: int | None = None,
                 draft_size: tuple[int, int] | None = None) -> Image.Image:
    """Decode an image file's bytes (an upload) to an 8-bit RGB PIL image:
    :func:`open_bytes` then :func:`decode_opened`.  With the ``draft_size`` a model reads files
    with (its ``config.image_size``), a JPEG's pixels are those :func:`read_input` decodes from
    the same bytes in a file, so the model answers as it does for the file."""
    return decode_opened(open_bytes(data, name, max_pixels, draft_size), name)


def _load(im: Image.Image, name: str) -> None:
    """Decode the pixels; anything PIL raises on a file's bytes is an unreadable file."""
    try:
        im.load()
    except MemoryError:
        raise
    except Exception as exc:  # PIL raises OSError, SyntaxError, EOFError, struct.error... on bad bytes
        raise PatchbankError(f"cannot read {name}: {one_line(exc) or type(exc).__name__}") from None


@contextmanager
def decoded_image(path: str | os.PathLike, what: str = "image",
                  draft_size: tuple[int, int] | None = None) -> Iterator[Image.Image]:
    """The decoded image of a file in its own mode (``with decoded_image(p) as im: ...``);
    errors as :func:`open_image`, and a one-line error for truncated or corrupt pixel data.
    ``draft_size`` (H, W) lets a JPEG decode at a reduced scale, never below that size."""
    with open_image(path, what) as im:
        draft_jpeg(im, draft_size)
        _load(im, f"{what} {path}")
        yield im


#: Held while a caller's PIL image decodes its pixels: PIL's lazy ``load`` of one object from two
#: threads at once reads its file twice over and reports it truncated.
_PIL_LOAD = threading.Lock()


def open_rgb(item: Any, draft_size: tuple[int, int] | None = None) -> Image.Image:
    """Decode one input (path, PIL image or array) to an 8-bit RGB PIL image by the rules of the
    module docstring; failures are one-line :class:`PatchbankError` naming the input."""
    if isinstance(item, Image.Image):
        check_size(item.size, "PIL image")
        with _PIL_LOAD:     # one object given twice (or to two threads) is decoded once, not twice at once
            _load(item, "PIL image")
        return _to_rgb(item, "PIL image")
    if isinstance(item, np.ndarray):
        return _array_to_rgb(item, "image array")
    with decoded_image(item, "image", draft_size) as im:
        return _to_rgb(im, f"image {item}")


def _resize_crop(im: Image.Image, config, resample=Image.BILINEAR, network: bool = False) -> np.ndarray:
    """Resize to ``config.image_size`` (H, W) (stretching, or with ``config.keep_aspect`` scaling
    by ``max(H / height, W / width)`` to cover it and centre-cropping the excess, like
    torchvision's Resize(int) + CenterCrop), then centre-crop to ``config.crop_size`` if set.
    The sizes and offsets are :func:`patchbank.io.image_coords.view_window`'s, the one
    statement of where the view lies that maps are mapped back with.  ``network``: the tensor
    the backbone reads instead (:func:`~patchbank.io.image_coords.network_window`: the whole
    resize with ``crop_at="features"``, else the view).  The window is that of the image's full
    size (a JPEG decoded at a reduced scale records it, :func:`draft_jpeg`): with
    ``keep_aspect`` the rounding of the covering resize depends on the size it starts from, and
    the map is mapped back through the full size's window, so the resize reads the drafted image's
    box that holds the full image (``info[DRAFT_BOX]``), not its rounded-up last pixels."""
    w_full, h_full = im.info.get(FULL_SIZE, im.size)
    win = (network_window if network else view_window)((int(h_full), int(w_full)), config)
    target = (win.resized[1], win.resized[0])
    box = im.info.get(DRAFT_BOX)
    if im.size != target or box is not None:
        im = im.resize(target, resample, box=box)
    (top, left), (h, w) = win.offset, win.size
    arr = np.asarray(im)
    return arr if (top, left, h, w) == (0, 0, *arr.shape[:2]) else arr[top:top + h, left:left + w]


def prepare_view(item: Any, config) -> np.ndarray:
    """The resized and centre-cropped RGB view (uint8, HxWx3, ``config.input_size``) that an
    anomaly map aligns with: what an overlay of the map as predicted is drawn on."""
    im = open_rgb(item, config.image_size)
    return _resize_crop(im, config)


def prepare_input(item: Any, config) -> np.ndarray:
    """The RGB image the backbone reads (uint8, HxWx3, ``config.network_size``): the view of
    :func:`prepare_view`, or with ``crop_at="features"`` the whole resize around it; what
    ``Detector.predict_views`` takes."""
    return read_input(item, config)[0]


def read_input(item: Any, config) -> tuple[np.ndarray, Window]:
    """(:func:`prepare_input`'s image, where the view -- the anomaly map -- lies in the original
    image: the window of the image's full size, also when a JPEG was decoded at a reduced
    scale)."""
    im = open_rgb(item, config.image_size)
    w, h = im.info.get(FULL_SIZE, im.size)
    return _resize_crop(im, config, network=True), view_window((int(h), int(w)), config)


def crop_mask(mask: np.ndarray, config) -> np.ndarray:
    """Apply the same resize (nearest) and crops to a binary mask; returns bool HxW."""
    im = Image.fromarray((np.asarray(mask) > 0).astype(np.uint8) * 255)
    return _resize_crop(im, config, Image.NEAREST) > 127


def to_tensor(batch: Sequence[np.ndarray], mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 HxWx3 arrays -> float32 [B, 3, H, W] normalised with ``mean``/``std``."""
    import torch

    x = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return x.sub_(m).div_(s)


def check_views(views: Sequence[Any], network_size: tuple[int, int]) -> list[np.ndarray]:
    """``views`` as a list of prepared inputs (:func:`prepare_input`'s uint8 HxWx3 arrays of
    ``network_size``); a one-line PatchbankError naming the first that is not one."""
    if isinstance(views, (str, bytes, np.ndarray)) or not isinstance(views, Sequence):
        raise PatchbankError(f"views must be a list of prepared inputs, got {type(views).__name__}")
    out = []
    for i, v in enumerate(views):
        arr = np.asarray(v)
        if arr.dtype != np.uint8 or arr.shape != (*tuple(network_size), 3):
            raise PatchbankError(f"view #{i}: expected a prepared input, uint8 of shape "
                                 f"{(*tuple(network_size), 3)} (patchbank.io.images.prepare_input), got "
                                 f"{arr.dtype} {arr.shape}")
        out.append(arr)
    if not out:
        raise PatchbankError("no images given")
    return out


def view_names(names: Any, n: int) -> list:
    """The names of ``n`` views: None for none, else a list of exactly ``n`` (a one-line
    PatchbankError otherwise: a shorter list dropped views, a string was read letter by letter)."""
    if names is None:
        return [None] * n
    if isinstance(names, (str, bytes)) or not isinstance(names, Sequence) or len(names) != n:
        raise PatchbankError(f"names must be a list of one name per view ({n}), got {names!r}"[:300])
    return list(names)


def view_batches(views: Sequence[np.ndarray], names: Sequence[Any], mean: Sequence[float],
                 std: Sequence[float], batch_size: int) -> Iterator[tuple[torch.Tensor, list]]:
    """``(tensor [B, 3, H, W], names)`` batches of prepared views, normalised exactly as
    :class:`ImageStream` normalises the views it prepares itself."""
    for i in range(0, len(views), batch_size):
        yield to_tensor(views[i:i + batch_size], mean, std), list(names[i:i + batch_size])


class ImageStream:
    """Iterate over inputs as normalised tensor batches, decoding the next batch in the background.

    Yields ``(tensor [B,3,H,W], names list)``; only two batches are in memory at any time.
    ``windows`` lists where the view of every image decoded so far lies in the original image
    (:class:`~patchbank.io.image_coords.Window`), in input order.
    """

    def __init__(self, items: Sequence[Any], config, mean: Sequence[float], std: Sequence[float],
                 batch_size: int | None = None, workers: int = 2, pin: bool = False):
        self.items = list(items)
        self.config = config
        self.mean, self.std = mean, std
        self.batch_size = batch_size or config.batch_size
        self.workers = max(1, workers)
        self.pin = pin
        self.windows: list[Window] = []

    def __len__(self) -> int:
        """The number of batches."""
        return (len(self.items) + self.batch_size - 1) // self.batch_size

    def _load(self, chunk: Sequence[Any], pool: ThreadPoolExecutor) -> tuple[torch.Tensor, list]:
        views = list(pool.map(lambda it: read_input(it, self.config), chunk))
        batch = to_tensor([v for v, _ in views], self.mean, self.std)
        return (batch.pin_memory() if self.pin else batch), [window for _, window in views]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, list[str | None]]]:
        """``(batch [B, 3, H, W], names)`` in input order; decoding errors surface here."""
        chunks = [self.items[i:i + self.batch_size] for i in range(0, len(self.items), self.batch_size)]
        if not chunks:
            return
        with ThreadPoolExecutor(self.workers) as pool, ThreadPoolExecutor(1) as ahead:
            future = ahead.submit(self._load, chunks[0], pool)
            for i, chunk in enumerate(chunks):
                batch, windows = future.result()
                self.windows += windows
                if i + 1 < len(chunks):
                    future = ahead.submit(self._load, chunks[i + 1], pool)
                yield batch, [item_name(it) for it in chunk]
