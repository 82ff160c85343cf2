"""Building the memory bank from a stream of images (LMF-Core Algorithm 1, set-up).

One pass over the training images (:func:`stream_features`):

1. backbone -> p x p aggregated, aligned layer maps -> per-layer patch rows;
2. per-channel moments are accumulated for the fusion's statistics (all patches);
3. rows are kept for the bank on the fly: a :class:`~patchbank.sampling.StreamingSampler`
   (uniform RP-Coreset, keep-all) draws its row ids up front, so only ~r of the raw rows are
   ever held; any other sampler (greedy) must see every row and all are kept;
4. the calibration images' raw rows (every image's, within the calibration budget:
   :func:`~patchbank.pipeline.calibration.calibration_images`) and, for a multi-category model,
   a seeded sample of routing embeddings are kept beside them, and every image's blurriness
   (:mod:`patchbank.pipeline.focus`).  A sampler that must see every
   row (greedy) needs no second copy: calibration reads the embedded rows :func:`build_bank`
   holds for the selection.

Then :func:`build_bank`: raw rows -> fused, projected rows (-> sampler selection) -> the search
index, one ``RAW_CHUNK_ROWS`` chunk of raw rows at a time, each freed once embedded.  The search
index holds the only copy of the bank; a large streamed IVF bank goes into the index chunk by
chunk, so it never exists twice.  Every bank row remembers its source image, so calibration can
mask out the rows of the held-out images.

With context taps (``Config.context_taps``) a row holds the map's columns first, then the
context taps' columns: the sampler chooses on the map's columns, the map's search covers them
(any kind), and an exact search over every column (``Bank.context``) serves the image score.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from patchbank.errors import PatchbankError
from patchbank.linalg import all_finite
from patchbank.pipeline.calibration import CalibrationRows
from patchbank.pipeline.focus import blurriness
from patchbank.pipeline.fusion import Moments
from patchbank.pipeline.routing import routing_embedding
from patchbank.pipeline.structure import bank_local_radius
from patchbank.runtime.clock import StepClock
from patchbank.runtime.malloc import trim_malloc
from patchbank.sampling import Sampler, StreamingSampler
from patchbank.search import (Search, ivf_nlist, ivf_train_ids, largest_group, make_search,
                              make_search_from_chunks, resolve_search)

# raw rows are kept in chunks of this many rows, each freed (and trimmed from the C heap) once it
# is embedded; the chunk's embedding temporaries set the fit's peak memory while the bank is
# built (docs/performance.md, "Fit memory")
RAW_CHUNK_ROWS = 16384

Embed = Callable[[list[torch.Tensor]], torch.Tensor]   # per-layer raw rows -> bank-space rows


class RawRows:
    """Raw per-layer rows kept for the bank, in buffers allocated once (``RAW_CHUNK_ROWS`` rows a
    chunk), and the source image of each row (``source``)."""

    def __init__(self, rows: int, widths: list[int], like: torch.Tensor):
        self.chunks = [[torch.empty(min(RAW_CHUNK_ROWS, rows - start), w, dtype=like.dtype,
                                    device=like.device) for w in widths]
                       for start in range(0, rows, RAW_CHUNK_ROWS)]
        self.source = torch.empty(rows, dtype=torch.long, device=like.device)
        self.count = 0

    def append(self, layers: list[torch.Tensor], local: torch.Tensor, first_image: int,
               n_patches: int) -> None:
        """Keep rows ``local`` of a batch's per-layer rows (its first image is ``first_image``)."""
        m, done, start = local.numel(), 0, self.count
        while done < m:
            ci, off = divmod(start + done, RAW_CHUNK_ROWS)
            take = min(m - done, self.chunks[ci][0].shape[0] - off)
            sel = local[done:done + take]
            for buf, layer in zip(self.chunks[ci], layers):
                torch.index_select(layer, 0, sel, out=buf[off:off + take])
            done += take
        self.source[start:start + m] = local // n_patches + first_image
        self.count += m

    def sample_row(self) -> list[torch.Tensor]:
        """One raw row per layer (to learn the fused width)."""
        return [buf[:1] for buf in self.chunks[0]]

    def embedded_chunks(self, embed: Embed) -> Iterator[torch.Tensor]:
        """``embed`` of each chunk in turn; each raw chunk is dropped (and so freed) when its
        embedding is handed out."""
        while self.chunks:
            raw = self.chunks.pop(0)
            out = embed(raw)
            del raw
            trim_malloc()
            if not all_finite(out):
                raise PatchbankError("the training images gave non-finite (NaN or inf) features: "
                                     "check the images and the backbone weights")
            yield out

    def embed_all(self, embed: Embed) -> torch.Tensor:
        """Every chunk embedded into one preallocated tensor, raw chunks freed on the way: at no
        point is more than the raw rows plus the bank in memory."""
        out, start = None, 0
        for emb in self.embedded_chunks(embed):
            if out is None:
                out = torch.empty(self.count, emb.shape[1], dtype=emb.dtype, device=emb.device)
            out[start:start + emb.shape[0]] = emb
            start += emb.shape[0]
        return out

    def embed_rows(self, embed: Embed, ids: torch.Tensor) -> torch.Tensor:
        """Embeddings of the rows ``ids`` (sorted row numbers)."""
        out, lo = [], 0
        for chunk in self.chunks:
            hi = lo + chunk[0].shape[0]
            sel = ids[(ids >= lo) & (ids < hi)] - lo
            if sel.numel():
                out.append(embed([layer[sel.to(layer.device)] for layer in chunk]))
            lo = hi
        return torch.cat(out)


@dataclass
class StreamedFeatures:
    """What one pass over the training images keeps (see the module docstring)."""

    raw: RawRows
    calibration: CalibrationRows           # the calibration images and their rows
    moments: Moments | None
    grid: tuple[int, int]
    routing_rows: torch.Tensor | None      # [routing_sample, sum C_l] routing embeddings
    blurriness: np.ndarray                 # [n_images] float64, every image's (the focus check)


def _in_batch(ids: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """The sorted global ``ids`` that fall in [lo, hi), as batch-local row numbers."""
    return ids[(ids >= lo) & (ids < hi)] - lo


def routing_ids(total: int, count: int, seed: int) -> torch.Tensor:
    """Sorted ids of ``count`` rows out of ``total`` for the routing sample (seeded)."""
    g = torch.Generator().manual_seed(seed + 2)
    return torch.randperm(total, generator=g)[:count].sort().values


@torch.inference_mode()
def stream_features(batches: Iterable, n_images: int, extractor, sampler: Sampler,
                    calibration_images: Callable[[int], np.ndarray], with_moments: bool,
                    routing_sample: int, seed: int, progress: bool) -> StreamedFeatures:
    """The one pass over ``batches`` (``(x, names)`` of ``n_images`` images, in order).

    ``calibration_images(image_bytes)`` names the images whose rows are kept for calibration,
    given the raw bytes one image's rows take (0 when the sampler keeps every row anyway: the
    bank builder then hands calibration the embedded rows)."""
    moments = Moments() if with_moments else None
    raw = cal = keep = route = None
    route_rows, blur, n_cal, offset = [], [], 0, 0
    bar = tqdm(total=n_images, desc="fit: features", unit="img", disable=not progress)
    for x, _ in batches:
        layers, grid = extractor(x)
        b, n_patches = x.shape[0], grid[0] * grid[1]
        blur.append(blurriness(x).cpu().numpy())
        if moments is not None:
            moments.update(layers)
        if raw is None:   # sizes are known from the first batch: allocate every buffer once
            if isinstance(sampler, StreamingSampler):
                keep = sampler.indices(n_images * n_patches).to(layers[0].device)
            rows = keep.numel() if keep is not None else n_images * n_patches
            raw = RawRows(rows, [layer.shape[1] for layer in layers], layers[0])
            image_bytes = n_patches * sum(layer.shape[1] for layer in layers) * layers[0].element_size()
            cal = _calibration_buffers(calibration_images(image_bytes if keep is not None else 0),
                                       n_images, n_patches, layers, keep is not None)
            if routing_sample > 0:
                route = routing_ids(n_images * n_patches, routing_sample, seed).to(layers[0].device)
        lo, hi = offset * n_patches, (offset + b) * n_patches
        local = _in_batch(keep, lo, hi) if keep is not None else torch.arange(b * n_patches, device=layers[0].device)
        if route is not None:
            route_rows.append(routing_embedding([layer[_in_batch(route, lo, hi)] for layer in layers]).cpu())
        raw.append(layers, local, offset, n_patches)
        if cal.raw is not None:
            for j in cal.images[(cal.images >= offset) & (cal.images < offset + b)] - offset:
                for buf, layer in zip(cal.raw, layers):
                    buf[n_cal * n_patches:(n_cal + 1) * n_patches] = layer[j * n_patches:(j + 1) * n_patches]
                n_cal += 1
        offset += b
        bar.update(b)
    bar.close()
    return StreamedFeatures(raw, cal, moments, grid, torch.cat(route_rows) if route_rows else None,
                            np.concatenate(blur) if blur else np.zeros(0))


def _calibration_buffers(images: np.ndarray, n_images: int, n_patches: int,
                         layers: list[torch.Tensor], keep_raw: bool) -> CalibrationRows:
    """The calibration images' rows, one buffer per layer allocated once (``keep_raw``), or none:
    every image then, its rows embedded by :func:`build_bank`."""
    if not keep_raw:
        return CalibrationRows(np.arange(n_images), n_patches)
    bufs = [layer.new_empty(len(images) * n_patches, layer.shape[1]) for layer in layers]
    return CalibrationRows(images, n_patches, bufs)


@dataclass
class Bank:
    """The built bank: its search (the only copy of the rows), the search kind it resolved to,
    the local radius of each entry (local-density calibration only), the training image each
    entry comes from (``source`` [entries]) and, with context taps, the exact search over every
    column (``context``; ``search`` then covers the map's columns)."""

    search: Search
    kind: str
    radius: torch.Tensor | None
    source: torch.Tensor
    context: Search | None = None


def _check_outside_images(source: torch.Tensor, k: int) -> None:
    """Every training image must leave at least ``k`` bank entries from the other images (each
    is scored without its own entries)."""
    outside = source.numel() - largest_group(source)
    if outside == 0:
        raise PatchbankError("too few training images: the bank has entries from one image only; "
                             "add images or raise coreset_ratio")
    if k > outside:
        raise PatchbankError(f"k = {k} nearest neighbours, but the bank has only {outside} entries "
                             f"outside the training image with the most entries; use a smaller k "
                             f"or more images")


@torch.inference_mode()
def build_bank(raw: RawRows, sampler: Sampler, embed: Embed, calibration: CalibrationRows, config,
               device: torch.device, clock: StepClock, map_dim: int | None = None) -> Bank:
    """Embed the raw rows (freeing them), select the bank, build its search; laps ``clock`` at
    "bank" (rows embedded and selected) and "index" (search built).  A sampler that sees every
    row (not streaming) leaves them embedded in ``calibration.embedded`` (image-major) for the
    calibration, which then needs no raw copy.  ``map_dim``: the map's columns (the first ones)
    when the rows also hold context taps' columns (see the module docstring)."""
    streams = isinstance(sampler, StreamingSampler)
    source, radius, sample = raw.source, None, None
    if streams and not config.local_density and map_dim is None and \
            resolve_search(config, raw.count, device) == "faiss-ivf":
        sample = ivf_train_ids(raw.count, ivf_nlist(raw.count), config.seed)   # None: small bank
    if sample is not None:
        # large streamed bank: the IVF lists are trained on their sample of the rows (the same
        # rows an index rebuilt from the saved bank uses), then the raw chunks are embedded and
        # added one at a time and freed: the bank only ever exists inside the index
        _check_outside_images(source, config.k)
        train = raw.embed_rows(embed, sample)
        clock.lap("bank")
        search = make_search_from_chunks(raw.embedded_chunks(embed), raw.count, train.shape[1], train, config)
        kind, context = "faiss-ivf", None
    else:
        bank = raw.embed_all(embed)
        if not streams:
            calibration.embedded = bank        # every image's rows, in image order
            sel = sampler.run(bank if map_dim is None else bank[:, :map_dim])
            bank, source = bank[sel], source[sel]
        if config.local_density:
            radius = bank_local_radius(bank, config.density_neighbors)
        _check_outside_images(source, config.k)
        clock.lap("bank")
        kind = resolve_search(config, bank.shape[0], bank.device)
        search, context = bank_searches(bank, config, kind, map_dim)
        del bank
    clock.lap("index")
    return Bank(search, kind, radius, source, context)


def bank_searches(bank: torch.Tensor, config, kind: str, map_dim: int | None) -> tuple[Search, Search | None]:
    """(the map's search of ``kind``, the exact search over every column or None) of the bank
    rows ``bank`` [entries, D]; the map covers the first ``map_dim`` columns (None: all of them,
    and there is no context search).  A fit and a loaded model build their searches here."""
    if map_dim is None:
        return make_search(bank, config, kind), None    # holds the only copy of the bank
    # the exact map search reads the first map_dim columns of the same rows in place (no
    # copy); a FAISS index copies them into its own storage
    return make_search(bank[:, :map_dim], config, kind), make_search(bank, config, "exact")
