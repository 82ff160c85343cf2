"""The Ray engine's throughput and overhead against the local path, and a cluster projection.

Measures, on this machine (state the machine and its load next to the numbers):

* images/s of the local ``Detector.predict`` (T threads) and of ``patchbank.distributed.predict``
  with 1 actor x T threads and with 2 actors x T/2 threads, on the same images and model;
* the time to fit every category of a multi-category root locally (one after another) and as
  Ray tasks;
* Ray's per-task overhead (a no-op task, round trip).

Then projects (a model, not a measurement) the machines needed for 1 and 10 million images a
day from the measured per-image CPU cost.

    python benchmarks/bench_distributed.py --data ../shared/data/mtd --n-test 200 --n-train 60 \
        -o benchmarks/results/distributed
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path


def _images(root: Path, split: str, n: int) -> list[str]:
    files = sorted(str(p) for p in root.glob(f"{split}/*/*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    step = max(1, len(files) // n)
    return files[::step][:n]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, nargs="+", required=True, help="dataset roots (MVTec layout)")
    ap.add_argument("--n-test", type=int, default=400)
    ap.add_argument("--n-train", type=int, default=60)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("-o", "--out", type=Path, required=True)
    args = ap.parse_args()
    import ray
    import torch

    from patchbank.config import Config
    from patchbank.detector import Detector
    from patchbank.distributed import fit_categories, predict
    from patchbank.multi import MultiDetector
    from patchbank.runtime.threads import set_threads

    args.out.mkdir(parents=True, exist_ok=True)
    T = args.threads
    set_threads(T)
    res: dict = {"machine": f"{os.cpu_count()} CPUs, load {os.getloadavg()}", "threads": T,
                 "torch": torch.__version__, "ray": ray.__version__, "batch_size": args.batch_size}
    cfg = Config.preset("patchbank")
    root = args.data[0]
    tmp = Path(tempfile.mkdtemp())
    model = tmp / "m.patchbank"
    Detector(cfg, progress=False).fit(_images(root, "train", args.n_train)).save(model)
    test = _images(root, "test", args.n_test)
    det = Detector.load(model, progress=False)
    det.predict(test[:8], batch_size=args.batch_size)     # warm
    t0 = time.perf_counter()
    local = det.predict(test, batch_size=args.batch_size)
    res["local_img_s"] = len(test) / (time.perf_counter() - t0)
    ray.init(num_cpus=T, include_dashboard=False, log_to_driver=False, configure_logging=False)
    small = test[: max(8, len(test) // 5)]
    for actors in (1, 2):
        th = max(1, T // actors)
        times = {}
        for name, imgs in (("small", small), ("full", test)):   # a fresh actor pool per run
            out = tmp / f"ray{actors}_{name}"
            t0 = time.perf_counter()
            got = predict(model, imgs, out, actors=actors, threads=th, batch_size=args.batch_size)
            times[name] = time.perf_counter() - t0
        steady = (len(test) - len(small)) / (times["full"] - times["small"])
        res[f"ray_{actors}x{th}"] = {
            "img_s_whole_run": len(test) / times["full"],
            "img_s_steady": steady,   # the difference of a run of len(test) and one of len(small)
            "fixed_start_s": times["full"] - len(test) / steady,
            "equal_scores_as_local": [r["score"] for r in got["predictions"]] == [p.score for p in local]}
    noop = ray.remote(num_cpus=1)(lambda: None)
    ray.get([noop.remote() for _ in range(10)])
    t0 = time.perf_counter()
    for _ in range(100):
        ray.get(noop.remote())
    res["ray_task_roundtrip_ms"] = (time.perf_counter() - t0) * 10
    cats = {r.name: _images(r, "train", args.n_train) for r in args.data}
    t0 = time.perf_counter()
    MultiDetector(cfg, progress=False).fit(cats)
    res["fit_local_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    fit_categories(cats, cfg, threads=1)
    res["fit_ray_tasks_s"] = time.perf_counter() - t0
    res["fit_categories"] = {k: len(v) for k, v in cats.items()}
    ray.shutdown()
    per_img_core_s = T / res["local_img_s"]
    res["projection"] = {f"{n:.0e}_per_day": {
        "core_seconds": n * per_img_core_s,
        "machines_16_cores_at_70pct": math.ceil(n * per_img_core_s / (16 * 86400 * 0.7))}
        for n in (1e6, 1e7)}
    (args.out / "result.json").write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
