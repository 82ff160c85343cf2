"""Calibration cost vs the backbone floor, min over repeats (robust to a loaded machine).

One fit of the lmf-core preset on ROOT/train/good, then REPS interleaved repeats of: a backbone
pass (FeatureExtractor) over the decoded images in batches of 16, leave-one-image-out
calibration of every image (pipeline.calibration.calibrate), and the old calibration (77 held-out
images, the seeded draw of the old rule, one masked search).  Prints each repeat and the minima.

    python benchmarks/calibration_cost.py /work/shared/data/mtd 5
"""
import argparse, time, warnings
from functools import partial
import numpy as np, torch
warnings.simplefilter("ignore")
from patchbank.config import Config
from patchbank.detector import Detector
from patchbank.io.images import as_items
from patchbank.pipeline import calibration as C
from patchbank.pipeline.bank import build_bank, stream_features
from patchbank.pipeline.embedding import Embedding
from patchbank.pipeline.scoring import PatchScorer
from patchbank.runtime.clock import StepClock
from patchbank.sampling import make_sampler
ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("root", help="an MVTec-layout category folder (train/good inside)")
ap.add_argument("reps", type=int, help="interleaved repeats")
args = ap.parse_args()
torch.set_num_threads(2)
det = Detector(Config.preset("lmf-core"), progress=False); cfg = det.config
items = as_items(args.root + "/train/good"); reps = args.reps
# images decoded once (the floor: backbone forward only, batches of 16)
batches = [x for x, _ in det.stream(items)]
def floor():
    with torch.inference_mode():
        for x in batches: det.extractor(x)
clock = StepClock(("features", "bank", "index", "calibration"))
sampler = make_sampler(cfg); emb = Embedding.from_config(cfg)
t = time.perf_counter()
feats = stream_features(det.stream(items), len(items), det.extractor, sampler,
                        partial(C.calibration_images, len(items), config=cfg), emb.needs_moments, 0, cfg.seed, False)
feat_s = time.perf_counter() - t
emb.fit(feats.moments, feats.raw.sample_row())
bank = build_bank(feats.raw, sampler, emb.transform, feats.calibration, cfg, det.device, clock)
scorer = PatchScorer(cfg, emb, bank.search, feats.grid, bank.radius)
bank_s = sum(clock.totals.get(k, 0) for k in ("bank", "index"))
# the old calibration: 77 held-out images, one masked search (same per-image work, old count)
held = C.CalibrationRows(feats.calibration.images, feats.calibration.n_patches, feats.calibration.raw)
rng = np.random.default_rng(cfg.seed + 1)
old_ids = np.sort(rng.choice(len(items), size=77, replace=False))
P = feats.calibration.n_patches
old_raw = [buf.view(len(items), P, -1)[torch.from_numpy(old_ids)].reshape(77 * P, -1) for buf in feats.calibration.raw]
held_mask = torch.zeros(len(items), dtype=torch.bool); held_mask[torch.from_numpy(old_ids)] = True
def old_cal():
    sub = scorer.search.subset(~held_mask[bank.source])
    base, phi = [], []
    for st in range(0, 77, 16):
        m = min(16, 77 - st)
        e = scorer.embed([b[st * P:(st + m) * P] for b in old_raw])
        b_, s_ = scorer.score(e.view(m, P, -1), sub); base.append(b_); phi.append(scorer.anomaly_map(s_)[1])
def new_cal():
    C.calibrate(scorer, feats.calibration, bank.source, feats.blurriness)
res = {"floor": [], "new_cal": [], "old_cal": []}
for r in range(reps):
    for name, fn in (("floor", floor), ("new_cal", new_cal), ("old_cal", old_cal)):
        t = time.perf_counter(); fn(); res[name].append(time.perf_counter() - t)
    print(r, {k: round(v[-1], 2) for k, v in res.items()}, flush=True)
m = {k: min(v) for k, v in res.items()}
print(f"features pass {feat_s:.2f} s, bank+index {bank_s:.2f} s; min over {reps}: floor {m['floor']:.2f} s, "
      f"calibration all {len(items)} images {m['new_cal']:.2f} s ({1000*m['new_cal']/len(items):.2f} ms/img), "
      f"old 77 held-out {m['old_cal']:.2f} s ({1000*m['old_cal']/77:.2f} ms/img)")
print(f"calibration / floor: new {m['new_cal']/m['floor']:.3f}, old {m['old_cal']/m['floor']:.3f}")
