"""Configuration: one frozen dataclass, presets named after the methods.

A :class:`Config` holds only choices, never learned state.  ``Config.preset(name, **overrides)``
returns a preset with any field replaced; unknown fields or values raise ``ValueError`` naming
the offending field.  Presets:

``lmf-core``   LMF-Core (Liu): VG-Fusion (kappa 0.5), Gaussian JL projection to d'=128,
               uniform RP-Coreset r=0.10, k=1 Euclidean nearest neighbour (Eq. 2), PatchCore's
               re-weighted max normalised by held-out normal statistics.
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
import json
from dataclasses import dataclass, field
from typing import Any

FUSIONS = ("equal", "vg", "l2")
SAMPLERS = ("uniform", "greedy", "none")
SEARCHES = ("auto", "exact", "faiss-flat", "faiss-ivf", "faiss-ivfpq")
DISTANCES = ("euclidean", "squared")
KNN_REDUCES = ("min", "mean")
BASE_SCORES = ("max", "reweighted_max", "topk_mean")
IMAGE_SCORES = BASE_SCORES + ("struct", "hybrid")
STRUCT_COMPONENTS = ("std", "topk_mean", "tv")
STRUCT_DISTANCES = ("mahalanobis", "l1_std", "chebyshev_std", "l1", "l2", "chebyshev", "cosine")
BANK_DTYPES = ("float32", "float16")


def _size_pair(value: Any, name: str) -> tuple[int, int] | None:
    """Accept 224, (h, w), [h, w] or "320x768" and return (h, w)."""
    if value is None:
        return None
    if isinstance(value, str):
        parts = value.lower().replace(",", "x").split("x")
        try:
            nums = [int(p) for p in parts if p.strip()]
        except ValueError:
            raise ValueError(f"{name}: expected N or HxW, got {value!r}") from None
        value = nums[0] if len(nums) == 1 else tuple(nums)
    if isinstance(value, int):
        value = (value, value)
    value = tuple(int(v) for v in value)
    if len(value) != 2 or min(value) <= 0:
        raise ValueError(f"{name}: expected a positive size N or HxW, got {value!r}")
    return value


@dataclass(frozen=True)
class Config:
    # --- images and backbone -------------------------------------------------------------
    backbone: str = "efficientnet_lite2"
    weights: str | None = None            # local weight file; None = packaged / downloaded
    layers: tuple[Any, ...] | None = None  # None = the backbone's default taps
    image_size: tuple[int, int] = (256, 256)  # resize (H, W)
    keep_aspect: bool = False             # True: scale to cover image_size, centre-crop the excess
    crop_size: tuple[int, int] | None = (224, 224)  # centre crop (H, W); None = no crop
    # --- patch features and fusion --------------------------------------------------------
    patch_size: int = 3                   # p x p local average aggregation (PatchCore)
    fusion: str = "vg"                    # "equal" | "vg" (LMF-Core Eq. 1) | "l2" (StructCore)
    kappa: float = 0.5                    # fraction of channels kept per layer (VG-Fusion)
    projection_dim: int | None = 128      # d' of the Gaussian JL projection; None = no projection
    # --- memory bank ----------------------------------------------------------------------
    sampler: str = "uniform"              # "uniform" | "greedy" | "none"
    coreset_ratio: float = 0.10           # r
    greedy_proxy_dim: int = 128           # projection used for greedy selection distances
    bank_dtype: str = "float32"
    # --- scoring --------------------------------------------------------------------------
    k: int = 1
    distance: str = "euclidean"           # "euclidean" | "squared"
    knn_reduce: str = "min"               # "min" (LMF-Core Eq. 2) | "mean" (StructCore Eq. 5)
    search: str = "auto"                  # "auto": faiss-ivf for banks >= ivf_min_bank if faiss is installed, else exact
    ivf_probe: int = 8                    # inverted lists visited per query (faiss-ivf)
    ivf_min_bank: int = 20000             # smallest bank that "auto" searches with IVF
    ivfpq_min_bank: int = 1000000         # smallest bank that "auto" searches with IVF-PQ (4-bit codes, exact re-rank)
    pq_refine: int = 8                    # faiss-ivfpq: candidates re-ranked exactly per neighbour wanted
    blur_sigma: float = 4.0
    image_score: str = "reweighted_max"   # "max" | "reweighted_max" | "topk_mean" | "struct" | "hybrid"
    base_score: str = "max"               # pooling S_base that "hybrid" adds the structural term to
    reweight_neighbors: int = 9           # b of PatchCore's re-weighting
    topk_ratio: float = 0.05              # share of patches averaged by "topk_mean"
    # --- StructCore structure-aware score (image_score "struct" / "hybrid") ----------------
    struct_components: tuple[str, ...] = STRUCT_COMPONENTS  # any subset of std, topk_mean, tv
    struct_distance: str = "mahalanobis"  # D_struct (Eq. 10) or a Table 6 alternative
    struct_topk_ratio: float = 0.01       # r of the descriptor's tail mass (Eq. 8)
    hybrid_lambda: float | None = None    # lambda of Eq. 12; None = lambda_auto (Eq. 11)
    local_density: bool = False           # LMF-Core's rejected calibration: distance / local bank radius
    density_neighbors: int = 5            # k of the local radius (mean distance to k nearest entries)
    # --- calibration ----------------------------------------------------------------------
    calibration_fraction: float = 0.10    # share of train images held out of the bank at scoring time
    calibration_max_images: int = 100
    target_fpr: float = 0.01              # threshold = (1 - fpr) quantile of held-out normal scores
    # --- run ------------------------------------------------------------------------------
    seed: int = 0
    batch_size: int = 16

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "image_size", _size_pair(self.image_size, "image_size"))
        set_(self, "crop_size", _size_pair(self.crop_size, "crop_size"))
        if self.layers is not None:
            set_(self, "layers", tuple(self.layers))
        comps = self.struct_components
        if isinstance(comps, str):
            comps = [c.strip() for c in comps.split(",") if c.strip()]
        comps = tuple(comps)
        set_(self, "struct_components", comps)
        bad = [c for c in comps if c not in STRUCT_COMPONENTS]
        if not comps or bad or len(set(comps)) != len(comps):
            raise ValueError(f"struct_components: expected a non-empty subset of "
                             f"{', '.join(STRUCT_COMPONENTS)} without repeats, got {comps!r}")
        choices = {"fusion": FUSIONS, "sampler": SAMPLERS, "search": SEARCHES,
                   "distance": DISTANCES, "knn_reduce": KNN_REDUCES,
                   "image_score": IMAGE_SCORES, "bank_dtype": BANK_DTYPES,
                   "base_score": BASE_SCORES, "struct_distance": STRUCT_DISTANCES}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}: {getattr(self, name)!r} is not one of {', '.join(allowed)}")
        if not 0 < self.kappa <= 1:
            raise ValueError(f"kappa: must be in (0, 1], got {self.kappa}")
        if not 0 < self.coreset_ratio <= 1:
            raise ValueError(f"coreset_ratio: must be in (0, 1], got {self.coreset_ratio}")
        if not 0 < self.calibration_fraction < 1:
            raise ValueError(f"calibration_fraction: must be in (0, 1), got {self.calibration_fraction}")
        if not 0 < self.topk_ratio <= 1:
            raise ValueError(f"topk_ratio: must be in (0, 1], got {self.topk_ratio}")
        if not 0 < self.struct_topk_ratio <= 1:
            raise ValueError(f"struct_topk_ratio: must be in (0, 1], got {self.struct_topk_ratio}")
        if self.hybrid_lambda is not None and not self.hybrid_lambda >= 0:
            raise ValueError(f"hybrid_lambda: must be >= 0 or None (auto), got {self.hybrid_lambda}")
        if not 0 < self.target_fpr < 1:
            raise ValueError(f"target_fpr: must be in (0, 1), got {self.target_fpr}")
        for name in ("k", "patch_size", "batch_size", "greedy_proxy_dim", "reweight_neighbors",
                     "calibration_max_images", "ivf_probe", "ivf_min_bank", "ivfpq_min_bank", "pq_refine", "density_neighbors"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.projection_dim is not None and self.projection_dim < 1:
            raise ValueError(f"projection_dim: must be >= 1 or None, got {self.projection_dim}")
        if self.blur_sigma < 0:
            raise ValueError(f"blur_sigma: must be >= 0, got {self.blur_sigma}")
        if self.crop_size is not None and (self.crop_size[0] > self.image_size[0]
                                           or self.crop_size[1] > self.image_size[1]):
            raise ValueError(f"crop_size {self.crop_size} is larger than image_size {self.image_size}")

    # --- construction -----------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "Config":
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        return PRESETS[name].replace(**overrides)

    def replace(self, **overrides: Any) -> "Config":
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown config field(s): {', '.join(unknown)}")
        return dataclasses.replace(self, **overrides)

    # --- (de)serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for key in ("image_size", "crop_size", "layers", "struct_components"):
            if d[key] is not None:
                d[key] = list(d[key])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Config":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown config field(s): {', '.join(unknown)}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @property
    def input_size(self) -> tuple[int, int]:
        """(H, W) of the tensor the backbone sees: the crop if any, else the resize."""
        return self.crop_size or self.image_size


PRESETS: dict[str, Config] = {
    "lmf-core": Config(),
    "patchcore": Config(fusion="equal", kappa=1.0, projection_dim=None, sampler="greedy",
                        coreset_ratio=0.10),
    "structcore": Config(backbone="dinov2_vitb14", image_size=(448, 448), crop_size=(392, 392),
                         patch_size=1, fusion="l2", kappa=1.0, projection_dim=512,
                         sampler="greedy", coreset_ratio=0.01, k=5, distance="squared",
                         knn_reduce="mean", image_score="hybrid", base_score="max"),
}
