"""The Detector: fit on normal images, predict image scores, decisions and anomaly maps.

scikit-learn style: the constructor stores configuration only; :meth:`Detector.fit` learns the
state (attributes ending in ``_``); :meth:`Detector.predict` reads it.

Fitting streams the training images once (LMF-Core Algorithm 1, setup):

1. backbone -> p x p aggregated, aligned layer maps -> per-layer patch rows;
2. per-channel moments are accumulated for VG-Fusion (all patches);
3. patches are kept for the bank on the fly: a streaming sampler (uniform RP-Coreset, none)
   draws its row indices up front, so only ~r of the raw rows are ever held; the greedy
   sampler must see every row and keeps them all;
4. after the pass: fusion statistics -> fused features -> projection -> (greedy selection) -> bank,
   one ``RAW_CHUNK_ROWS`` chunk of raw rows at a time (each freed once embedded).  The search index holds
   the only copy of the bank (``bank_`` reads it back); a large streamed IVF bank goes into the
   index chunk by chunk, so it never exists twice.

Calibration (normal-score statistics, threshold).  Scoring training images against a bank that
contains their own patches would give near-zero distances and a badly biased mean/std.  We hold
out a seeded subset of the training images (``calibration_fraction``, at least 5 when possible,
at most ``calibration_max_images``): each is scored against the bank *without any entry taken
from a held-out image* (every bank row remembers its source image).  The held-out images' rows are
then kept in the final bank, so no normal data is wasted; the statistics therefore come from a
bank about 10% smaller than the deployed one, a slightly conservative (higher-score) estimate.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from patchbank import __version__
from patchbank.pipeline.anomaly_map import anomaly_maps
from patchbank.config import Config
from patchbank.errors import PatchbankError
from patchbank.backbones import Backbone, create_backbone
from patchbank.pipeline.features import FeatureExtractor
from patchbank.runtime.devices import resolve_device
from patchbank.pipeline.fusion import Moments, make_fusion
from patchbank.io.images import ImageStream, as_items
from patchbank.runtime.malloc import trim_malloc
from patchbank.io.model_file import FORMAT_VERSION, load_model, save_model
from patchbank.pipeline.projection import GaussianProjection
from patchbank.sampling import StreamingSampler, make_sampler
from patchbank.pipeline.scoring import NormalStats, patch_scores, reweighted_max, topk_mean
from patchbank.pipeline.routing import routing_embedding
from patchbank.search import (ivf_nlist, ivf_train_ids, make_search, make_search_from_chunks,
                              resolve_search)
from patchbank.pipeline.structure import COMPONENTS, StructScorer, bank_local_radius, descriptor


# fit keeps raw rows in chunks of this many rows, each freed (and trimmed from the C heap) once it
# is embedded; 16,384 rather than 65,536: the embedding temporaries of one chunk set the peak while
# the bank is built (bench_fit_memory.py, 3,000 images: 280-324 vs 361-412 MB above baseline)
RAW_CHUNK_ROWS = 16384


def _alloc_chunks(rows: int, widths: list[int], like: torch.Tensor) -> list[list[torch.Tensor]]:
    """Empty per-layer buffers for ``rows`` raw rows, in chunks of ``RAW_CHUNK_ROWS`` rows."""
    return [[torch.empty(min(RAW_CHUNK_ROWS, rows - start), w, dtype=like.dtype, device=like.device)
             for w in widths] for start in range(0, rows, RAW_CHUNK_ROWS)]


def _write_rows(chunks: list[list[torch.Tensor]], start: int, layers: list[torch.Tensor],
                local: torch.Tensor) -> None:
    """Write rows ``local`` of each layer to chunked buffers from global row ``start`` on."""
    m, done = local.numel(), 0
    while done < m:
        ci, off = divmod(start + done, RAW_CHUNK_ROWS)
        take = min(m - done, chunks[ci][0].shape[0] - off)
        sel = local[done:done + take]
        for buf, layer in zip(chunks[ci], layers):
            torch.index_select(layer, 0, sel, out=buf[off:off + take])
        done += take


@dataclass
class Prediction:
    """The result for one image."""

    path: str | None
    score: float              # raw image score a_hat (the config's image_score)
    normalized_score: float   # a = (a_hat - mu) / sigma
    is_anomalous: bool        # a > threshold
    anomaly_map: np.ndarray   # float32 [H, W] at config.input_size
    base_score: float = math.nan     # the pooled score S_base (image_score, or base_score for struct/hybrid)
    struct_score: float = math.nan   # D_struct of the map (StructCore Eq. 10)
    hybrid_score: float = math.nan   # S_base + lambda * D_struct (Eq. 12)
    descriptor: np.ndarray | None = None  # phi(S) = [std, top-1% mean, TV] (Eq. 7)
    category: str | None = None      # set by a multi-category model


class Detector:
    """Memory-bank anomaly detector; LMF-Core, PatchCore and StructCore are configurations of it."""

    def __init__(self, config: Config | None = None, *, device: str | torch.device = "cpu",
                 progress: bool = True, backbone: Backbone | None = None):
        self.config = config if config is not None else Config()
        self.device = resolve_device(device)
        self.progress = progress
        self._shared_backbone = backbone   # a loaded backbone to share (same name/weights/layers/device)
        self._extractor: FeatureExtractor | None = None

    @classmethod
    def from_preset(cls, name: str, *, device: str | torch.device = "cpu", progress: bool = True,
                    **overrides: Any) -> "Detector":
        try:
            config = Config.preset(name, **overrides)
        except ValueError as exc:
            raise PatchbankError(str(exc)) from None
        return cls(config, device=device, progress=progress)

    # ------------------------------------------------------------------ feature pipeline
    @property
    def backbone(self) -> Backbone:
        """The frozen backbone (loaded on first use, or the one given to the constructor)."""
        return self.extractor.backbone

    @property
    def extractor(self) -> FeatureExtractor:
        """Images -> per-layer patch rows (:class:`~patchbank.pipeline.features.FeatureExtractor`)."""
        if self._extractor is None:
            cfg = self.config
            bb = self._shared_backbone
            if bb is None:
                bb = create_backbone(cfg.backbone, cfg.weights, cfg.layers, self.device)
            expected = getattr(self, "backbone_sha256_", None)
            if expected is not None and bb.weights_sha256 != expected:
                raise PatchbankError(
                    f"backbone weights differ from the ones this model was fit with "
                    f"(sha256 {bb.weights_sha256} != {expected})")
            self._extractor = FeatureExtractor(bb, cfg.patch_size, self.device)
        return self._extractor

    def stream(self, items: list, batch_size: int | None = None) -> ImageStream:
        """Batches ``(x [B, 3, H, W], names)`` of ``items``, read and preprocessed for the backbone."""
        bb = self.backbone
        return ImageStream(items, self.config, bb.mean, bb.std, batch_size,
                           pin=self.device.type == "cuda")

    def embed(self, layers: list[torch.Tensor]) -> torch.Tensor:
        """Fusion then projection: per-layer rows -> bank-space rows."""
        f = self.fusion_.transform(layers)
        return self.projection_.transform(f) if self.projection_ is not None else f

    def _embedded_chunks(self, chunks: list[list[torch.Tensor]]):
        """:meth:`_embed` of each raw chunk in turn; each raw chunk is dropped from ``chunks``
        (and so freed) when its embedding is handed out."""
        while chunks:
            raw = chunks.pop(0)
            out = self.embed(raw)
            del raw
            trim_malloc()
            yield out

    def _embed_all(self, chunks: list[list[torch.Tensor]], rows: int) -> torch.Tensor:
        """All chunks embedded into one preallocated tensor, raw chunks freed on the way: at no
        point is more than the raw rows plus the bank in memory."""
        out, start = None, 0
        for emb in self._embedded_chunks(chunks):
            if out is None:
                out = torch.empty(rows, emb.shape[1], dtype=emb.dtype, device=emb.device)
            out[start:start + emb.shape[0]] = emb
            start += emb.shape[0]
        return out

    def _embed_sample(self, chunks: list[list[torch.Tensor]], ids: torch.Tensor) -> torch.Tensor:
        """Embeddings of the raw rows ``ids`` (sorted global row numbers) of chunked buffers."""
        out, lo = [], 0
        for chunk in chunks:
            hi = lo + chunk[0].shape[0]
            sel = ids[(ids >= lo) & (ids < hi)] - lo
            if sel.numel():
                out.append(self.embed([layer[sel.to(layer.device)] for layer in chunk]))
            lo = hi
        return torch.cat(out)

    # ------------------------------------------------------------------ fit
    def _calibration_ids(self, n: int) -> np.ndarray:
        cfg = self.config
        n_cal = max(math.ceil(cfg.calibration_fraction * n), min(5, n - 1))
        n_cal = min(n_cal, cfg.calibration_max_images, n - 1)
        rng = np.random.default_rng(cfg.seed + 1)
        return np.sort(rng.choice(n, size=n_cal, replace=False))

    @torch.inference_mode()
    def fit(self, images: Any, routing_sample: int = 0) -> "Detector":
        """Build the memory bank and calibration from normal images (a folder or a list).

        ``routing_sample`` > 0 also keeps a seeded uniform sample of that many routing
        embeddings (:func:`patchbank.pipeline.routing.routing_embedding`) in ``routing_sample_``, for a
        multi-category model's routing bank (read in the same pass over the images).
        """
        cfg = self.config
        items = as_items(images)
        n = len(items)
        if n < 2:
            raise PatchbankError(f"need at least 2 training images, got {n}")
        t0 = time.perf_counter()
        fusion = make_fusion(cfg)
        moments = Moments() if fusion.needs_moments else None
        sampler = make_sampler(cfg, progress=self.progress)
        # samplers that choose rows without looking at them (uniform, none) expose indices(n)
        streams = isinstance(sampler, StreamingSampler)
        cal_ids = self._calibration_ids(n)
        is_cal = np.zeros(n, dtype=bool)
        is_cal[cal_ids] = True

        # raw per-layer rows kept for the bank, written into buffers allocated once (their row
        # count is known after the first batch), and the source image of each row
        kept: list[torch.Tensor] | None = None
        kept_src: torch.Tensor | None = None
        n_kept = 0
        cal_rows: list[torch.Tensor] | None = None    # held-out images' raw rows, per layer
        n_cal = 0
        keep_idx = None
        route_idx, route_rows = None, []
        n_patches = 0
        bar = tqdm(total=n, desc="fit: features", unit="img", disable=not self.progress)
        offset = 0
        for x, _ in self.stream(items):
            layers, grid = self.extractor(x)
            b = x.shape[0]
            n_patches = grid[0] * grid[1]
            if moments is not None:
                moments.update(layers)
            if kept is None:
                if streams:
                    keep_idx = sampler.indices(n * n_patches).to(self.device)
                rows = keep_idx.numel() if streams else n * n_patches
                kept = _alloc_chunks(rows, [layer.shape[1] for layer in layers], layers[0])
                kept_src = torch.empty(rows, dtype=torch.long, device=self.device)
                # one buffer per layer, allocated once: no small blocks left between the batches'
                # temporaries to fragment the C heap
                cal_rows = [layer.new_empty(len(cal_ids) * n_patches, layer.shape[1]) for layer in layers]
            if streams:
                lo, hi = offset * n_patches, (offset + b) * n_patches
                local = keep_idx[(keep_idx >= lo) & (keep_idx < hi)] - lo
            else:
                local = torch.arange(b * n_patches, device=self.device)
            if routing_sample > 0:
                if route_idx is None:
                    g = torch.Generator().manual_seed(cfg.seed + 2)
                    total = n * n_patches
                    route_idx = torch.randperm(total, generator=g)[:routing_sample].sort().values
                    route_idx = route_idx.to(self.device)
                lo, hi = offset * n_patches, (offset + b) * n_patches
                pick = route_idx[(route_idx >= lo) & (route_idx < hi)] - lo
                route_rows.append(routing_embedding([layer[pick] for layer in layers]).cpu())
            m = local.numel()
            _write_rows(kept, n_kept, layers, local)
            kept_src[n_kept:n_kept + m] = local // n_patches + offset
            n_kept += m
            for j in np.nonzero(is_cal[offset:offset + b])[0]:
                for buf, layer in zip(cal_rows, layers):
                    buf[n_cal * n_patches:(n_cal + 1) * n_patches] = layer[j * n_patches:(j + 1) * n_patches]
                n_cal += 1
            offset += b
            bar.update(b)
        bar.close()

        t_features = time.perf_counter()
        if routing_sample > 0:
            self.routing_sample_ = torch.cat(route_rows)
        self.fusion_ = fusion.fit(moments)
        self.projection_ = None
        if cfg.projection_dim is not None:
            fused_dim = self.fusion_.transform([buf[:1] for buf in kept[0]]).shape[1]
            self.projection_ = GaussianProjection(cfg.projection_dim, cfg.seed).fit(fused_dim)
        self.grid_ = grid
        self.n_train_images_ = n
        self.radius_ = None
        source = kept_src
        is_cal_t = torch.from_numpy(is_cal).to(self.device)

        def held_out_rows(src: torch.Tensor) -> torch.Tensor:
            """Bank rows taken from a held-out calibration image: calibration searches the one
            index with them masked (see module docstring), no second copy of the bank."""
            held = is_cal_t[src]
            if bool(held.all()):
                raise PatchbankError("too few training images: the bank has no entry outside the "
                                     "calibration images; add images or raise coreset_ratio")
            return held

        sample = None
        if streams and not cfg.local_density and resolve_search(cfg, n_kept, self.device) == "faiss-ivf":
            sample = ivf_train_ids(n_kept, ivf_nlist(n_kept), cfg.seed)
        if sample is not None:
            # large streamed bank: the IVF lists are trained on their sample of the rows (the
            # same rows an index rebuilt from the saved bank uses), then the raw chunks are
            # embedded and added to the index one at a time and freed: the bank only ever
            # exists inside the index
            held_out = held_out_rows(source)
            train = self._embed_sample(kept, sample)
            dim = train.shape[1]
            t_bank = time.perf_counter()
            self.search_kind_ = "faiss-ivf"
            self.search_ = make_search_from_chunks(self._embedded_chunks(kept), n_kept, dim,
                                                   train, cfg)
            del train
        else:
            # fusion + projection in row chunks straight into the bank, raw chunks freed on the way
            bank = self._embed_all(kept, n_kept)
            if not streams:
                sel = sampler.run(bank)
                bank, source = bank[sel], source[sel]
            if cfg.local_density:
                self.radius_ = bank_local_radius(bank, cfg.density_neighbors)
            held_out = held_out_rows(source)
            t_bank = time.perf_counter()
            self.search_kind_ = resolve_search(cfg, bank.shape[0], bank.device)
            self.search_ = make_search(bank, cfg, self.search_kind_)      # holds the only copy of the bank
            del bank
        del kept
        sub_search = self.search_.subset(~held_out)
        t_index = time.perf_counter()
        base, phi = [], []
        for start in range(0, n_cal, cfg.batch_size):
            m = min(cfg.batch_size, n_cal - start)
            rows = slice(start * n_patches, (start + m) * n_patches)
            emb = self.embed([buf[rows] for buf in cal_rows])
            b_score, scores = self._score_batch(emb.view(m, n_patches, -1), sub_search, self.radius_)
            base.append(b_score)
            phi.append(self._maps(scores)[1])
        self._calibrate(np.concatenate(base), np.concatenate(phi))
        self.backbone_sha256_ = self.backbone.weights_sha256
        self.fit_seconds_ = time.perf_counter() - t0
        # the fit's time split: streaming pass (read + forward + moments + kept rows), bank
        # (fusion, projection, sampler; for a large streamed IVF bank only the training sample:
        # its chunks are embedded while they are added), search index, calibration
        self.fit_timings_ = {"features": t_features - t0, "bank": t_bank - t_features,
                             "index": t_index - t_bank, "calibration": time.perf_counter() - t_index}
        return self

    @property
    def bank_(self) -> torch.Tensor:
        """The memory bank [entries, dim], float32.  The search index holds the only copy (for
        exact and IVF-Flat search the vectors are stored exactly): for FAISS this reads a fresh
        copy out of the index on every access, so the scoring path never uses it (it reads the
        few rows it needs through ``search_.rows``)."""
        return self.search_.all_rows().to(self.device)

    # ------------------------------------------------------------------ scoring
    @property
    def base_pooling(self) -> str:
        """The pooling that gives S_base: image_score itself, or base_score for struct/hybrid."""
        cfg = self.config
        return cfg.base_score if cfg.image_score in ("struct", "hybrid") else cfg.image_score

    def _score_batch(self, emb: torch.Tensor, search, radius=None):
        """[B, P, d] embeddings -> (base scores [B] float64 numpy, patch scores [B, P])."""
        cfg = self.config
        b, p, d = emb.shape
        sq, idx = search.search(emb.reshape(-1, d), cfg.k)
        scores = patch_scores(sq, cfg.distance, cfg.knn_reduce)
        if radius is not None:   # LMF-Core Sec. 6.2's rejected calibration (off by default)
            scores = scores / (radius[idx[:, 0]] + 1e-12)
        scores = scores.view(b, p)
        pooling = self.base_pooling
        if pooling == "reweighted_max":
            image = reweighted_max(scores, emb, idx[:, 0].view(b, p), search,
                                   min(cfg.reweight_neighbors, search.shape[0]))
        elif pooling == "topk_mean":
            image = topk_mean(scores, cfg.topk_ratio)
        else:
            image = scores.max(1).values
        return image.double().cpu().numpy(), scores

    def _maps(self, scores: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
        """[B, P] patch scores -> (anomaly maps [B, H, W], descriptors [B, 3] float64).

        The maps are the localisation output; the descriptor phi(S) (StructCore Eq. 7) is
        computed on exactly these maps and never changes them."""
        cfg = self.config
        maps = anomaly_maps(scores.view(scores.shape[0], *self.grid_), cfg.input_size, cfg.blur_sigma)
        return maps, descriptor(maps, COMPONENTS, cfg.struct_topk_ratio).cpu().numpy()

    def _calibrate(self, base: np.ndarray, phi: np.ndarray) -> None:
        """Fit the structure scorer and the normal-score statistics on held-out train-good
        images (base scores and descriptors scored without self-matching)."""
        cfg = self.config
        self.calibration_base_scores_ = np.asarray(base, dtype=np.float64)
        self.calibration_descriptors_ = np.asarray(phi, dtype=np.float64).reshape(-1, len(COMPONENTS))
        self.struct_ = StructScorer(cfg.struct_components, cfg.struct_distance,
                                    cfg.hybrid_lambda).fit(self.calibration_descriptors_,
                                                           self.calibration_base_scores_)
        self.calibration_scores_ = self._final_scores(self.calibration_base_scores_,
                                                      self.calibration_descriptors_)[0]
        self.stats_ = NormalStats().fit(self.calibration_scores_, cfg.target_fpr)
        self.threshold_ = self.stats_.threshold_

    def _final_scores(self, base: np.ndarray, phi: np.ndarray):
        """(final image score per config.image_score, D_struct, hybrid), all float64 [B]."""
        d_struct = self.struct_.struct(phi).numpy()
        hyb = base + self.struct_.lambda_ * d_struct
        final = {"struct": d_struct, "hybrid": hyb}.get(self.config.image_score, base)
        return final, d_struct, hyb

    def _check_fitted(self) -> None:
        if not hasattr(self, "search_"):
            raise PatchbankError("this detector is not fitted: call fit() or Detector.load() first")

    @torch.inference_mode()
    def predict(self, images: Any, batch_size: int | None = None) -> list[Prediction]:
        """Score images: raw and normalised image score, decision, and anomaly map each."""
        self._check_fitted()
        cfg = self.config
        items = as_items(images)
        out: list[Prediction] = []
        timings = {"read": 0.0, "extract": 0.0, "search": 0.0, "post": 0.0}
        bar = tqdm(total=len(items), desc="predict", unit="img", disable=not self.progress)
        stream = iter(self.stream(items, batch_size))
        while True:
            t = time.perf_counter()
            try:
                x, names = next(stream)
            except StopIteration:
                break
            t1 = time.perf_counter()
            layers, grid = self.extractor(x)
            preds, (t2, t3) = self._predict_layers(layers, x.shape[0], names)
            out.extend(preds)
            t4 = time.perf_counter()
            for key, dt in zip(timings, (t1 - t, t2 - t1, t3 - t2, t4 - t3)):
                timings[key] += dt
            bar.update(x.shape[0])
        bar.close()
        self.last_timings_ = timings
        return out

    def _predict_layers(self, layers: list[torch.Tensor], b: int, names,
                        category: str | None = None) -> tuple[list[Prediction], tuple[float, float]]:
        """Per-layer patch rows of ``b`` images -> their predictions, and the clock after the
        embedding and after the search (for the timing split)."""
        emb = self.embed(layers)
        t2 = time.perf_counter()
        base, scores = self._score_batch(emb.view(b, -1, emb.shape[1]), self.search_, self.radius_)
        t3 = time.perf_counter()
        maps, phi = self._maps(scores)
        return self._predictions(names, base, maps, phi, category), (t2, t3)

    def _predictions(self, names, base, maps, phi, category: str | None = None) -> list[Prediction]:
        final, d_struct, hyb = self._final_scores(base, phi)
        norm = self.stats_.normalize(final)
        maps = maps.cpu().numpy()
        return [Prediction(name, float(final[i]), float(norm[i]), bool(norm[i] > self.threshold_),
                           maps[i], float(base[i]), float(d_struct[i]), float(hyb[i]), phi[i],
                           category)
                for i, name in enumerate(names)]

    # ------------------------------------------------------------------ persistence
    def _state_tensors(self) -> dict[str, torch.Tensor]:
        dtype = torch.float16 if self.config.bank_dtype == "float16" else torch.float32
        tensors = {"bank": self.bank_.to(dtype),
                   "calibration_base_scores": torch.from_numpy(self.calibration_base_scores_),
                   "calibration_descriptors": torch.from_numpy(self.calibration_descriptors_)}
        if self.radius_ is not None:
            tensors["bank_radius"] = self.radius_.float().cpu()
        tensors.update(self.fusion_.state())
        if self.projection_ is not None:
            tensors.update(self.projection_.state())
        return tensors

    def info(self) -> dict[str, Any]:
        """A JSON-able summary: configuration, bank size, calibration."""
        self._check_fitted()
        elem = 2 if self.config.bank_dtype == "float16" else 4
        entries, dim = self.search_.shape
        return {
            "patchbank_version": __version__,
            "format_version": FORMAT_VERSION,
            "config": self.config.to_dict(),
            "bank_entries": int(entries),
            "bank_dim": int(dim),
            "bank_bytes": int(entries * dim * elem),
            "search": self.search_kind_,
            "patch_grid": list(self.grid_),
            "n_train_images": self.n_train_images_,
            "n_calibration_images": int(self.calibration_scores_.size),
            "structure_lambda": self.struct_.lambda_,
            "score_mean": self.stats_.mean_,
            "score_std": self.stats_.std_,
            "threshold": self.threshold_,
            "target_fpr": self.config.target_fpr,
            "backbone_sha256": self.backbone_sha256_,
        }

    def save(self, path: str | Path, overwrite: bool = False) -> int:
        """Write one ``.patchbank`` file (safetensors + JSON header); returns its size in bytes."""
        self._check_fitted()
        meta = self.info()
        return save_model(path, self._state_tensors(), meta, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | Path, *, device: str | torch.device = "cpu", progress: bool = True,
             weights: str | None = None) -> "Detector":
        """Load a model file; ``weights`` points at the backbone weights file if it moved."""
        tensors, meta = load_model(path)
        if meta.get("kind") == "multi":
            names = ", ".join(meta.get("category_order", []))
            raise PatchbankError(f"{path} is a multi-category model ({names}); load it with "
                                 f"patchbank.multi.MultiDetector.load")
        return cls.from_state(tensors, meta, str(path), device=device, progress=progress,
                               weights=weights)

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any], where: str, *,
                    device: str | torch.device = "cpu", progress: bool = True,
                    weights: str | None = None, backbone: Backbone | None = None) -> "Detector":
        """Rebuild a fitted detector from its saved tensors and :meth:`info` metadata."""
        try:
            config = Config.from_dict(meta["config"])
            if weights is not None:
                config = config.replace(weights=weights)
            det = cls(config, device=device, progress=progress, backbone=backbone)
            det.fusion_ = make_fusion(config).load_state(tensors)
            det.projection_ = None
            if "projection.matrix" in tensors:
                det.projection_ = GaussianProjection(config.projection_dim, config.seed).load_state(tensors)
            bank = tensors["bank"].float().to(det.device)
            base = tensors["calibration_base_scores"].double().numpy()
            phi = tensors["calibration_descriptors"].double().numpy()
            det.radius_ = tensors["bank_radius"].float().to(det.device) if config.local_density else None
            det.grid_ = tuple(meta["patch_grid"])
            det.n_train_images_ = meta["n_train_images"]
            det.backbone_sha256_ = meta["backbone_sha256"]
        except (KeyError, TypeError, ValueError) as exc:
            raise PatchbankError(f"{where} is missing or has invalid model state ({exc})") from None
        det._calibrate(base, phi)
        det.search_kind_ = meta.get("search") or resolve_search(config, bank.shape[0], det.device)
        det.search_ = make_search(bank, config, det.search_kind_)
        return det
