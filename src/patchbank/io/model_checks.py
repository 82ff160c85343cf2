"""Checks of a model file's state before anything is built from it.

:func:`check_model_state` is called by ``Detector.from_state`` (and so by every single- and
multi-category load) with the tensors and the JSON metadata of one detector.  It refuses, with one
line naming the file and the tensor or field, whatever a fitted detector could not have written:
every tensor's name, dtype, shape and range is checked against the configuration and the
metadata (the bank against ``bank_entries`` x ``bank_dim`` and the coreset size the samplers keep,
the fusion statistics against each other, the projection against the fused width and
``projection_dim``, the calibration against ``n_calibration_images``, ...).

The header cannot choose code or weights (:func:`check_header_weights`): ``backbone_sha256`` must
be a sha256 digest, and a header naming its own weights (a local file, ``"random"``) is refused
unless the caller gives the weights explicitly.  Two things need the backbone and so are checked
at first use, not here: :func:`check_backbone_fit` (channel indices and fused width against the
backbone's channels) and :func:`check_patch_grid` (the header's patch grid against the one the
backbone produces).  :func:`check_multi_header` checks a multi-category header and splits it into
one ``(tensors, meta)`` state per category.
"""
from __future__ import annotations

import math
import numbers
import re
from collections.abc import Sequence
from typing import Any

import torch

from patchbank.config import Config
from patchbank.errors import PatchbankError
from patchbank.io.model_file import FORMAT_VERSION
from patchbank.io.train_shape import header_problem
from patchbank.linalg import all_finite
from patchbank.runtime.environment import RECORD_RULE, is_library_record

#: a sha256 digest as patchbank records it (64 lower-case hex digits; use ``fullmatch``)
SHA256 = re.compile(r"[0-9a-f]{64}")
_CATEGORY = re.compile(r"^[A-Za-z0-9_.\-]+$")
N_DESCRIPTORS = 3   # the map descriptor phi(S) = [std, top-1% mean, TV] (pipeline.structure)
_FIXED_TENSORS = ("bank", "calibration_base_scores", "calibration_descriptors", "calibration_images",
                  "calibration_map_means", "training_blurriness",
                  "bank_radius", "map_offset", "projection.matrix")
#: The fields of one detector's header (``Detector.info``); files written before a field existed
#: lack it, and no other field is accepted (a header carries data this patchbank reads, nothing else).
HEADER_FIELDS = frozenset({
    "patchbank_version", "format_version", "config", "bank_entries", "bank_dim", "bank_bytes",
    "bank_map_dim", "search", "patch_grid", "n_train_images", "n_calibration_images",
    "structure_lambda", "score_mean", "score_std", "threshold", "target_fpr", "threshold_override",
    "map_threshold", "blur_threshold", "backbone_sha256", "train_aspect", "train_scale",
    "train_images", "fitted_with"})
#: The top-level fields of a multi-category header (``MultiDetector.info``).
MULTI_FIELDS = frozenset({"patchbank_version", "format_version", "kind", "config", "category_order",
                          "routing_prototypes", "categories", "bank_bytes"})
_INFO_NUMBERS = ("threshold", "threshold_override", "score_mean", "score_std", "structure_lambda",
                 "map_threshold", "blur_threshold")


# ---------------------------------------------------------------------------------- small helpers
def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _fail(where: str, what: str, message: str) -> PatchbankError:
    return PatchbankError(f"{where}: {what} {message}")


def _check_fields(meta: dict, allowed: frozenset[str], where: str, what: str) -> None:
    """No field outside ``allowed``; ``format_version`` (if present) this patchbank's, and
    ``patchbank_version`` (if present) a string."""
    extra = sorted(set(meta) - allowed)
    if extra:
        raise _fail(where, f"field {extra[0]!r}", f"is not part of a patchbank {what}"
                    + (f" (nor are {', '.join(map(repr, extra[1:]))})" if len(extra) > 1 else ""))
    if "format_version" in meta and meta["format_version"] != FORMAT_VERSION:
        raise _fail(where, "format_version", f"must be {FORMAT_VERSION}, got {meta['format_version']!r}")
    if "patchbank_version" in meta and not isinstance(meta["patchbank_version"], str):
        raise _fail(where, "patchbank_version", f"must be a version string, got {meta['patchbank_version']!r}")


def _int_field(meta: dict, key: str, where: str, low: int) -> int:
    value = meta.get(key)
    if not _is_int(value) or value < low:
        raise _fail(where, key, f"must be an integer >= {low}, got {value!r}")
    return int(value)


def _tensor(tensors: dict, name: str, where: str, dtypes: tuple[torch.dtype, ...],
            shape: tuple[int | None, ...]) -> torch.Tensor:
    """``tensors[name]`` if it has one of ``dtypes``, ``len(shape)`` dimensions and the sizes of
    ``shape`` (None: any size >= 1) and only finite values; else a one-line error."""
    t = tensors.get(name)
    if not isinstance(t, torch.Tensor):
        raise _fail(where, f"tensor {name!r}", "is missing")
    if t.dtype not in dtypes:
        want = " or ".join(str(d).replace("torch.", "") for d in dtypes)
        raise _fail(where, f"tensor {name!r}", f"must be {want}, got {str(t.dtype).replace('torch.', '')}")
    want_shape = "[" + ", ".join("n" if s is None else str(s) for s in shape) + "]"
    if t.dim() != len(shape) or any(n < 1 or (s is not None and n != s) for n, s in zip(t.shape, shape)):
        raise _fail(where, f"tensor {name!r}", f"must have shape {want_shape}, got {list(t.shape)}")
    if t.is_floating_point() and not all_finite(t):
        raise _fail(where, f"tensor {name!r}", "has NaN or infinite values")
    return t


# ---------------------------------------------------------------------------------- the header
WEIGHTS_HINT = "pass them explicitly (--weights FILE / weights=FILE)"


def check_header_weights(meta: dict[str, Any], where: str, hint: str = WEIGHTS_HINT) -> None:
    """Refuse a header that names its own backbone weights.

    ``config.weights`` in a model header must be None (the backbone's packaged or standard
    weights): a model fit with a local weights file or ``"random"`` is loaded only with the
    weights given explicitly by the caller (``Detector.load(path, weights=...)``, ``--weights``),
    so a file can never point the loader at an arbitrary file or a download.  Callers that were
    given ``weights`` skip this check (``check_model_state(..., weights_given=True)``).
    ``hint`` ends the message: what the reader of this kind of file does instead.
    """
    cfg = meta.get("config") if isinstance(meta, dict) else None
    weights = cfg.get("weights") if isinstance(cfg, dict) else None
    if weights is not None:
        raise _fail(where, "config.weights", f"is {weights!r}: a model file may not choose its "
                    f"backbone weights; {hint}")


def _check_sha256(meta: dict, where: str) -> None:
    sha = meta.get("backbone_sha256")
    if not isinstance(sha, str) or not SHA256.fullmatch(sha):
        raise _fail(where, "backbone_sha256", f"must be the 64-hex-digit sha256 of the backbone "
                    f"weights, got {sha!r} (models fit with random weights cannot be loaded)")


def _config(meta: dict, where: str) -> Config:
    raw = meta.get("config")
    if not isinstance(raw, dict):
        raise _fail(where, "config", f"must be a JSON object, got {type(raw).__name__}")
    try:
        return Config.from_dict(raw)
    except (TypeError, ValueError) as exc:   # ConfigError is a ValueError
        raise _fail(where, "config", f"is invalid ({exc})") from None


def _allowed_searches(cfg: Config, entries: int) -> tuple[str, ...]:
    """The search kinds a fit with ``cfg`` can have resolved to for a bank of ``entries``
    (``search.base.resolve_search``: exact on a GPU or without FAISS)."""
    if cfg.search != "auto":
        return (cfg.search,)
    if entries >= cfg.ivfpq_min_bank:
        return ("exact", "faiss-ivfpq")
    if entries >= cfg.ivf_min_bank:
        return ("exact", "faiss-ivf")
    return ("exact",)


def _check_scalars(meta: dict, cfg: Config, where: str) -> tuple[int, int, tuple[int, int]]:
    """The header's scalar fields; returns (n_train_images, n_calibration_images, patch_grid)."""
    n_train = _int_field(meta, "n_train_images", where, 2)
    n_cal = _int_field(meta, "n_calibration_images", where, 1)
    if n_cal > n_train:
        raise _fail(where, "n_calibration_images", f"({n_cal}) must be at most n_train_images ({n_train})")
    grid = meta.get("patch_grid")
    size = cfg.input_size
    if (not isinstance(grid, list) or len(grid) != 2 or not all(_is_int(g) and g >= 1 for g in grid)
            or grid[0] > size[0] or grid[1] > size[1]):
        raise _fail(where, "patch_grid", f"must be two positive integers at most the input size "
                    f"{list(size)}, got {grid!r}")
    for key in _INFO_NUMBERS:
        if key in meta and meta[key] is not None and not (_is_number(meta[key]) and math.isfinite(meta[key])):
            raise _fail(where, key, f"must be a finite number, got {meta[key]!r}")
    bad_shape = header_problem(meta)   # train_aspect, train_scale: absent in older files
    if bad_shape:
        raise _fail(where, *bad_shape)
    if "target_fpr" in meta and meta["target_fpr"] != cfg.target_fpr:
        raise _fail(where, "target_fpr", f"({meta['target_fpr']!r}) differs from config.target_fpr "
                    f"({cfg.target_fpr!r})")
    return n_train, n_cal, (int(grid[0]), int(grid[1]))


# ---------------------------------------------------------------------------------- the tensors
def _check_bank(tensors: dict, meta: dict, cfg: Config, where: str, n_rows: int) -> tuple[int, int]:
    """The bank against bank_entries x bank_dim, config.bank_dtype and the coreset size the
    samplers keep of ``n_rows`` training patches; returns (entries, dim)."""
    entries = _int_field(meta, "bank_entries", where, 1)
    dim = _int_field(meta, "bank_dim", where, 1)
    dtype = torch.float16 if cfg.bank_dtype == "float16" else torch.float32
    _tensor(tensors, "bank", where, (dtype,), (entries, dim))
    ratio = 1.0 if cfg.sampler == "none" else cfg.coreset_ratio
    expected = min(n_rows, max(1, round(ratio * n_rows)))   # sampling.base.coreset_size
    if abs(entries - expected) > 1:
        raise _fail(where, "bank_entries", f"({entries}) is not the bank a fit keeps of n_train_images "
                    f"x patch_grid = {n_rows} patches at {cfg.sampler} ratio {ratio:g} ({expected})")
    if "bank_bytes" in meta and meta["bank_bytes"] != entries * dim * (2 if dtype == torch.float16 else 4):
        raise _fail(where, "bank_bytes", f"({meta['bank_bytes']!r}) does not match the bank {entries} x {dim}")
    if cfg.projection_dim is not None and dim != cfg.projection_dim:
        raise _fail(where, "bank_dim", f"({dim}) must equal config.projection_dim ({cfg.projection_dim})")
    if cfg.context_taps:
        map_dim = _int_field(meta, "bank_map_dim", where, 1)
        if map_dim >= dim:
            raise _fail(where, "bank_map_dim", f"({map_dim}) must be below bank_dim ({dim}): the context "
                        f"taps' columns follow the map's")
    elif "bank_map_dim" in meta:
        raise _fail(where, "bank_map_dim", "is present but config.context_taps is 0")
    if "bank_radius" in tensors or cfg.local_density:
        if not cfg.local_density:
            raise _fail(where, "tensor 'bank_radius'", "is present but config.local_density is false")
        radius = _tensor(tensors, "bank_radius", where, (torch.float32,), (entries,))
        if bool((radius < 0).any()):
            raise _fail(where, "tensor 'bank_radius'", "has negative values")
    return entries, dim


def _fusion_layers(tensors: dict, where: str) -> int:
    """How many layers the ``fusion.keep.{i}`` tensors cover (0..n-1, none missing)."""
    ids = set()
    for name in tensors:
        parts = name.split(".")
        if name.startswith("fusion.") and len(parts) == 3 and parts[1] in ("keep", "mean", "scale"):
            if not parts[2].isdigit() or str(int(parts[2])) != parts[2]:
                raise _fail(where, f"tensor {name!r}", "is not a fusion tensor this patchbank writes")
            ids.add(int(parts[2]))
    n = len(ids)
    if ids != set(range(n)) or n == 0:
        raise _fail(where, "fusion tensors", f"must be fusion.keep/mean/scale.0..n-1, got layers {sorted(ids)}")
    return n


def _check_fusion(tensors: dict, cfg: Config, where: str) -> tuple[int | None, set[str]]:
    """The fusion statistics; returns (fused width or None when only the backbone knows it,
    the tensor names used)."""
    if cfg.fusion != "vg":
        return None, set()
    n = _fusion_layers(tensors, where)
    if cfg.layers is not None and n != len(cfg.layers):
        raise _fail(where, "fusion tensors", f"cover {n} layers, config.layers has {len(cfg.layers)}")
    used, width = {"fusion.layer_weights"}, 0
    for i in range(n):
        keep = _tensor(tensors, f"fusion.keep.{i}", where, (torch.int64,), (None,))
        if bool((keep < 0).any()) or (keep.numel() > 1 and not bool((keep[1:] > keep[:-1]).all())):
            raise _fail(where, f"tensor 'fusion.keep.{i}'", "must hold increasing non-negative channel indices")
        for part in ("mean", "scale"):
            _tensor(tensors, f"fusion.{part}.{i}", where, (torch.float32,), (keep.numel(),))
        used |= {f"fusion.keep.{i}", f"fusion.mean.{i}", f"fusion.scale.{i}"}
        width += keep.numel()
    weights = _tensor(tensors, "fusion.layer_weights", where, (torch.float64,), (n,))
    if bool((weights < 0).any()):
        raise _fail(where, "tensor 'fusion.layer_weights'", "has negative values")
    return width, used


def _check_embedding(tensors: dict, cfg: Config, dim: int, where: str) -> set[str]:
    """Fusion and projection against each other and the bank width; returns the names used."""
    width, used = _check_fusion(tensors, cfg, where)
    if cfg.projection_dim is None:
        if "projection.matrix" in tensors:
            raise _fail(where, "tensor 'projection.matrix'", "is present but config.projection_dim is null")
        if width is not None and width != dim:
            raise _fail(where, "bank_dim", f"({dim}) must equal the fused width {width} (kept channels)")
        return used
    rows = width if width is not None else None
    _tensor(tensors, "projection.matrix", where, (torch.float32,), (rows, cfg.projection_dim))
    return used | {"projection.matrix"}


def _check_calibration(tensors: dict, cfg: Config, n_cal: int, n_train: int, where: str) -> None:
    """The calibration images' scores and descriptors, their map means exactly when
    ``cfg.whole_image_check`` (float64 [n_cal], finite), every training image's blurriness
    exactly when ``cfg.focus_check`` (float64 [n_train], finite), and (optional: files written before it
    existed lack it) ``calibration_images``, their training-image indices: int64 [n_cal],
    strictly increasing, each below ``n_train``."""
    _tensor(tensors, "calibration_base_scores", where, (torch.float64,), (n_cal,))
    _tensor(tensors, "calibration_descriptors", where, (torch.float64,), (n_cal, N_DESCRIPTORS))
    for name, flag, rows in (("calibration_map_means", "whole_image_check", n_cal),
                             ("training_blurriness", "focus_check", n_train)):
        if getattr(cfg, flag):
            if name not in tensors:
                raise _fail(where, f"tensor {name!r}", f"is missing (config.{flag} is true)")
            _tensor(tensors, name, where, (torch.float64,), (rows,))
        elif name in tensors:
            raise _fail(where, f"tensor {name!r}", f"is present but config.{flag} is false")
    if "calibration_images" in tensors:
        ids = _tensor(tensors, "calibration_images", where, (torch.int64,), (n_cal,))
        if bool((ids < 0).any()) or bool((ids >= n_train).any()) or \
                (ids.numel() > 1 and not bool((ids[1:] > ids[:-1]).all())):
            raise _fail(where, "tensor 'calibration_images'", f"must hold increasing training-image "
                        f"indices below n_train_images ({n_train})")


def _check_train_names(meta: dict, n_train: int, where: str) -> None:
    """``train_images`` (absent in files written before it): one file name or null per training
    image, in the fit's order."""
    names = meta.get("train_images")
    if names is not None and not (isinstance(names, list) and len(names) == n_train
                                  and all(n is None or isinstance(n, str) for n in names)):
        raise _fail(where, "train_images", f"must be a list of n_train_images ({n_train}) file names "
                    f"or nulls, got {type(names).__name__}"
                    + (f" of {len(names)}" if isinstance(names, list) else ""))


def _check_fitted_with(meta: dict, where: str) -> None:
    """``fitted_with`` (absent in files written before it): the fit's library versions
    (:func:`~patchbank.runtime.environment.is_library_record`)."""
    env = meta.get("fitted_with")
    if env is not None and not is_library_record(env):
        raise _fail(where, "fitted_with", f"must be {RECORD_RULE}, got {type(env).__name__}")


def _check_map_offset(tensors: dict, cfg: Config, grid: tuple[int, int], where: str) -> None:
    """``map_offset`` (float32 [grid cells], finite) exactly when ``config.map_offset`` is position."""
    if "map_offset" in tensors or cfg.map_offset == "position":
        if cfg.map_offset != "position":
            raise _fail(where, "tensor 'map_offset'", f"is present but config.map_offset is {cfg.map_offset!r}")
        _tensor(tensors, "map_offset", where, (torch.float32,), (grid[0] * grid[1],))


def check_model_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any], where: str, *,
                      weights_given: bool = False, routed: bool = False) -> None:
    """Raise :class:`PatchbankError` unless ``tensors`` / ``meta`` are a consistent fitted state.

    One line naming ``where`` and the tensor or field at fault; see the module docstring for what
    is checked.  ``weights_given``: the caller was given the backbone weights explicitly, so the
    header's ``config.weights`` is not checked (:func:`check_header_weights`).  ``meta`` is one
    detector's :meth:`Detector.info` (with ``config``; no field outside :data:`HEADER_FIELDS`);
    ``tensors`` its state tensors, plus ``routing_prototypes`` exactly when ``routed`` (a category
    of a multi-category model).
    """
    if not isinstance(meta, dict):
        raise _fail(where, "model header", f"must be a JSON object, got {type(meta).__name__}")
    _check_fields(meta, HEADER_FIELDS, where, "model header")
    if not weights_given:
        check_header_weights(meta, where)
    _check_sha256(meta, where)
    cfg = _config(meta, where)
    search = meta.get("search")
    if not isinstance(search, str):
        raise _fail(where, "search", f"must be a search name, got {search!r}")
    n_train, n_cal, grid = _check_scalars(meta, cfg, where)
    entries, dim = _check_bank(tensors, meta, cfg, where, n_train * grid[0] * grid[1])
    if search not in _allowed_searches(cfg, entries):
        raise _fail(where, "search", f"{search!r} is not what config.search {cfg.search!r} resolves to "
                    f"for a bank of {entries} entries ({', '.join(_allowed_searches(cfg, entries))})")
    used = _check_embedding(tensors, cfg, dim, where)
    _check_calibration(tensors, cfg, n_cal, n_train, where)
    _check_map_offset(tensors, cfg, grid, where)
    _check_train_names(meta, n_train, where)
    _check_fitted_with(meta, where)
    routing = {"routing_prototypes"} if routed else set()
    extra = sorted(set(tensors) - used - set(_FIXED_TENSORS) - routing)
    if extra:
        raise _fail(where, f"tensor {extra[0]!r}", "is not part of a patchbank model"
                    + (" (routing prototypes belong to a category of a multi-category model)"
                       if extra[0] == "routing_prototypes" else "")
                    + (f" (nor are {', '.join(map(repr, extra[1:]))})" if len(extra) > 1 else ""))
    if routed:
        _tensor(tensors, "routing_prototypes", where, (torch.float32,), (None, None))


# ---------------------------------------------------------------------------------- multi-category
def check_multi_header(tensors: dict[str, torch.Tensor], meta: dict[str, Any], where: str
                       ) -> dict[str, tuple[dict[str, torch.Tensor], dict[str, Any]]]:
    """Check a multi-category model's header and tensor names; returns ``{category: (tensors,
    meta)}`` in the model's order, each ready for :func:`check_model_state` / ``from_state``
    (tensors without the ``<category>/`` prefix, meta with the shared config as each category
    was fitted with it: aspect "fixed").

    Refused: a header that is not ``kind: multi``, a config that is not an object, an empty,
    repeated or invalid ``category_order``, ``categories`` without an object per category,
    ``routing_prototypes`` that is not a positive integer, a tensor of no listed category, a
    category without tensors, and routing prototypes of unequal width or more rows than
    ``routing_prototypes``.
    """
    if not isinstance(meta, dict) or meta.get("kind") != "multi":
        raise _fail(where, "kind", "must be 'multi' for a multi-category model")
    _check_fields(meta, MULTI_FIELDS, where, "multi-category header")
    if not isinstance(meta.get("config"), dict):
        raise _fail(where, "config", f"must be a JSON object, got {type(meta.get('config')).__name__}")
    order, infos = meta.get("category_order"), meta.get("categories")
    if (not isinstance(order, list) or not order or len(set(map(str, order))) != len(order)
            or not all(isinstance(c, str) and _CATEGORY.match(c) for c in order)):
        raise _fail(where, "category_order", f"must be a non-empty list of distinct category names, got {order!r}")
    if not isinstance(infos, dict) or set(infos) != set(order) or not all(isinstance(infos[c], dict) for c in order):
        raise _fail(where, "categories", "must hold one JSON object per name of category_order")
    # a category's own copy of the config, if any, is the shared one as its detector was made
    # (``MultiDetector`` fixes the input shape for every category: aspect "fixed")
    fitted_as = (meta["config"], dict(meta["config"], aspect="fixed"))
    for cat in order:
        if "config" in infos[cat] and infos[cat]["config"] not in fitted_as:
            raise _fail(f"{where} [{cat}]", "config", "differs from the model's shared config (every "
                        "category is fitted with one configuration)")
    if "bank_bytes" in meta and meta["bank_bytes"] != sum(infos[c].get("bank_bytes", 0) for c in order):
        raise _fail(where, "bank_bytes", f"({meta['bank_bytes']!r}) is not the sum of the categories' "
                    f"bank_bytes")
    n_proto = meta.get("routing_prototypes")
    if not _is_int(n_proto) or n_proto < 1:
        raise _fail(where, "routing_prototypes", f"must be an integer >= 1, got {n_proto!r}")
    states: dict[str, dict[str, torch.Tensor]] = {c: {} for c in order}
    for name, t in tensors.items():
        cat, _, rest = name.partition("/")
        if cat not in states or not rest:
            raise _fail(where, f"tensor {name!r}", "belongs to no category of category_order")
        states[cat][rest] = t
    widths = set()
    for cat in order:
        proto = _tensor(states[cat], "routing_prototypes", f"{where} [{cat}]", (torch.float32,), (None, None))
        if proto.shape[0] > n_proto:
            raise _fail(f"{where} [{cat}]", "tensor 'routing_prototypes'",
                        f"has {proto.shape[0]} rows, more than routing_prototypes = {n_proto}")
        widths.add(proto.shape[1])
    if len(widths) > 1:
        raise _fail(where, "routing_prototypes tensors", f"have different widths {sorted(widths)}")
    return {c: (states[c], {**infos[c], "config": fitted_as[1]}) for c in order}


# ---------------------------------------------------------------------------------- at first use
def check_backbone_fit(channels: Sequence[int], keep: Sequence[torch.Tensor] | None,
                       widths: Sequence[int], in_dim: int, where: str) -> None:
    """Once the backbone is known: the model's features must fit its per-layer ``channels``.

    ``keep``: VG-Fusion's kept channel indices per layer (None for the equal / L2 fusions);
    ``widths``: the fitted fusion's columns per layer for these channels
    (:meth:`patchbank.pipeline.fusion.Fusion.widths`); ``in_dim``: the width the projection takes
    (its matrix's rows), or the bank width without a projection.  Refused: another number of
    layers, a kept index outside its layer, a fused width other than ``in_dim``.
    """
    channels = [int(c) for c in channels]
    if keep is not None:
        if len(keep) != len(channels):
            raise _fail(where, "fusion tensors", f"cover {len(keep)} layers; the backbone taps {len(channels)}")
        for i, (k, c) in enumerate(zip(keep, channels)):
            if k.numel() and int(k.max()) >= c:
                raise _fail(where, f"tensor 'fusion.keep.{i}'",
                            f"indexes channel {int(k.max())}; the backbone's layer {i} has {c} channels")
    width = sum(int(w) for w in widths)
    if width != in_dim:
        raise _fail(where, "feature width", f"{in_dim} of the model differs from the backbone's fused width {width}")


def check_map_columns(width: int, map_dim: int, where: str) -> None:
    """Once the backbone is known, with context taps: the model's map columns (``bank_map_dim``)
    must be the map taps' fused ``width`` (:func:`patchbank.detector.map_columns`)."""
    if width != map_dim:
        raise _fail(where, "bank_map_dim", f"({map_dim}) differs from the backbone's map taps' width {width}")


def check_patch_grid(model_grid: Sequence[int], grid: Sequence[int], where: str) -> None:
    """The model's ``patch_grid`` must be the grid the backbone produces for the input size."""
    if tuple(int(g) for g in model_grid) != tuple(int(g) for g in grid):
        raise _fail(where, "patch_grid", f"{list(model_grid)} differs from the backbone's patch grid "
                    f"{list(grid)} for this input size")
