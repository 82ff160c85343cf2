"""Configuration: one frozen dataclass, presets named after the methods.

A :class:`Config` holds only choices, never learned state.  ``Config.preset(name, **overrides)``
returns a preset with any field replaced; unknown fields or values raise
:class:`~patchbank.errors.ConfigError` (a ``ValueError``) naming the offending field.

Each field carries its own description in ``dataclasses.field(metadata=...)``: ``help`` (one
line), ``choices`` (allowed strings; for a tuple field, the allowed members of a non-empty subset)
and ``interval`` (an :class:`Interval`).  :data:`FIELD_SPECS` turns that metadata and the field's
annotation into one :class:`FieldSpec` per field; ``Config.__post_init__`` validates every field
with it in one loop, and the CLI builds one option per field from the same specs; cross-field
rules are data too (:data:`CONTEXT_NEEDS`).  Presets:

``patchbank``  the default (docs/default_preset.md): PatchCore features at resize 320 / crop 288
               (reshaped to the training images' aspect ratio when they share one, at the same
               pixel count: ``aspect="auto"``), the backbone reading the whole resize and the crop
               cut from its feature maps (``crop_at="features"``), zero-padded 3 x 3 averaging, greedy coreset 1%,
               the mean of the top 5% patch scores, those patches measured again with the next
               backbone block (context taps); an image whose whole map is raised (a blurred, dark
               or noisy frame) is anomalous too (``whole_image_check``), and so is one blurrier
               than every training image (``focus_check``).
``lmf-core``   LMF-Core (Liu): VG-Fusion (kappa 0.5), Gaussian JL projection to d'=128,
               uniform RP-Coreset r=0.10, k=1 Euclidean nearest neighbour (Eq. 2), PatchCore's
               re-weighted max normalised by the training images' leave-one-image-out statistics.
``patchcore``  PatchCore (Roth et al.): equal-weight concatenation, no projection of the stored
               features, greedy k-center coreset 10% selected in a 128-d random projection,
               k=1, re-weighted max.
``structcore`` StructCore's base detector: DINOv2 ViT-B/14 skip layers (-1,-3,-6,-9,-12) with
               per-layer L2 normalisation, projection to 512, greedy coreset 1%, k=5 mean squared
               distance (Eq. 5), resize 448 / crop 392; image score = max pooling plus
               lambda_auto times the diagonal Mahalanobis distance of the map descriptor
               [std, top-1% mean, total variation] (Eqs. 7-12).

The paper backbones for LMF-Core and PatchCore are WideResNet-50; their presets default to
``efficientnet_lite2`` because those are the only ImageNet weights that install offline.  Pass
``backbone="wide_resnet50_2"`` for the paper setting.
"""
from __future__ import annotations

import dataclasses
import numbers
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from patchbank.errors import ConfigError, PatchbankError

FUSIONS = ("equal", "vg", "l2")
PATCH_BORDERS = ("valid", "zero")
ASPECTS = ("fixed", "auto")
CROP_ATS = ("image", "features")
AUTO_ASPECT_FIELDS = ("image_size", "crop_size")
"""The fields a fit resolves under ``aspect="auto"`` (patchbank.io.aspect): a fitted model's values
of them are the resolved ones, so preset comparisons compare them by pixel count
(:func:`auto_sizes_match`)."""
AUTO_SIDE_SLACK = 32
"""How far (px) a side may move when ``aspect="auto"`` reshapes a size at its pixel count: the
crop's sides are rounded to the backbone's largest stride (at most 32 for the registered
backbones), the resize's margins to whole cells (patchbank.io.aspect.reshaped)."""


def auto_sizes_match(resolved: dict[str, Any], configured: dict[str, Any]) -> bool:
    """Whether the sizes of an ``aspect="auto"`` fit (``resolved``: a ``to_dict`` dict, or
    anything with the :data:`AUTO_ASPECT_FIELDS` keys) can be ``configured``'s reshaped: each
    field None on both sides, or ``configured``'s pixel count within the resolved sides give or
    take :data:`AUTO_SIDE_SLACK`.  A size given by hand (96 for the preset's 320) does not match;
    a change of about one stride or less cannot be told from the reshape."""
    s = AUTO_SIDE_SLACK
    for key in AUTO_ASPECT_FIELDS:
        x, y = resolved.get(key), configured.get(key)
        if (x is None) != (y is None):
            return False
        if x is not None and not max(x[0] - s, 0) * max(x[1] - s, 0) <= y[0] * y[1] <= (x[0] + s) * (x[1] + s):
            return False
    return True
MAP_UPSAMPLES = ("bilinear", "nearest")
MAP_OFFSETS = ("none", "position")
SAMPLERS = ("uniform", "greedy", "none")
SEARCHES = ("auto", "exact", "faiss-flat", "faiss-ivf", "faiss-ivfpq")
RUNTIMES = ("torch", "onnx", "openvino")   # torch: a model file; the others run an export folder
DISTANCES = ("euclidean", "squared")
KNN_REDUCES = ("min", "mean")
BASE_SCORES = ("max", "reweighted_max", "topk_mean")
IMAGE_SCORES = BASE_SCORES + ("struct", "hybrid")
STRUCT_COMPONENTS = ("std", "topk_mean", "tv")
STRUCT_DISTANCES = ("mahalanobis", "l1_std", "chebyshev_std", "l1", "l2", "chebyshev", "cosine")
BANK_DTYPES = ("float32", "float16")
THRESHOLD_RULES = ("conformal", "quantile")   # pipeline.conformal.threshold_at
# pixel budget of the resized image the backbone's input is cut from (2048 x 2048): the feature
# maps of one such image already take hundreds of MB; larger sizes are refused before anything
# is allocated (docs/reliability.md)
MAX_INPUT_PIXELS = 2048 * 2048


def check_runtime_options(runtime: str, device: str, weights: str | None) -> None:
    """The options an export runtime (onnx / openvino) cannot honour: it runs on the CPU and
    carries its backbone in its graph, so ``device`` must be cpu and ``weights`` None there; a
    one-line :class:`~patchbank.errors.PatchbankError` saying what to drop.  torch takes both."""
    if runtime == "torch":
        return
    if device != "cpu":
        raise PatchbankError(f"--runtime {runtime} runs on the CPU; drop --device {device} "
                             f"(or run the model file with --runtime torch)")
    if weights is not None:
        raise PatchbankError(f"--weights applies to model files; an export folder carries its backbone "
                             f"in its graph (drop --weights with --runtime {runtime})")


@dataclass(frozen=True)
class Interval:
    """A numeric range a field's value must lie in.

    ``low`` / ``high`` of None mean unbounded on that side; ``closed`` says which finite bounds
    belong to the range: ``"both"``, ``"left"``, ``"right"`` or ``"neither"``.
    ``Interval(0, 1, "right")`` is (0, 1]; ``Interval(1)`` is >= 1.
    """

    low: float | None = None
    high: float | None = None
    closed: str = "both"

    def __contains__(self, value: Any) -> bool:
        """True when the number ``value`` lies in the range (NaN never does)."""
        left = self.closed in ("both", "left")
        right = self.closed in ("both", "right")
        if self.low is not None and not (value >= self.low if left else value > self.low):
            return False
        if self.high is not None and not (value <= self.high if right else value < self.high):
            return False
        return value == value  # NaN

    def describe(self) -> str:
        """``"in (0, 1]"``, ``">= 1"``, ``"> 0"`` or ``"<= 1"``: the phrase after "must be"."""
        left = self.closed in ("both", "left")
        right = self.closed in ("both", "right")
        low, high = _bound(self.low), _bound(self.high)
        if self.low is not None and self.high is not None:
            return f"in {'[' if left else '('}{low}, {high}{']' if right else ')'}"
        if self.low is not None:
            return f"{'>=' if left else '>'} {low}"
        if self.high is not None:
            return f"{'<=' if right else '<'} {high}"
        return "a number"


def _bound(value: float | None) -> str:
    """A bound as written: an integer in full (a seed's 9223372036854775804), else ``:g``
    ("" for None, no bound)."""
    if value is None:
        return ""
    return str(value) if isinstance(value, int) else f"{value:g}"


def _setting(default: Any, help: str, *, choices: tuple[str, ...] | None = None,
             interval: Interval | None = None) -> Any:
    """A dataclass field whose metadata describes it (see the module docstring)."""
    return field(default=default, metadata={"help": help, "choices": choices, "interval": interval})


def parse_size(value: Any, name: str) -> tuple[int, int] | None:
    """Accept 224, (h, w), [h, w] or "320x768" and return (h, w); None stays None.

    Raises:
        ConfigError: (field ``name``) for text that is not ``N`` or ``HxW``, or a size that is not
            two positive integers.
    """
    if value is None:
        return None
    if isinstance(value, str):
        parts = value.lower().replace(",", "x").split("x")
        try:   # every part a number: "96x" or "x64" is a typo, not 96 x 96
            nums = [int(p) for p in parts]
        except ValueError:
            raise ConfigError(name, f"expected N or HxW, got {value!r}") from None
        value = nums[0] if len(nums) == 1 else tuple(nums)
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = (value, value)
    if isinstance(value, (bytes, bytearray)):
        raise ConfigError(name, f"expected N or HxW, got {value!r}")
    try:
        items = tuple(value)
    except TypeError:
        raise ConfigError(name, f"expected N or HxW, got {value!r}") from None
    if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in items):
        raise ConfigError(name, f"expected N or HxW of integers, got {value!r}")
    value = tuple(int(v) for v in items)
    if len(value) != 2 or min(value) <= 0:
        raise ConfigError(name, f"expected a positive size N or HxW, got {value!r}")
    return value


def value_kind(tp: Any) -> tuple[str, bool]:
    """``(kind, optional)`` of a field annotation.

    kind is ``"bool"``, ``"int"``, ``"float"``, ``"str"``, ``"size"`` (``tuple[int, int]``) or
    ``"list"`` (any other tuple); optional is True when the annotation admits None.  Anything else
    counts as ``"str"``.
    """
    optional = False
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp):
        rest = [a for a in typing.get_args(tp) if a is not type(None)]
        tp, optional = (rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]), True
    args = typing.get_args(tp)
    if tp in (bool, int, float, str):
        return tp.__name__, optional
    if typing.get_origin(tp) is tuple:
        return ("size" if len(args) == 2 and all(a is int for a in args) else "list"), optional
    return "str", optional


def _as_int(spec: "FieldSpec", value: Any) -> Any:
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)          # numpy's integers too: a model header is JSON
    raise ConfigError(spec.name, f"expected an integer, got {value!r}")


def _as_float(spec: "FieldSpec", value: Any) -> Any:
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)        # numpy's floats and fractions too
    raise ConfigError(spec.name, f"expected a number, got {value!r}")


def _as_bool(spec: "FieldSpec", value: Any) -> Any:
    if isinstance(value, bool):
        return value
    raise ConfigError(spec.name, f"expected true or false, got {value!r}")


def _as_str(spec: "FieldSpec", value: Any) -> Any:
    if isinstance(value, str):
        return value
    raise ConfigError(spec.name, f"expected a string, got {value!r}")


def _as_list(spec: "FieldSpec", value: Any) -> Any:
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    try:
        return tuple(value)
    except TypeError:
        raise ConfigError(spec.name, f"expected a list, got {value!r}") from None


_NORMALISE = {"int": _as_int, "float": _as_float, "bool": _as_bool, "str": _as_str,
              "list": _as_list, "size": lambda spec, value: parse_size(value, spec.name)}


@dataclass(frozen=True)
class FieldSpec:
    """Everything known about one Config field: its metadata plus what its annotation says.

    Attributes:
        name: the field name (``coreset_ratio``).
        default: the dataclass default (the ``lmf-core`` value).
        help: one line describing the field.
        kind: ``"int"``, ``"float"``, ``"bool"``, ``"str"``, ``"size"`` or ``"list"``
            (see :func:`value_kind`).
        optional: None is an accepted value.
        choices: the allowed strings (a ``"str"`` field takes one, a ``"list"`` field a non-empty
            subset without repeats), or None for free values.
        interval: the numeric range of an ``"int"`` / ``"float"`` field, or None.
    """

    name: str
    default: Any
    help: str
    kind: str
    optional: bool
    choices: tuple[str, ...] | None = None
    interval: Interval | None = None

    def check(self, value: Any) -> Any:
        """The value normalised (sizes to ``(h, w)``, lists to tuples), or :class:`ConfigError`."""
        if value is None:
            if self.optional:
                return None
            raise ConfigError(self.name, "must not be None")
        value = _NORMALISE[self.kind](self, value)
        if self.choices is not None and self.kind == "list":
            if not value or len(set(value)) != len(value) or any(v not in self.choices for v in value):
                raise ConfigError(self.name, f"expected a non-empty subset of "
                                             f"{', '.join(self.choices)} without repeats, got {value!r}")
        elif self.choices is not None and value not in self.choices:
            raise ConfigError(self.name, f"{value!r} is not one of {', '.join(self.choices)}")
        if self.interval is not None and value not in self.interval:
            none = " or None" if self.optional else ""
            raise ConfigError(self.name, f"must be {self.interval.describe()}{none}, got {value}")
        return value


_POSITIVE = Interval(1)            # integers >= 1
_FRACTION = Interval(0, 1, "right")   # (0, 1]
_OPEN_UNIT = Interval(0, 1, "neither")  # (0, 1)
_NON_NEGATIVE = Interval(0)
_POSITIVE_REAL = Interval(0, None, "neither")   # > 0
_SEED = Interval(0, 2**63 - 4)   # torch's generators take 64-bit seeds; the pipeline adds up to 3
_PATCH = Interval(1, 15)           # the p x p average stays local (PatchCore uses 3)
_WIDTH = Interval(1, 4096)         # projected widths: a bank row of at most 4096 values
_SIGMA = Interval(0, 512)          # a map's blur: its kernel (8 sigma + 1 wide) within a 4097-px side


CONTEXT_NEEDS = (
    # (field, holds(config), what context_taps > 0 needs): the image score measures the top
    # patches again on the bank's columns of every tap, so each tap must keep its own columns
    # (every fusion concatenates; a projection mixes them)
    ("projection_dim", lambda c: c.projection_dim is None, "projection_dim none"),
    ("image_score", lambda c: c.base_pooling in ("max", "topk_mean"),
     "max or topk_mean pooling (image_score, or base_score under struct / hybrid)"),
    ("local_density", lambda c: not c.local_density, "local_density false"),
)


@dataclass(frozen=True)
class Config:
    """Every choice of a detector (never learned state); frozen, validated on construction.

    Build one with :meth:`preset` (a named method plus overrides) or directly with keyword
    arguments; the defaults are the ``lmf-core`` preset.  Each field's help, choices and range
    are in its metadata (:data:`FIELD_SPECS`).  Sizes accept ``224``, ``(h, w)`` or ``"HxW"``
    and are stored as ``(h, w)``; tuple fields accept lists (and comma-separated text for
    ``struct_components``).

    Raises:
        ConfigError: a value of the wrong type, outside its range or choices, or a crop larger
            than the resize.
    """

    # --- images and backbone -------------------------------------------------------------
    backbone: str = _setting("efficientnet_lite2", "Backbone network (see patchbank.backbones).")
    weights: str | None = _setting(None, "Local weight file; None = packaged / downloaded.")
    layers: tuple[Any, ...] | None = _setting(None, "Feature taps; None = the backbone's default taps.")
    context_taps: int = _setting(0, "Backbone blocks after the deepest tap added to the image score only: "
                                 "the top patches by map score are measured again with them.",
                                 interval=_NON_NEGATIVE)
    image_size: tuple[int, int] = _setting((256, 256), "Resize (H, W).")
    keep_aspect: bool = _setting(False, "True: scale to cover image_size, centre-crop the excess.")
    crop_size: tuple[int, int] | None = _setting((224, 224), "Centre crop (H, W); None = no crop.")
    aspect: str = _setting("fixed", "Input shape: fixed (image_size / crop_size as given) or auto (fit "
                           "reshapes them to the training images' shared aspect ratio H / W at the "
                           "same pixel count, when they share one; see patchbank.io.aspect). Sizes "
                           "given by hand keep their shape only with fixed.",
                           choices=ASPECTS)
    crop_at: str = _setting("image", "Where the centre crop is cut: image (the backbone reads the crop) or "
                            "features (the backbone reads the whole resize and its feature maps are "
                            "cut to the crop's cells, so the crop's edge is seen with its real "
                            "surroundings; the margins must be whole cells of the finest tap).",
                            choices=CROP_ATS)
    # --- patch features and fusion --------------------------------------------------------
    patch_size: int = _setting(3, "p x p local average aggregation (PatchCore).", interval=_PATCH)
    patch_border: str = _setting("valid", "Border of the p x p average: valid (only existing neighbours) "
                                 "or zero (zero padding counts, as PatchCore and anomalib).",
                                 choices=PATCH_BORDERS)
    fusion: str = _setting("vg", "Layer fusion: equal weights, vg (LMF-Core Eq. 1) or l2 (StructCore).",
                           choices=FUSIONS)
    kappa: float = _setting(0.5, "Fraction of channels kept per layer (VG-Fusion).", interval=_FRACTION)
    projection_dim: int | None = _setting(128, "d' of the Gaussian JL projection; None = no projection.",
                                          interval=_WIDTH)
    # --- memory bank ----------------------------------------------------------------------
    sampler: str = _setting("uniform", "Coreset sampler of the memory bank (none = keep every patch).",
                            choices=SAMPLERS)
    coreset_ratio: float = _setting(0.10, "Share r of the patches kept in the bank.", interval=_FRACTION)
    greedy_proxy_dim: int | None = _setting(128, "Width of the random projection the greedy sampler "
                                            "measures distances in; rows no wider, or None, are "
                                            "used as they are.", interval=_WIDTH)
    bank_dtype: str = _setting("float32", "Storage type of the bank (search runs in float32).",
                               choices=BANK_DTYPES)
    # --- scoring --------------------------------------------------------------------------
    k: int = _setting(1, "Nearest neighbours per patch.", interval=_POSITIVE)
    distance: str = _setting("euclidean", "Patch distance: euclidean or squared euclidean.",
                             choices=DISTANCES)
    knn_reduce: str = _setting("min", "Reduction over the k neighbours: min (LMF-Core Eq. 2) or "
                               "mean (StructCore Eq. 5).", choices=KNN_REDUCES)
    search: str = _setting("auto", "Nearest-neighbour search; auto: faiss-ivf for banks >= ivf_min_bank "
                           "(faiss-ivfpq >= ivfpq_min_bank) if faiss is installed, else exact.",
                           choices=SEARCHES)
    ivf_probe: int = _setting(8, "Inverted lists visited per query (faiss-ivf).", interval=_POSITIVE)
    ivf_min_bank: int = _setting(20000, "Smallest bank that auto searches with IVF.", interval=_POSITIVE)
    ivfpq_min_bank: int = _setting(1000000, "Smallest bank that auto searches with IVF-PQ (4-bit codes, "
                                   "exact re-rank).", interval=_POSITIVE)
    pq_refine: int = _setting(8, "faiss-ivfpq: candidates re-ranked exactly per neighbour wanted.",
                              interval=_POSITIVE)
    map_upsample: str = _setting("bilinear", "Patch grid -> pixel map: bilinear (official PatchCore) or "
                                 "nearest (anomalib).", choices=MAP_UPSAMPLES)
    blur_sigma: float = _setting(4.0, "Gaussian blur sigma of the anomaly map (0 = no blur).",
                                 interval=_SIGMA)
    map_offset: str = _setting("none", "Subtracted from the patch scores before the map: none, or "
                               "position (each grid position's mean leave-one-image-out score of the "
                               "training images; for aligned products, e.g. parts in a fixture).",
                               choices=MAP_OFFSETS)
    image_score: str = _setting("reweighted_max", "Image score pooled from the patch scores.",
                                choices=IMAGE_SCORES)
    base_score: str = _setting("max", "Pooling S_base that hybrid adds the structural term to.",
                               choices=BASE_SCORES)
    reweight_neighbors: int = _setting(9, "b of PatchCore's re-weighting.", interval=_POSITIVE)
    topk_ratio: float = _setting(0.05, "Share of patches averaged by topk_mean.", interval=_FRACTION)
    # --- StructCore structure-aware score (image_score "struct" / "hybrid") ----------------
    struct_components: tuple[str, ...] = _setting(STRUCT_COMPONENTS, "Map descriptor: any subset of "
                                                  "std, topk_mean, tv.", choices=STRUCT_COMPONENTS)
    struct_distance: str = _setting("mahalanobis", "D_struct (Eq. 10) or a Table 6 alternative.",
                                    choices=STRUCT_DISTANCES)
    struct_topk_ratio: float = _setting(0.01, "r of the descriptor's tail mass (Eq. 8).",
                                        interval=_FRACTION)
    hybrid_lambda: float | None = _setting(None, "lambda of Eq. 12; None = lambda_auto (Eq. 11).",
                                           interval=_NON_NEGATIVE)
    local_density: bool = _setting(False, "LMF-Core's rejected calibration: distance / local bank radius.")
    density_neighbors: int = _setting(5, "k of the local radius (mean distance to k nearest entries).",
                                      interval=_POSITIVE)
    # --- calibration ----------------------------------------------------------------------
    calibration_max_mb: float = _setting(512.0, "Raw patch rows of the calibration images kept at most "
                                         "(MB): every training image is scored leave-one-image-out "
                                         "while they fit, else a seeded subset.", interval=_POSITIVE_REAL)
    calibration_fraction: float = _setting(0.10, "Ignored (read by models fit before calibration "
                                           "scored every training image).", interval=_OPEN_UNIT)
    calibration_max_images: int = _setting(100, "Ignored (read by models fit before calibration "
                                           "scored every training image).", interval=_POSITIVE)
    target_fpr: float = _setting(0.01, "False-positive rate the threshold is set for, on the training "
                                 "images' leave-one-image-out scores (see threshold_rule).",
                                 interval=_OPEN_UNIT)
    threshold_rule: str = _setting("quantile", "conformal: the ceil((n + 1)(1 - target_fpr))-th "
                                   "smallest of the n scores (at most target_fpr of new normal "
                                   "images above it; every preset); quantile: the interpolated "
                                   "(1 - target_fpr) quantile (model files written before this "
                                   "field existed).",
                                   choices=THRESHOLD_RULES)
    whole_image_check: bool = _setting(False, "True: an image is also anomalous when the mean of its "
                                       "anomaly map is above a second threshold (a blurred, dark or "
                                       "noisy frame raises every patch a little and none much); the two "
                                       "thresholds are set jointly, at most target_fpr of the training "
                                       "images' leave-one-image-out results above either (needs "
                                       "threshold_rule conformal).")
    focus_check: bool = _setting(False, "True: an image blurrier than every training image (the "
                                 "variance of the Laplacian of its grey network input below all of "
                                 "theirs) is also anomalous: an out-of-focus frame can hide a defect "
                                 "without raising the map.  Adds at most 1 / (n_train + 1) to the "
                                 "false-positive bound on new normal images.")
    # --- run ------------------------------------------------------------------------------
    seed: int = _setting(0, "Random seed (sampler, projections, calibration subset).", interval=_SEED)
    batch_size: int = _setting(16, "Images per forward pass.", interval=_POSITIVE)

    def __post_init__(self) -> None:
        for spec in FIELD_SPECS.values():   # one generic check per field, from its metadata
            object.__setattr__(self, spec.name, spec.check(getattr(self, spec.name)))
        crop, size = self.crop_size, self.image_size
        if size[0] * size[1] > MAX_INPUT_PIXELS:
            raise ConfigError("image_size", f"{size[0]}x{size[1]} is over the input budget of "
                              f"{MAX_INPUT_PIXELS:,} pixels (2048 x 2048)")
        if crop is not None and (crop[0] > size[0] or crop[1] > size[1]):
            raise ConfigError("crop_size", f"{crop} is larger than image_size {size}",
                              related=("image_size",))
        if self.whole_image_check and self.threshold_rule != "conformal":
            raise ConfigError("whole_image_check", f"needs threshold_rule conformal (got "
                              f"{self.threshold_rule!r}); or set whole_image_check false",
                              related=("threshold_rule",))
        if self.context_taps:
            for name, holds, need in CONTEXT_NEEDS:
                if not holds(self):
                    raise ConfigError("context_taps", f"{self.context_taps} needs {need} (got "
                                      f"{name}={getattr(self, name)!r}); or set context_taps 0",
                                      related=(name,))

    # --- construction -----------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "Config":
        """The named preset (see the module docstring) with ``overrides`` replacing fields.

        Raises:
            ConfigError: an unknown preset (field ``"preset"``), field or value.
        """
        if not isinstance(name, str) or name not in PRESETS:
            raise ConfigError("preset", f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        return PRESETS[name].replace(**overrides)

    def replace(self, **overrides: Any) -> "Config":
        """A copy with ``overrides`` replacing fields (validated); ConfigError for unknown fields."""
        _check_known(overrides)
        return dataclasses.replace(self, **overrides)

    def preset_name(self) -> str | None:
        """The preset this configuration is, whatever its seed (None: a preset with overrides,
        or no preset).  With ``aspect="auto"`` the resize and crop are not compared: a fitted
        model's are what its fit resolved them to (patchbank.io.aspect), so they are compared by
        pixel count (:func:`auto_sizes_match`)."""
        free = {"seed": self.seed}
        if self.aspect == "auto":
            free.update({k: getattr(self, k) for k in AUTO_ASPECT_FIELDS})
        return next((name for name, cfg in PRESETS.items() if cfg.replace(**free) == self
                     and (self.aspect != "auto" or auto_sizes_match(self.to_dict(), cfg.to_dict()))), None)

    # --- (de)serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Field -> value, JSON-ready (tuples as lists); :meth:`from_dict` reads it back."""
        d = dataclasses.asdict(self)
        for spec in FIELD_SPECS.values():
            if spec.kind in ("size", "list") and d[spec.name] is not None:
                d[spec.name] = list(d[spec.name])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Config":
        """The Config a :meth:`to_dict` dict describes; ConfigError for unknown fields or values."""
        if not isinstance(d, dict):
            raise ConfigError("config", f"expected a dict of fields, got {type(d).__name__}")
        _check_known(d)
        return cls(**d)

    @property
    def input_size(self) -> tuple[int, int]:
        """(H, W) of the inspected view, the anomaly map's size: the crop if any, else the resize."""
        return self.crop_size or self.image_size

    @property
    def network_size(self) -> tuple[int, int]:
        """(H, W) of the tensor the backbone reads: :attr:`input_size`, or the whole resize when
        the crop is cut from the feature maps (``crop_at="features"``)."""
        return self.image_size if self.crop_at == "features" else self.input_size

    @property
    def base_pooling(self) -> str:
        """The pooling that gives S_base: ``image_score`` itself, or ``base_score`` when the image
        score is StructCore's ``struct`` / ``hybrid``."""
        return self.base_score if self.image_score in ("struct", "hybrid") else self.image_score


def _check_known(names: Any) -> None:
    unknown = sorted(map(str, set(names) - set(FIELD_SPECS)))
    if unknown:
        also = f" (also unknown: {', '.join(unknown[1:])})" if len(unknown) > 1 else ""
        raise ConfigError(unknown[0], f"unknown config field{also}")


def _field_specs() -> types.MappingProxyType:
    hints = typing.get_type_hints(Config)
    specs = {}
    for f in dataclasses.fields(Config):
        kind, optional = value_kind(hints[f.name])
        specs[f.name] = FieldSpec(f.name, f.default, f.metadata["help"], kind, optional,
                                  f.metadata["choices"], f.metadata["interval"])
    return types.MappingProxyType(specs)


FIELD_SPECS: typing.Mapping[str, FieldSpec] = _field_specs()
DEFAULT_PRESET = "patchbank"
"""The preset of ``Detector()``, ``patchbank fit`` / ``evaluate`` / ``benchmark`` without ``--preset``
(chosen by the protocol in docs/default_preset.md); ``Config()`` itself holds the field defaults,
which are the behaviour of model files written before a field existed, and apart from
``threshold_rule`` the ``lmf-core`` preset."""
"""Field name -> :class:`FieldSpec`, in field order; the one source for validation and the CLI."""


PRESETS: dict[str, Config] = {
    "patchbank": Config(fusion="equal", kappa=1.0, projection_dim=None, sampler="greedy",
                        coreset_ratio=0.01, patch_border="zero", image_size=(320, 320),
                        crop_size=(288, 288), aspect="auto", crop_at="features", image_score="topk_mean",
                        context_taps=1, threshold_rule="conformal", whole_image_check=True,
                        focus_check=True),
    "lmf-core": Config(threshold_rule="conformal"),
    "patchcore": Config(fusion="equal", kappa=1.0, projection_dim=None, sampler="greedy",
                        coreset_ratio=0.10, threshold_rule="conformal"),
    "structcore": Config(backbone="dinov2_vitb14", image_size=(448, 448), crop_size=(392, 392),
                         patch_size=1, fusion="l2", kappa=1.0, projection_dim=512,
                         sampler="greedy", coreset_ratio=0.01, k=5, distance="squared",
                         knn_reduce="mean", image_score="hybrid", base_score="max",
                         threshold_rule="conformal"),
}
