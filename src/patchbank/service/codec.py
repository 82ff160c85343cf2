"""Reading an infer request: the images (multipart or base64 JSON) and the options.

Two body formats, chosen by ``Content-Type`` (anything else is 415):

* ``multipart/form-data``: one or several file parts named ``file`` or ``files`` (the part's
  filename names the image); option values may also come as plain form fields.
* ``application/json``: ``{"images": [{"name": "...", "data": "<base64>"}, ...], <options>}``;
  ``data`` may carry a ``data:<type>;base64,`` prefix.

Options, as query parameters or as fields of the body (the same names; given in both places
they must agree): ``threshold`` (a finite number, the normalised-score threshold of this request),
``category`` (a multi-category model's category; skips routing), ``heatmap`` (true / false) and
``mask`` (``none``, ``png`` or ``polygons``).  An unknown option is refused, so a typo never
passes silently.

Errors: a bad option value, bad base64 or an unreadable image is 400, a malformed JSON body 400,
a JSON body of the wrong shape 422, too many images 413; each one line naming the culprit.
"""
from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from PIL import Image
from starlette.datastructures import UploadFile
from starlette.requests import Request

from patchbank.io.images import decode_opened, open_bytes
from patchbank.service.errors import ServiceError, bad_request, too_large, unsupported_media

__all__ = ["Upload", "InferOptions", "OPTION_NAMES", "MASK_KINDS", "read_images", "parse_options", "query_params",
           "open_uploads", "decode_uploads", "media_type"]

OPTION_NAMES = ("threshold", "category", "heatmap", "mask")
MASK_KINDS = ("none", "png", "polygons")
FILE_PARTS = ("file", "files")
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


@dataclass
class Upload:
    """One uploaded image, still encoded."""

    name: str
    data: bytes


@dataclass(frozen=True)
class InferOptions:
    """The options of one infer request."""

    threshold: float | None = None   # None: the model's current threshold
    category: str | None = None      # None: route (multi-category models)
    heatmap: bool = False
    mask: str = "none"               # one of MASK_KINDS


def media_type(request: Request) -> str:
    """The request's content type without parameters, lower case ('' when absent)."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_images(request: Request, max_images: int) -> tuple[list[Upload], dict[str, Any]]:
    """The request's images and the option fields of its body (unparsed).

    Raises:
        ServiceError: 415 for another content type, 400 / 422 / 413 as the module docstring says.
    """
    kind = media_type(request)
    if kind == "multipart/form-data":
        uploads, fields = await _read_multipart(request, max_images)
    elif kind == "application/json" or kind.endswith("+json"):
        uploads, fields = parse_json_body(await request.body())
    else:
        raise unsupported_media(f"content type {kind or '(none)'!r} is not read here; send "
                                f"multipart/form-data (file parts) or application/json (base64 images)")
    if not uploads:
        raise bad_request("no image in the request: send file parts named 'file' or 'files', "
                          "or a JSON list 'images'")
    if len(uploads) > max_images:
        raise too_large(f"{len(uploads)} images in one request; the limit is {max_images}")
    return uploads, fields


async def _read_multipart(request: Request, max_images: int) -> tuple[list[Upload], dict[str, Any]]:
    """File parts ``file`` / ``files`` and option fields of a multipart body."""
    # room above the limit, so that a few images too many are counted (413), not refused by
    # the parser (400); the body limit bounds the parts anyway
    form = await request.form(max_files=4 * max_images + 16, max_fields=len(OPTION_NAMES) + 8)
    try:
        uploads, fields = [], {}
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                if key not in FILE_PARTS:
                    raise bad_request(f"file part {key!r}: images go in parts named 'file' or 'files'")
                uploads.append(Upload(value.filename or f"image{len(uploads)}", await value.read()))
            elif key in FILE_PARTS:
                raise bad_request(f"part {key!r} is a plain field, not a file (send it as a file upload)")
            elif key in fields:
                raise bad_request(f"option {key!r} is given twice")
            else:
                fields[key] = value
        return uploads, fields
    finally:
        await form.close()


def parse_json_body(body: bytes) -> tuple[list[Upload], dict[str, Any]]:
    """``(images, option fields)`` of a JSON infer body; base64 decoded."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise bad_request(f"malformed JSON body ({exc})") from None
    if not isinstance(data, dict):
        raise ServiceError(422, f"the JSON body must be an object with 'images', got {type(data).__name__}")
    if "images" not in data:
        raise ServiceError(422, "the JSON body has no 'images' list")
    images = data.pop("images")
    if not isinstance(images, list):
        raise ServiceError(422, f"'images' must be a list of {{name, data}} objects, got {type(images).__name__}")
    uploads = []
    for i, entry in enumerate(images):
        if not isinstance(entry, dict) or not isinstance(entry.get("data"), str):
            raise ServiceError(422, f"images[{i}] must be an object with a base64 string 'data'")
        name = entry.get("name")
        if name is not None and not isinstance(name, str):
            raise ServiceError(422, f"images[{i}].name must be a string")
        unknown = sorted(set(entry) - {"name", "data"})
        if unknown:
            raise ServiceError(422, f"images[{i}] has unknown field {unknown[0]!r} (fields: name, data)")
        name = name or f"image{i}"
        uploads.append(Upload(name, _b64(entry["data"], name)))
    return uploads, data


def _b64(text: str, name: str) -> bytes:
    """Standard base64 (whitespace and a ``data:...;base64,`` prefix allowed) -> bytes."""
    if text.startswith("data:"):
        head, sep, text = text.partition(",")
        if not sep or not head.endswith(";base64"):
            raise bad_request(f"image {name}: a data URL must be 'data:<type>;base64,<data>'")
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise bad_request(f"image {name}: bad base64 data ({exc})") from None


def query_params(items: Iterable[tuple[str, str]], names: tuple[str, ...]) -> dict[str, str]:
    """A query string's ``(name, value)`` pairs as a dict: 400 for a name outside ``names`` or
    one given twice (the last value would win silently), so a typo never passes as a request
    that did not ask for it."""
    query: dict[str, str] = {}
    for name, value in items:
        if name not in names:
            allowed = f"the parameters are {', '.join(names)}" if names else "it takes none"
            raise bad_request(f"unknown query parameter {name!r}; {allowed}")
        if name in query:
            raise bad_request(f"query parameter {name!r} is given twice")
        query[name] = value
    return query


def parse_options(query_items: Iterable[tuple[str, str]], fields: Mapping[str, Any]) -> InferOptions:
    """The options from the query string's ``(name, value)`` pairs (:func:`query_params`) and
    the body's fields (400 for a bad or unknown one, or one given in both places with different
    values)."""
    query = query_params(query_items, OPTION_NAMES)
    unknown = sorted(set(fields) - set(OPTION_NAMES))
    if unknown:
        raise bad_request(f"unknown field {unknown[0]!r}; the options are {', '.join(OPTION_NAMES)}")
    values = {}
    for name in OPTION_NAMES:
        given = [_option(name, src[name]) for src in (query, fields) if name in src]
        if len(given) == 2 and given[0] != given[1]:
            raise bad_request(f"option {name!r} is given twice with different values")
        if given:
            values[name] = given[0]
    return InferOptions(**values)


def _option(name: str, value: Any) -> Any:
    """One option's value, checked (query values arrive as strings, JSON ones typed)."""
    if name == "threshold":
        if value is None:
            return None
        try:
            number = float(value) if not isinstance(value, bool) else math.nan
        except (TypeError, ValueError, OverflowError):   # OverflowError: a JSON integer of 400 digits
            number = math.nan
        if not math.isfinite(number):
            raise bad_request(f"option 'threshold' must be a finite number, got {value!r}")
        return number
    if name == "category":
        if value is not None and (not isinstance(value, str) or not value):
            raise bad_request(f"option 'category' must be a category name, got {value!r}")
        return value
    if name == "heatmap":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text not in _TRUE + _FALSE:
            raise bad_request(f"option 'heatmap' must be true or false, got {value!r}")
        return text in _TRUE
    if value not in MASK_KINDS:
        raise bad_request(f"option 'mask' must be one of {', '.join(MASK_KINDS)}, got {value!r}")
    return value


def open_uploads(uploads: list[Upload], max_pixels: int, max_decoded_pixels: int,
                 draft_size: tuple[int, int] | None) -> tuple[list[Image.Image], int]:
    """Every upload opened from its header, set to decode as the served model reads a file of
    the same bytes (``draft_size``: its ``config.image_size``; a JPEG at a reduced scale,
    :func:`patchbank.io.images.open_bytes`), and the pixels they will decode to together.  An
    unreadable header or an image over ``max_pixels`` is a 400 naming it, a total over
    ``max_decoded_pixels`` (the server's whole budget: it could never be admitted) a 413; no
    pixel is decoded here."""
    opened: list[Image.Image] = []
    try:
        for u in uploads:
            opened.append(open_bytes(u.data, u.name, max_pixels=max_pixels, draft_size=draft_size))
        total = sum(im.width * im.height for im in opened)
        if total > max_decoded_pixels:
            raise too_large(f"the request's {len(opened)} images decode to {total:,} pixels, over the "
                            f"server's limit of {max_decoded_pixels:,} decoded pixels at once")
        return opened, total
    except BaseException:
        close_all(opened)
        raise


def decode_uploads(opened: list[Image.Image], uploads: list[Upload]) -> list[Image.Image]:
    """Decode what :func:`open_uploads` opened to 8-bit RGB; an image whose data fails to decode
    is a 400 naming it (and nothing of the request is scored)."""
    try:
        return [decode_opened(im, u.name) for im, u in zip(opened, uploads)]
    except BaseException:
        close_all(opened)
        raise


def close_all(images: list[Image.Image]) -> None:
    """Let go of a refused request's images (decoded ones included)."""
    for im in images:
        im.close()
