"""Step-by-step comparison of patchbank's PatchCore path with anomalib 2.7's, on real images.

Run with the peer's interpreter (it has anomalib; patchbank is imported from ``src``)::

    PY=$(bash ../shared/peers/setup.sh)
    PYTHONPATH=src $PY benchmarks/peer_components.py ../shared/data/mtd --images 8 \
        --out benchmarks/results/peer_components_mtd.json

For a few training and test images of an MVTec-layout category it feeds the *same* inputs to
both implementations and reports the largest difference after each step, so every deviation is
located and sized separately:

1. preprocessing: the network input tensor (decode, resize 256, crop 224, normalise);
2. backbone: the tapped maps of the same input (blocks.2, blocks.4);
3. aggregation: 3 x 3 average pooling + bilinear alignment + concatenation, with patchbank's
   ``count_include_pad=False`` and with anomalib's ``AvgPool2d(3, 1, 1)`` (pads count);
4. scoring: with one common memory bank (every patch of the training images given), the 1-NN
   patch scores and the re-weighted max image score;
5. anomaly map: patchbank's map (bilinear upsampling, scipy-style blur) and anomalib's
   (nearest upsampling, GaussianBlur2d with torch 'reflect' padding) from the same patch scores;
6. greedy selection: anomalib's KCenterGreedy and patchbank's on the same rows (set sizes and
   the covering radius each achieves, measured in the unprojected space);
7. metrics: anomalib's pixel AUROC / AUPRO and patchbank's on the same maps and masks (the
   anomalib maps of step 5, masks resized and cropped by patchbank).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

PEERS = Path(__file__).resolve().parents[2] / "shared" / "peers"


def maxdiff(a: torch.Tensor, b: torch.Tensor) -> dict:
    a, b = a.double(), b.double()
    d = (a - b).abs()
    return {"max_abs": float(d.max()), "mean_abs": float(d.mean()),
            "scale": float(b.abs().mean()), "rel_mean": float(d.mean() / b.abs().mean().clamp_min(1e-12))}


def covering_radius(x: torch.Tensor, sel: torch.Tensor) -> float:
    """max over rows of the distance to the nearest selected row (the k-center objective)."""
    best = torch.full((x.shape[0],), float("inf"), dtype=torch.float64)
    c = x[sel].double()
    for chunk in range(0, x.shape[0], 8192):
        d = torch.cdist(x[chunk:chunk + 8192].double(), c).min(1).values
        best[chunk:chunk + 8192] = d
    return float(best.max())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("category", type=Path, help="MVTec-layout category folder")
    ap.add_argument("--images", type=int, default=8, help="training images (and as many test images)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    sys.path.insert(0, str(PEERS))
    import anomalib_patchcore as harness  # noqa: E402  (offline guards, weight injection)
    from anomalib.data.utils.image import read_image
    from anomalib.models import Patchcore
    from anomalib.models.components.sampling import KCenterGreedy
    from anomalib.pre_processing import PreProcessor
    from torchvision.transforms.v2 import CenterCrop, Compose, Normalize, Resize

    from patchbank import Config, Detector
    from patchbank.pipeline.anomaly_map import anomaly_maps
    from patchbank.pipeline.features import aggregate
    from patchbank.pipeline.scoring import reweighted_max
    from patchbank.search.exact import ExactSearch
    from patchbank.sampling.greedy import GreedySampler

    torch.manual_seed(0)
    torch.set_num_threads(2)
    train = sorted((args.category / "train" / "good").iterdir())[: args.images]
    test = sorted(p for d in sorted((args.category / "test").iterdir()) if d.name != "good"
                  for p in sorted(d.iterdir()))[: args.images]
    tf = Compose([Resize((256, 256), antialias=True), CenterCrop((224, 224)),
                  Normalize(mean=[0.5] * 3, std=[0.5] * 3)])
    model = Patchcore(backbone=harness.BACKBONE, layers=["blocks.2", "blocks.4"], pre_trained=False,
                      coreset_sampling_ratio=0.01, num_neighbors=9,
                      pre_processor=PreProcessor(transform=tf), post_processor=False,
                      evaluator=False, visualizer=False)
    harness.inject_weights(model, harness.DEFAULT_WEIGHTS, harness.DEFAULT_WEIGHTS_SHA256,
                           ["blocks.2", "blocks.4"])
    tm = model.model.eval()

    cfg = Config.preset("patchcore", coreset_ratio=0.01, search="exact")
    det = Detector(cfg, progress=False)
    report: dict = {"category": str(args.category), "images": args.images}

    def peer_input(paths):
        return torch.stack([tf(read_image(p, as_tensor=True)) for p in paths])

    def our_input(paths):
        return torch.cat([x for x, _ in det.stream([str(p) for p in paths])])

    with torch.no_grad():
        # 1. preprocessing
        xp, xo = peer_input(train), our_input(train)
        report["1_input"] = maxdiff(xo, xp)
        # 2. backbone on the peer's input
        fp = tm.feature_extractor(xp)
        fo = det.extractor.maps(xp)
        report["2_backbone"] = {k: maxdiff(o, fp[k]) for k, o in zip(fp, fo)}
        # 3. aggregation + alignment
        peer_emb = tm.generate_embedding({k: tm.feature_pooler(v) for k, v in fp.items()})
        ours_excl = torch.cat(aggregate(list(fp.values()), 3), 1)
        report["3_aggregate_vs_peer"] = maxdiff(ours_excl, peer_emb)
        incl = [torch.nn.functional.avg_pool2d(v, 3, 1, 1, count_include_pad=True) for v in fp.values()]
        ours_incl = torch.cat(aggregate(incl, 1), 1)
        report["3_aggregate_include_pad_vs_peer"] = maxdiff(ours_incl, peer_emb)

        # 4. scoring with one common bank (every patch of the training images, peer's features)
        bank = tm.reshape_embedding(peer_emb)
        tm.memory_bank = bank
        xt = peer_input(test)
        ft = tm.feature_extractor(xt)
        emb_t = tm.generate_embedding({k: tm.feature_pooler(v) for k, v in ft.items()})
        b, _, h, w = emb_t.shape
        q = tm.reshape_embedding(emb_t)
        ps, loc = tm.nearest_neighbors(q, 1)
        ps, loc = ps.reshape(b, -1), loc.reshape(b, -1)
        peer_img = tm.compute_anomaly_score(ps, loc, q)
        search = ExactSearch(bank)
        d, i = search.search(q, 1)
        our_ps = d[:, 0].clamp_min(0).sqrt().reshape(b, -1)
        our_img = reweighted_max(our_ps, q.reshape(b, h * w, -1), i[:, 0].reshape(b, -1), search, 9)
        report["4_patch_scores"] = maxdiff(our_ps, ps)
        report["4_image_scores"] = maxdiff(our_img, peer_img)
        # 5. anomaly maps from the same patch scores
        peer_map = tm.anomaly_map_generator(ps.reshape(b, 1, h, w), (224, 224)).squeeze(1)
        our_map = anomaly_maps(ps.reshape(b, h, w), (224, 224), 4.0)
        report["5_anomaly_map"] = maxdiff(our_map, peer_map)
        near = torch.nn.functional.interpolate(ps.reshape(b, 1, h, w), size=(224, 224), mode="nearest")
        report["5_anomaly_map_nearest_then_our_blur"] = maxdiff(
            anomaly_maps(near.squeeze(1), (224, 224), 4.0), peer_map)

        # 6. greedy selection on the same rows (1%)
        n = bank.shape[0]
        kc = KCenterGreedy(embedding=bank, sampling_ratio=0.01)
        peer_sel = torch.tensor(kc.select_coreset_idxs())
        ours = GreedySampler(0.01, proxy_dim=128, seed=0)
        our_sel = torch.as_tensor(ours.run(bank))
        report["6_greedy"] = {
            "rows": n, "peer_size": int(peer_sel.numel()), "our_size": int(our_sel.numel()),
            "peer_proj_dim": int(kc.features.shape[1]),
            "peer_covering_radius": covering_radius(bank, peer_sel),
            "our_covering_radius": covering_radius(bank, our_sel),
            "shared_rows": int(len(set(peer_sel.tolist()) & set(our_sel.tolist()))),
        }
        # 7. pixel metrics on the same maps and masks
        from types import SimpleNamespace

        import numpy as np
        from PIL import Image
        from anomalib.metrics import AUPRO, AUROC

        from patchbank.evaluation.metrics import pixel_metrics
        from patchbank.io.images import crop_mask

        masks = [crop_mask(np.asarray(Image.open(args.category / "ground_truth" / p.parent.name /
                                                 f"{p.stem}_mask.png")), cfg) for p in test]
        maps = peer_map.double()
        scaled = (maps - maps.min()) / (maps.max() - maps.min())
        gt = torch.from_numpy(np.stack(masks))
        peer_m = {}
        for name, metric in (("pixel_auroc", AUROC(fields=["anomaly_map", "gt_mask"])),
                             ("aupro", AUPRO(fields=["anomaly_map", "gt_mask"], fpr_limit=0.3))):
            metric.update(SimpleNamespace(anomaly_map=scaled, gt_mask=gt))
            peer_m[name] = float(metric.compute())
        ours_m = pixel_metrics(list(maps.float().numpy()), masks)
        report["7_metrics"] = {"anomalib": peer_m,
                               "patchbank": {k: ours_m[k] for k in ("pixel_auroc", "aupro")}}
    args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
