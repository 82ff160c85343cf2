"""Ways to let deeper taps into the image score while the map keeps taps 2, 4 (issue #14, session 11).

The default preset's bank is chosen on the taps-2,4 columns; here every bank row also keeps
EfficientNet-Lite2's block-5 columns (the features come from a taps-2,4,5 extractor: equal fusion
concatenates, so the first 168 columns are the plain preset's rows).  The map is the preset's
(nearest row on the taps-2,4 columns).  Image-score variants, each a top-5% mean:

* ``base``: the preset's (map patch scores);
* ``R1``: each patch's distance to its map neighbour, on every column (no second search);
* ``R2``: the top 5% patches by map score, each searched again on every column (what
  ``Config.context_taps`` builds: :func:`patchbank.pipeline.scoring.context_pool`);
* ``R3``: every patch searched on every column, then the top 5%.

    python benchmarks/context_variants.py ../shared/data/ksdd 0,1,2 context_variants_ksdd_s11

Writes ``benchmarks/results/levers/<tag>.json`` (per seed: image metrics per variant, the pixel
metrics of the shared map, the seconds R2's and R3's searches took).
"""
import sys, json, time, math
import numpy as np, torch
from pathlib import Path
from patchbank.config import Config
from patchbank.detector import Detector
from patchbank.evaluation.metrics import image_metrics
from patchbank.evaluation.scoring import pixel_scores
from patchbank.io.datasets import read_dataset
from patchbank.io.images import list_images
from patchbank.pipeline.scoring import PatchScorer, topk_mean
from patchbank.sampling import make_sampler
from patchbank.search.exact import ExactSearch
from patchbank.runtime.threads import set_threads

root = Path(sys.argv[1]); seeds = [int(s) for s in sys.argv[2].split(",")]; tag = sys.argv[3]
set_threads(2)
category, = read_dataset(root)
train = list_images(root / "train" / "good")
items = [str(p) for p in category.test]
labels = np.asarray(category.labels)

@torch.inference_mode()
def feats(det, paths):
    out = []
    for x, _ in det.stream(paths):
        rows, grid = det.extractor(x)
        out.append(torch.cat(rows, 1).view(x.shape[0], -1, sum(r.shape[1] for r in rows)))
    return torch.cat(out), grid, [r.shape[1] for r in rows]

res = []
cfg0 = Config.preset("patchbank", layers=(2, 4, 5), context_taps=0)
det = Detector(cfg0, progress=False)
t0 = time.perf_counter()
F, grid, widths = feats(det, train)
E, _, _ = feats(det, items)
print("features", F.shape, E.shape, widths, f"{time.perf_counter()-t0:.0f}s", flush=True)
dm = widths[0] + widths[1]
N, P, D = E.shape
flat = F.reshape(-1, D)
with torch.inference_mode():
  for seed in seeds:
    cfg = cfg0.replace(seed=seed, layers=(2, 4))
    t0 = time.perf_counter()
    ids = make_sampler(cfg).run(flat[:, :dm].contiguous())
    B = flat[ids].contiguous()
    ts = time.perf_counter() - t0
    smap, sfull = ExactSearch(B[:, :dm].contiguous()), ExactSearch(B)
    scorer = PatchScorer(cfg, None, smap, grid)
    k = max(1, math.ceil(cfg.topk_ratio * P - 1e-9))
    v = {"base": [], "R1": [], "R2": [], "R3": []}
    maps = []
    t_r2 = t_r3 = 0.0
    for i in range(0, N, 16):
        e = E[i:i + 16]; b = e.shape[0]
        q = e.reshape(-1, D)
        sq, nn = smap.search(q[:, :dm], 1)
        s = sq[:, 0].sqrt().view(b, P)
        maps.extend(m.numpy() for m in scorer.anomaly_map(s)[0])
        v["base"].append(topk_mean(s, cfg.topk_ratio))
        r5 = ((q[:, dm:] - B[nn[:, 0], dm:]) ** 2).sum(1)
        v["R1"].append(topk_mean((sq[:, 0] + r5).sqrt().view(b, P), cfg.topk_ratio))
        t1 = time.perf_counter()
        top = s.topk(k, dim=1).indices
        qt = e.gather(1, top.unsqueeze(2).expand(-1, -1, D)).reshape(-1, D)
        sqt, _ = sfull.search(qt, 1)
        v["R2"].append(sqt[:, 0].sqrt().view(b, k).mean(1))
        t2 = time.perf_counter()
        sqf, _ = sfull.search(q, 1)
        v["R3"].append(topk_mean(sqf[:, 0].sqrt().view(b, P), cfg.topk_ratio))
        t3 = time.perf_counter(); t_r2 += t2 - t1; t_r3 += t3 - t2
    row = {"seed": seed, "bank": list(B.shape), "sample_s": ts, "r2_s": t_r2, "r3_s": t_r3,
           "image": {n: image_metrics(labels, torch.cat(x).double().numpy()) for n, x in v.items()}}
    if category.has_masks:
        row["pixel"] = pixel_scores(category, maps, cfg)
    print(json.dumps(row), flush=True)
    res.append(row)
out = Path("benchmarks/results/levers") / f"{tag}.json"
out.write_text(json.dumps({"command": "python benchmarks/context_variants.py " + " ".join(sys.argv[1:]), "rows": res}, indent=1))
