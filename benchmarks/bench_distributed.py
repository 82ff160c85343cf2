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

On a GPU machine (one GPU actor; ``--decoders`` tries several decoding-task counts; the local
path's batch-1 and batch-B latency are the per-image GPU figures of the projection):

    python benchmarks/bench_distributed.py --data DATA --device cuda --threads 4 --actors 1 \
        --decoders 1,4 --skip-fit -o OUT
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

import numpy as np


def _images(root: Path, split: str, n: int) -> list[str]:
    files = sorted(str(p) for p in root.glob(f"{split}/*/*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    step = max(1, len(files) // n)
    return files[::step][:n]


def busy_cpu_s() -> float | None:
    """CPU-seconds the whole machine has spent busy since boot (all processes, /proc/stat:
    user + nice + system + irq + softirq + steal), None where there is no /proc/stat; the
    difference over a run is the CPU it cost, Ray's own processes included."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, nargs="+", required=True, help="dataset roots (MVTec layout)")
    ap.add_argument("--n-test", type=int, default=400)
    ap.add_argument("--n-train", type=int, default=60)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--device", default="cpu", help="torch device of both paths (cpu, cuda)")
    ap.add_argument("--weights", default=None, help="backbone weights (a file, or random: timing only)")
    ap.add_argument("--actors", default="1,2", help="actor counts to run, comma-separated")
    ap.add_argument("--decoders", default="", help="decoding-task counts to try, comma-separated "
                    "[the engine's default]")
    ap.add_argument("--skip-fit", action="store_true", help="skip the fit-as-tasks timing")
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
    dev = args.device
    res: dict = {"machine": f"{os.cpu_count()} CPUs, load {os.getloadavg()}", "threads": T,
                 "torch": torch.__version__, "ray": ray.__version__, "batch_size": args.batch_size,
                 "device": dev, "gpu": torch.cuda.get_device_name() if dev.startswith("cuda") else None,
                 "weights": args.weights or "packaged"}
    cfg = Config.preset("patchbank").replace(weights=args.weights)
    root = args.data[0]
    tmp = Path(tempfile.mkdtemp())
    model = tmp / "m.patchbank"
    t0 = time.perf_counter()
    Detector(cfg, device=dev, progress=False).fit(_images(root, "train", args.n_train)).save(model)
    res["fit_s"] = time.perf_counter() - t0
    test = _images(root, "test", args.n_test)
    t0 = time.perf_counter()
    det = Detector.load(model, device=dev, progress=False, weights=args.weights)
    det.predict(test[:8], batch_size=args.batch_size)     # warm: builds the backbone
    res["local_load_and_first_batch_s"] = time.perf_counter() - t0
    for b in (1, args.batch_size):   # per-image latency of one model call, reading included
        n = min(len(test), 64)
        det.predict(test[:b], batch_size=b)   # warm this batch shape (cuDNN picks its kernels)
        t0 = time.perf_counter()
        det.predict(test[:n], batch_size=b)
        res[f"local_ms_per_img_batch{b}"] = 1000 * (time.perf_counter() - t0) / n
    def local_run() -> list:
        """One timed local predict of every test image, appended to the local records."""
        t0, c0 = time.perf_counter(), busy_cpu_s()
        preds = det.predict(test, batch_size=args.batch_size)
        res["local_runs"].append({"img_s": len(test) / (time.perf_counter() - t0), "cpu_ms_per_img":
                                  None if c0 is None else 1000 * (busy_cpu_s() - c0) / len(test)})
        return preds

    # the local path is timed before the first Ray configuration and after each one, so every
    # Ray run is compared with the local runs just before and after it (this VM's speed drifts)
    res["local_runs"] = []
    local = local_run()
    if dev != "cpu":   # the same model on the CPU: how far the device's scores are from it
        n = min(len(test), 64)
        on_cpu = Detector.load(model, progress=False, weights=args.weights).predict(test[:n])
        cpu = np.array([p.score for p in on_cpu])
        dscores = np.array([p.score for p in local[:n]])
        res["max_rel_score_diff_device_vs_cpu"] = float(np.max(np.abs(dscores - cpu) / np.abs(cpu)))
        res["same_decisions_device_vs_cpu"] = ([p.is_anomalous for p in local[:n]]
                                               == [p.is_anomalous for p in on_cpu])
    ray.init(num_cpus=T, include_dashboard=False, log_to_driver=False, configure_logging=False)
    small = test[: max(8, len(test) // 5)]
    decoder_counts = [int(d) for d in args.decoders.split(",") if d] or [None]
    for actors in (int(a) for a in args.actors.split(",")):
        th = max(1, T // actors)
        for decoders in decoder_counts:
            times, cpu = {}, {}
            for name, imgs in (("small", small), ("full", test)):   # a fresh actor pool per run
                out = tmp / f"ray{actors}_{decoders}_{name}"
                t0, c0 = time.perf_counter(), busy_cpu_s()
                got = predict(model, imgs, out, actors=actors, threads=th, batch_size=args.batch_size,
                              device=dev, decoders=decoders, weights=args.weights)
                times[name] = time.perf_counter() - t0
                cpu[name] = None if c0 is None else busy_cpu_s() - c0
            local_run()
            around = np.mean([r["img_s"] for r in res["local_runs"][-2:]])
            steady = (len(test) - len(small)) / (times["full"] - times["small"])
            ray_scores = np.array([r["score"] for r in got["predictions"]])
            local_scores = np.array([p.score for p in local])
            res[f"ray_{actors}x{th}" + (f"_decoders{decoders}" if decoders else "")] = {
                "decoders": got["engine"]["decoders"],
                "img_s_whole_run": len(test) / times["full"],
                "local_img_s_around": around,   # mean of the local runs before and after
                "overhead_whole_run": 1 - len(test) / times["full"] / around,
                "img_s_steady": steady,   # the difference of a run of len(test) and one of len(small)
                "fixed_start_s": times["full"] - len(test) / steady,
                # machine-wide CPU of the whole run, and per image in the steady part (the
                # difference of the two runs), Ray's processes (driver, raylet, GCS) included
                "cpu_ms_per_img_whole_run": None if cpu["full"] is None else 1000 * cpu["full"] / len(test),
                "cpu_ms_per_img_steady": None if cpu["full"] is None
                else 1000 * (cpu["full"] - cpu["small"]) / (len(test) - len(small)),
                "equal_scores_as_local": bool(np.array_equal(ray_scores, local_scores)),
                "equal_decisions_as_local": [r["is_anomalous"] for r in got["predictions"]]
                == [p.is_anomalous for p in local],
                "max_rel_score_diff": float(np.max(np.abs(ray_scores - local_scores) / np.abs(local_scores)))}
    noop = ray.remote(num_cpus=1)(lambda: None)
    ray.get([noop.remote() for _ in range(10)])
    t0 = time.perf_counter()
    for _ in range(100):
        ray.get(noop.remote())
    res["ray_task_roundtrip_ms"] = (time.perf_counter() - t0) * 10
    if not args.skip_fit:
        cats = {r.name: _images(r, "train", args.n_train) for r in args.data}
        t0 = time.perf_counter()
        MultiDetector(cfg, device=dev, progress=False).fit(cats)
        res["fit_local_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        fit_categories(cats, cfg, threads=1, device=dev)
        res["fit_ray_tasks_s"] = time.perf_counter() - t0
        res["fit_categories"] = {k: len(v) for k, v in cats.items()}
    ray.shutdown()
    res["local_img_s"] = float(np.median([r["img_s"] for r in res["local_runs"]]))
    if dev.startswith("cuda"):   # one GPU (with T CPU threads feeding it) per machine
        res["projection"] = {f"{n:.0e}_per_day": {
            "gpu_seconds": n / res["local_img_s"],
            "machines_1_gpu_at_70pct": math.ceil(n / res["local_img_s"] / (86400 * 0.7))}
            for n in (1e6, 1e7)}
    else:
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
