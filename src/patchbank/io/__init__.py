"""File input and output: images (decoding, resize + crop, streamed batches), dataset layouts
(MVTec AD, MPDD, BTAD, VisA, generic folders), the ``.patchbank`` model file, heatmap overlays
and the synthetic demo product.  Depends only on :mod:`patchbank.errors` / :mod:`patchbank.config`."""
