"""Peak memory of an ``lmf-core`` fit, phase by phase, above the warm baseline.

    python benchmarks/bench_fit_memory.py --images 1000 3000            # with patchbank.runtime.malloc.tune_malloc
    python benchmarks/bench_fit_memory.py --images 1000 3000 --no-tune  # glibc defaults

Each size runs ``--repeats`` times (default 3), each in a fresh process; the row of a size is the
run with the median peak, with every run's peak in ``peaks_of_runs_mb`` (the same code's peak
moved by +-50 MB between runs here, so one run says little).

Training images are the synthetic ones of ``bench_scale.py`` (generated there into ``--data``).
Each size runs in a fresh process: the detector is built and warmed up (a floor pass over 200
images), then RSS (``/proc/self/status`` VmRSS) is sampled every 20 ms during ``fit`` and the
largest value above the baseline is kept per phase: ``stream`` (read + forward + moments +
kept raw rows), ``embed`` (fusion + projection into the bank; for a large streamed IVF bank only
its training sample), ``index`` (search index build; for a large streamed IVF bank also the
embedding of the chunks added to it), ``calib`` (calibration), ``done`` (after fit).  Writes ``--out`` JSON with the machine.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return float("nan")


def one(n: int, data: Path, tune: bool, threads: int) -> dict:
    if tune:
        from patchbank.runtime.malloc import tune_malloc

        tune_malloc()
    import torch

    import patchbank.detector as D
    import patchbank.pipeline.bank as B
    from patchbank.studies.speed import floor_seconds
    from patchbank.config import Config
    from patchbank.io.images import list_images

    torch.set_num_threads(threads)
    train = list_images(data / "train" / "good")[:n]
    det = D.Detector(Config.preset("lmf-core"), progress=False)
    floor_seconds(det, train[:200])
    base = _rss_mb()
    stage, peaks, stop = ["stream"], {}, []

    def monitor():
        while not stop:
            r = _rss_mb() - base
            peaks[stage[0]] = max(peaks.get(stage[0], r), r)
            time.sleep(0.02)

    real = {"embed_all": B.RawRows.embed_all, "embed_rows": B.RawRows.embed_rows,
            "make_search": B.make_search, "make_search_from_chunks": B.make_search_from_chunks}

    def embed_hook(name):
        def hook(self, *a, **k):
            stage[0] = "embed"
            return real[name](self, *a, **k)
        return hook

    def search_hook(name):
        # a large streamed IVF bank is embedded while it is added: that shows as "index"
        def hook(*a, **k):
            stage[0] = "index"
            out = real[name](*a, **k)
            stage[0] = "calib"
            return out
        return hook

    B.RawRows.embed_all, B.RawRows.embed_rows = embed_hook("embed_all"), embed_hook("embed_rows")
    B.make_search, B.make_search_from_chunks = search_hook("make_search"), search_hook("make_search_from_chunks")
    t = threading.Thread(target=monitor, daemon=True)
    t.start()
    det.fit(train)
    stage[0] = "done"
    time.sleep(0.1)
    stop.append(1)
    t.join()
    entries, dim = det.scorer_.search.shape
    bank_mb = entries * dim * 4 / 1e6                           # float32
    return {"n_train": n, "tune_malloc": tune, "baseline_rss_mb": round(base, 1), "bank_mb": round(bank_mb, 1),
            "above_baseline_mb": {k: round(v, 1) for k, v in peaks.items()},
            "peak_above_baseline_mb": round(max(peaks.values()), 1),
            "peak_over_bank": round(max(peaks.values()) / bank_mb, 2)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, nargs="+", default=[1000, 3000])
    ap.add_argument("--data", type=Path, default=Path("/tmp/patchbank-scale-data"))
    ap.add_argument("--no-tune", action="store_true", help="leave glibc malloc at its defaults")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3,
                    help="fresh processes per size (the peak moves by +-50 MB between runs of the same code)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one is not None:
        print(json.dumps(one(args.one, args.data, not args.no_tune, args.threads)))
        return
    if not (args.data / "train" / "good").is_dir():
        sys.exit(f"no synthetic data in {args.data}: run benchmarks/bench_scale.py first (it writes them)")
    if args.repeats < 1:
        sys.exit("--repeats must be at least 1")
    rows = []
    for n in args.images:
        cmd = [sys.executable, __file__, "--one", str(n), "--data", str(args.data), "--threads", str(args.threads)]
        runs = []
        for _ in range(args.repeats):
            out = subprocess.run(cmd + (["--no-tune"] if args.no_tune else []), capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit(f"size {n} failed:\n{out.stderr}")
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(runs[-1]), flush=True)
        # the run with the median peak stands for the size; every run's peak is kept
        runs.sort(key=lambda r: r["peak_above_baseline_mb"])
        row = dict(runs[(len(runs) - 1) // 2])
        row["peaks_of_runs_mb"] = [r["peak_above_baseline_mb"] for r in runs]
        row["runs"] = runs
        rows.append(row)
    if args.out:
        from patchbank.studies.speed import machine

        args.out.write_text(json.dumps({"rows": rows, "machine": machine(),
                                        "command": "python benchmarks/bench_fit_memory.py " + " ".join(sys.argv[1:])},
                                       indent=2) + "\n")


if __name__ == "__main__":
    main()
