"""Images as small inline thumbnails: ``data:image/jpeg;base64,...`` URIs.

A thumbnail is the image decoded to RGB (:func:`patchbank.io.images.open_rgb`: the same reading
rules and one-line errors as fit and predict), shrunk to at most :data:`THUMB_PX` pixels on its
long side (aspect kept, never enlarged) and stored as a JPEG of quality :data:`JPEG_QUALITY`:
a few kB each, so a page with 600 images stays a few MB.
"""
from __future__ import annotations

import base64
import io
import os
from dataclasses import dataclass

from PIL import Image

from patchbank.errors import PatchbankError
from patchbank.io.images import open_rgb

THUMB_PX = 176
JPEG_QUALITY = 78
THUMB_TEXT = (f"Images are downscaled thumbnails (at most {THUMB_PX} px on the long side, JPEG "
              f"quality {JPEG_QUALITY}) embedded in this file; the full-size files are named under each.")


@dataclass
class Thumbnail:
    """An embedded image: its ``uri`` and its pixel ``width`` and ``height``."""

    uri: str
    width: int
    height: int


def thumbnail(path: str | os.PathLike) -> Thumbnail:
    """The :class:`Thumbnail` of the image file ``path``.

    Raises:
        PatchbankError: the file is missing or unreadable (one line naming it).
    """
    im = open_rgb(str(path), draft_size=(THUMB_PX, THUMB_PX))
    im.thumbnail((THUMB_PX, THUMB_PX), Image.BILINEAR)
    buf = io.BytesIO()
    try:
        im.save(buf, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    except OSError as exc:  # pragma: no cover - an RGB image always encodes
        raise PatchbankError(f"cannot make a thumbnail of {path}: {exc}") from None
    uri = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    return Thumbnail(uri, im.width, im.height)
