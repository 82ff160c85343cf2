"""The exportable graph of a fitted :class:`~patchbank.detector.Detector`: one ``nn.Module`` from
the normalised input tensor to every per-image output, built from the detector's own parts.

``ExportGraph(detector)(x [B, 3, H, W])`` returns :data:`OUTPUTS` in order: the final image
score, the normalised score, the decision, the anomaly maps [B, H, W], S_base, D_struct, the
hybrid score and the map descriptors [B, 3].  Its ``forward`` is the backbone, then
:meth:`FeatureExtractor.rows <patchbank.pipeline.features.FeatureExtractor.rows>` (aggregation,
alignment) and :meth:`InferenceModel.score_tensors
<patchbank.pipeline.inference.InferenceModel.score_tensors>` (fusion, projection, nearest bank
rows, patch scores, pooling, map, descriptor, StructCore terms, normalisation, threshold): the
torch path's own code, with three things held as constants of the graph:

* the bank (:class:`BankSearch`, float32 or float16 storage; the search always runs in float32),
  searched exactly by :func:`patchbank.search.exact.nearest_rows` over the whole batch in blocks
  of ``bank_chunk`` rows, so no distance block is larger than [B * P, bank_chunk]; with context
  taps the graph holds the whole rows once, and the map's search (:class:`BankColumns`) slices
  their first columns;
* the map operators A_h, A_w (upsampling + blur, :meth:`PatchScorer.map_operators`);
* the calibration's numbers (mean, std, threshold, structure statistics, lambda).

A model whose search is a FAISS index is exported with the exact search over the same bank rows
(:func:`search_note` says so; the sidecar and the CLI repeat it), and a float32 bank stored as
float16 (``bank_dtype``) is rounded (:func:`bank_dtype_note`, likewise).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from patchbank.errors import PatchbankError
from patchbank.linalg import sq_norms
from patchbank.pipeline.focus import blurriness
from patchbank.search.exact import nearest_rows

OUTPUTS = ("score", "normalized_score", "is_anomalous", "anomaly_map", "base_score", "struct_score",
           "hybrid_score", "descriptor")
BANK_DTYPES = {"float32": torch.float32, "float16": torch.float16}
CHUNK_BYTES = 16 * 2**20   # distances per image per bank block (the block is B x this)


class _BankRows(nn.Module):
    """The Search protocol's ``search`` / ``rows`` / ``shape`` / ``len`` over ``self.bank``
    (stored values, read back as float32) with ``self.bank_sqnorm`` and ``self.bank_chunk``:
    exact k-NN by :func:`nearest_rows`.  :class:`BankSearch` stores the rows;
    :class:`BankColumns` reads the first columns of a :class:`BankSearch`'s rows."""

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.bank.shape)

    def __len__(self) -> int:
        return int(self.bank.shape[0])

    def search(self, queries: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """(squared distances [n, k] ascending, row ids [n, k]) of ``queries`` [n, d]."""
        return nearest_rows(queries.float(), self.bank.float(), self.bank_sqnorm, min(k, len(self)),
                            self.bank_chunk)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Bank rows ``ids`` as float32."""
        return self.bank[ids].float()


class BankSearch(_BankRows):
    """The bank as a buffer (an initializer of the exported graph), searched exactly.

    ``bank`` [m, d] float32 is stored in ``dtype``; the squared norms are those of the stored
    rows read back as float32 (the torch search's own, for a model saved with that dtype)."""

    def __init__(self, bank: torch.Tensor, dtype: torch.dtype, bank_chunk: int):
        super().__init__()
        stored = bank.detach().to(dtype).clone()
        self.register_buffer("bank", stored)
        self.register_buffer("bank_sqnorm", sq_norms(stored.float()))
        self.bank_chunk = int(bank_chunk)


class BankColumns(_BankRows):
    """The first ``n`` columns of a :class:`BankSearch`'s rows (the map's search with context
    taps), searched like it: the graph slices the stored bank instead of holding a second copy
    of those columns; only their squared norms (of the stored values read back as float32, as
    a separately stored copy would have) are a buffer of their own."""

    def __init__(self, whole: BankSearch, n: int):
        super().__init__()
        self.whole = whole
        self.n = int(n)
        self.register_buffer("bank_sqnorm", sq_norms(whole.bank[:, :self.n].float().contiguous()))
        self.bank_chunk = whole.bank_chunk

    @property
    def bank(self) -> torch.Tensor:
        """The stored columns (a slice of the whole bank)."""
        return self.whole.bank[:, :self.n]


def bank_chunk_rows(n_patches: int, entries: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    """Bank rows per distance block: at most ``chunk_bytes`` of float32 distances per image,
    at least 1024 rows, at most the whole bank."""
    return max(1, min(entries, max(1024, chunk_bytes // (4 * max(1, n_patches)))))


def search_note(detector) -> str | None:
    """None when the graph computes what the torch path computes; otherwise one sentence on
    what differs (a FAISS search is replaced by the exact search over the same bank)."""
    kind = detector.search_kind_
    if kind == "exact":
        return None
    return (f"the model searches its bank with {kind}; the exported graph searches the same bank "
            f"exactly (scores equal the torch path with search exact, and may differ slightly "
            f"from {kind}'s approximate neighbours)")


def bank_dtype_note(detector, bank_dtype: str) -> str | None:
    """None when the graph's bank holds the detector's own bank values (the same dtype, or
    float32, which holds a float16 bank exactly); otherwise one sentence on what differs (a
    float32 bank stored as float16 is rounded, so the scores move slightly)."""
    held = detector.config.bank_dtype
    if bank_dtype in (held, "float32"):
        return None
    return (f"the model holds its bank as {held}; the exported graph stores it as {bank_dtype}, so "
            f"its scores differ slightly from the torch path's (the bank rows are rounded; export "
            f"with bank dtype {held} for the torch path's scores)")


class ExportGraph(nn.Module):
    """Normalised images [B, 3, H, W] -> :data:`OUTPUTS` of a fitted single-category detector;
    see the module docstring."""

    def __init__(self, detector, bank_dtype: str | None = None, chunk_bytes: int = CHUNK_BYTES):
        super().__init__()
        cfg = detector.config
        bank_dtype = bank_dtype or cfg.bank_dtype
        if bank_dtype not in BANK_DTYPES:
            raise PatchbankError(f"bank dtype must be one of {', '.join(BANK_DTYPES)}, got {bank_dtype!r}")
        model = detector.model_
        with torch.inference_mode(False):
            self.inference = model
            scorer = detector.scorer_
            entries = scorer.search.shape[0]
            chunk = bank_chunk_rows(math.prod(detector.grid_), entries, chunk_bytes)
            dtype = BANK_DTYPES[bank_dtype]
            if scorer.context is None:
                self.search, self.context = BankSearch(scorer.search.all_rows().cpu(), dtype, chunk), None
            else:       # the map's columns come first in the whole rows
                whole, n = scorer.context.all_rows().cpu(), scorer.search.shape[1]
                if not torch.equal(whole[:, :n], scorer.search.all_rows().cpu()):
                    raise PatchbankError("cannot export: the map's bank is not the first columns "
                                         "of the context bank")
                self.context = BankSearch(whole, dtype, chunk)
                self.search = BankColumns(self.context, n)
            a_h, a_w = detector.scorer_.map_operators(torch.device("cpu"))
            self.register_buffer("map_h", a_h.clone())
            self.register_buffer("map_w", a_w.clone())
        self.bank_dtype = bank_dtype
        self.input_size = tuple(cfg.network_size)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The outputs of :data:`OUTPUTS` for the normalised batch ``x``."""
        extractor = self.inference.extractor
        layers, _ = extractor.rows(extractor.backbone(x), x.shape)
        maps, phi, final, base, struct, hybrid, norm, *_, anomalous = self.inference.score_tensors(
            layers, x.shape[0], blurriness(x), None, self.search, (self.map_h, self.map_w), self.context)
        return final, norm, anomalous, maps, base, struct, hybrid, phi
