"""Is a fit on another machine the same model?  Fit the preset on the CPU here and compare the
decoded inputs, the features and the bank with those saved by the same command on a reference
machine.

    python benchmarks/fit_reproducibility.py save DATA REF      # on the reference machine
    python benchmarks/fit_reproducibility.py check DATA REF     # on the other one, REF copied over

DATA is an MVTec-layout category folder; REF a folder for the reference's arrays (the first 8
training images as the backbone reads them, the features of the first 2, the bank) and its
threshold and Pillow version.  ``check`` prints the Pillow / numpy / torch versions, both
thresholds, how many decoded pixels differ and by how much, the largest feature difference, and
how many bank rows the two fits share (identical bytes) or lie more than 1e-3 from any row of the
other.
"""
from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import PIL
import torch
from scipy.spatial.distance import cdist

from patchbank.config import DEFAULT_PRESET
from patchbank.detector import Detector
from patchbank.io.images import prepare_input, to_tensor


def fit_arrays(data: Path) -> tuple[Detector, np.ndarray, np.ndarray, np.ndarray]:
    """(the fitted detector, the first 8 training inputs, the first 2's features, the bank)."""
    train = sorted((data / "train" / "good").iterdir())
    det = Detector.from_preset(DEFAULT_PRESET, progress=False).fit(train)
    imgs = np.stack([prepare_input(p, det.config) for p in train[:8]])
    bb = det.extractor.backbone
    with torch.inference_mode():
        feats = det.extractor(to_tensor(list(imgs[:2]), bb.mean, bb.std))[0][0].numpy()
    return det, imgs, feats, det.scorer_.search.all_rows().numpy()


def main() -> None:
    if len(sys.argv) != 4 or sys.argv[1] not in ("save", "check"):
        sys.exit(__doc__.split("\n\n")[1])
    mode, data, ref = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    warnings.simplefilter("ignore")
    det, imgs, feats, bank = fit_arrays(data)
    if mode == "save":
        ref.mkdir(parents=True, exist_ok=True)
        np.save(ref / "imgs.npy", imgs), np.save(ref / "feats.npy", feats), np.save(ref / "bank.npy", bank)
        (ref / "meta.json").write_text(json.dumps({"threshold": det.threshold_, "pil": PIL.__version__}))
        print("saved", det.threshold_, PIL.__version__, np.__version__, torch.__version__)
        return
    r = json.loads((ref / "meta.json").read_text())
    ri, rf, rb = np.load(ref / "imgs.npy"), np.load(ref / "feats.npy"), np.load(ref / "bank.npy")
    print("pil here / ref:", PIL.__version__, r["pil"], "numpy", np.__version__, "torch", torch.__version__)
    print("threshold here / ref:", det.threshold_, r["threshold"])
    di = np.abs(imgs.astype(int) - ri.astype(int))
    print("decoded inputs: max |diff|", di.max(), "pixels differing", int((di > 0).sum()), "of", di.size)
    print("features of 2 images: max |diff|", float(np.abs(feats - rf).max()), "max |ref|", float(np.abs(rf).max()))
    shared = {row.tobytes() for row in bank} & {row.tobytes() for row in rb}
    print("bank rows here / ref:", len(bank), len(rb), "identical rows in common:", len(shared))
    dd = cdist(bank, rb).min(1)
    print("each row's distance to the nearest ref row: median", float(np.median(dd)),
          "rows > 1e-3:", int((dd > 1e-3).sum()))


if __name__ == "__main__":
    main()
