"""Writes tests/data/legacy_*.patchbank and legacy_predictions.json with the pre-refactor code:
run at commit 6850f23 as `PYTHONPATH=<checkout of 6850f23>/src python tests/data/make_legacy.py`
(the import paths below are that commit's)."""
import json, sys
from pathlib import Path
import torch
import patchbank
torch.set_num_threads(1)   # as tests/conftest.py
from patchbank.synthetic import make_dataset
from patchbank.detector import Detector
from patchbank.multi import MultiDetector
from patchbank.images import list_images
root = make_dataset("/tmp/legacy_data", n_train=12, n_test_good=2, n_test_defect=2, size=96, seed=0)
out = Path("/work/main/tests/data")
imgs = sorted(list_images(root / "test" / "good")) + sorted(list_images(root / "test" / "scratch"))
res = {}
for name, kw in {"lmf_core": dict(preset="lmf-core"), "patchcore": dict(preset="patchcore"),
                 "hybrid": dict(preset="lmf-core", image_score="hybrid", search="faiss-flat", local_density=True)}.items():
    preset = kw.pop("preset")
    det = Detector.from_preset(preset, backbone="efficientnet_lite0", image_size=96, crop_size=80, progress=False, **kw).fit(root / "train" / "good")
    det.save(out / f"legacy_{name}.patchbank", overwrite=True)
    det = Detector.load(out / f"legacy_{name}.patchbank", progress=False)   # what a user of the file gets
    res[name] = [{"file": Path(p.path).relative_to(root).as_posix(), "score": p.score, "normalized_score": p.normalized_score,
                  "is_anomalous": p.is_anomalous, "map_sum": float(p.anomaly_map.astype("float64").sum()),
                  "map_max": float(p.anomaly_map.max()), "struct_score": p.struct_score} for p in det.predict(imgs)]
    res[name + "_threshold"] = det.threshold_
json.dump(res, open(out / "legacy_predictions.json", "w"), indent=1, sort_keys=True)
print(json.dumps(res)[:500])
