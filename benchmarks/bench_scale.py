"""Scale study: fit time, bank size, peak memory and per-image latency vs the number of training images.

Training images are SYNTHETIC (``patchbank.io.synthetic``, 256 x 256 woven-mesh PNGs, generated
once into ``--data``, test images with another seed into ``--test-data``; image i depends only on the seed and i, so every size uses a prefix of the
same images).  Each size runs in a fresh process, so its peak RSS (Linux VmHWM) is its own:

    python benchmarks/bench_scale.py                       # 100 300 1000 3000 10000, lmf-core
    python benchmarks/bench_scale.py --sizes 100,300 --threads 2

Writes ``benchmarks/results/scale_<preset>.json`` (rows + machine), ``docs/scale.png`` (log-log)
and prints a markdown table.  Per-image latency is predict over ``--test`` synthetic test images
at batch 1 and 16 against the floor (read + resize + backbone forward, the package's floor).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def one(args) -> dict:
    """One size, in this process: fit on the first ``args.one`` images, predict at batch 1 and 16;
    the row (timings against the floor, bank, peak RSS, machine)."""
    from patchbank.studies.speed import PeakMemory, floor_seconds, machine, peak_rss_mb, reset_peak_rss
    from patchbank.config import Config
    from patchbank.detector import Detector
    from patchbank.io.images import list_images
    from patchbank.runtime.malloc import tune_malloc
    from patchbank.runtime.threads import set_threads

    tune_malloc()                                          # as the patchbank command does
    set_threads(args.threads)
    data = Path(args.data)
    train = list_images(data / "train" / "good")[:args.one]
    test = list_images(Path(args.test_data) / "test" / "good")[:args.test]
    config = Config.preset(args.preset)
    det = Detector(config, progress=False)
    floor_seconds(det, train, config.batch_size)          # load, warm up, read every file once
    floor_seconds(det, test, 16)
    reset_peak_rss()
    baseline = peak_rss_mb()
    floor_before = floor_seconds(det, train, config.batch_size)
    with PeakMemory(det.device) as mem:
        t0 = time.perf_counter()
        det.fit(train)
        fit_s = time.perf_counter() - t0
    floor_after = floor_seconds(det, train, config.batch_size)
    info = det.info()
    row = {"n_train": len(train), "fit_s": fit_s, "floor_fit_s": [floor_before, floor_after],
           "fit_ratio": fit_s / ((floor_before + floor_after) / 2),
           "bank_entries": info["bank_entries"], "bank_dim": info["bank_dim"],
           "bank_mb": info["bank_bytes"] / 1e6, "search": info["search"],
           "rss_before_fit_mb": baseline, "peak_rss_fit_mb": mem.rss_mb,
           "fit_memory_above_baseline_mb": mem.rss_mb - baseline}
    for bs in (1, 16):
        f0 = floor_seconds(det, test, bs)
        t0 = time.perf_counter()
        det.predict(test, batch_size=bs)
        pred = time.perf_counter() - t0
        f1 = floor_seconds(det, test, bs)
        row[f"predict_ms_b{bs}"] = pred / len(test) * 1000
        row[f"floor_ms_b{bs}"] = (f0 + f1) / 2 / len(test) * 1000
        row[f"predict_ratio_b{bs}"] = pred / ((f0 + f1) / 2)
        row[f"split_ms_b{bs}"] = {k: v / len(test) * 1000 for k, v in det.last_timings_.items()}
    row["machine"] = machine()
    return row


def plot(rows, path: Path) -> None:
    """Log-log PNG of fit time, bank MB, fit memory and latency against the training images."""
    from patchbank.evaluation import plots

    n = [r["n_train"] for r in rows]
    fig, ax = plots.new_axes(figsize=(6.4, 4.4), dpi=110)
    ax.loglog(n, [r["fit_s"] for r in rows], "o-", label="fit time (s)")
    ax.loglog(n, [r["bank_mb"] for r in rows], "s-", label="bank (MB)")
    ax.loglog(n, [r["fit_memory_above_baseline_mb"] for r in rows], "^-", label="fit peak RSS above baseline (MB)")
    ax.loglog(n, [r["predict_ms_b1"] for r in rows], "d-", label="predict latency, batch 1 (ms/img)")
    ax.loglog(n, [r["predict_ms_b16"] for r in rows], "v-", label="predict latency, batch 16 (ms/img)")
    ax.set_xlabel("training images (synthetic, 256 px)")
    ax.set_title("patchbank lmf-core: growth with the training set")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    plots.save(fig, path)


def table(rows) -> str:
    """The rows as a Markdown table (as in docs/performance.md, Scale)."""
    lines = ["| train images | fit | floor (fit) | fit / floor | bank | bank MB | peak RSS in fit | above baseline "
             "| search | predict ms/img b1 (floor) | b16 (floor) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['n_train']:,} | {r['fit_s']:.1f} s | {sum(r['floor_fit_s']) / 2:.1f} s | {r['fit_ratio']:.2f} "
            f"| {r['bank_entries']:,} x {r['bank_dim']} | {r['bank_mb']:.1f} | {r['peak_rss_fit_mb']:.0f} MB "
            f"| {r['fit_memory_above_baseline_mb']:.0f} MB | {r['search']} "
            f"| {r['predict_ms_b1']:.1f} ({r['floor_ms_b1']:.1f}) | {r['predict_ms_b16']:.1f} ({r['floor_ms_b16']:.1f}) |")
    return "\n".join(lines)


def main(argv=None):
    """Generate the data if needed, run every size in a fresh process, write JSON, PNG and table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100,300,1000,3000,10000")
    ap.add_argument("--preset", default="lmf-core")
    ap.add_argument("--data", default="/tmp/patchbank-scale-data", help="where the synthetic images go")
    ap.add_argument("--test", type=int, default=32, help="synthetic test images for the latency")
    ap.add_argument("--test-data", default="/tmp/patchbank-scale-test", help="where the synthetic test images go")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--plot", type=Path, default=Path("docs/scale.png"))
    ap.add_argument("--append", action="store_true",
                    help="merge these sizes into an existing result file (rows of other sizes kept)")
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one is not None:
        print(json.dumps(one(args)))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    data = Path(args.data)
    have = len(list((data / "train" / "good").glob("*.png"))) if (data / "train" / "good").is_dir() else 0
    if have < max(sizes):
        from patchbank.io.synthetic import make_dataset

        print(f"writing {max(sizes)} synthetic training images to {data} ...", file=sys.stderr)
        make_dataset(data, n_train=max(sizes), n_test_good=args.test, n_test_defect=1, size=256, seed=0)
    test_dir = Path(args.test_data) / "test" / "good"
    if not test_dir.is_dir() or len(list(test_dir.glob("*.png"))) < args.test:
        from patchbank.io.synthetic import make_dataset

        make_dataset(args.test_data, n_train=1, n_test_good=args.test, n_test_defect=1, size=256, seed=1)
    rows = []
    for n in sizes:
        cmd = [sys.executable, __file__, "--one", str(n), "--data", str(data), "--preset", args.preset,
               "--test", str(args.test), "--test-data", str(args.test_data)] + (["--threads", str(args.threads)] if args.threads else [])
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"size {n} failed:\n{out.stderr}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"{n}: fit {r['fit_s']:.1f}s (ratio {r['fit_ratio']:.2f}), bank {r['bank_mb']:.1f} MB, "
              f"peak RSS {r['peak_rss_fit_mb']:.0f} MB, b1 {r['predict_ms_b1']:.1f} ms, "
              f"b16 {r['predict_ms_b16']:.1f} ms", file=sys.stderr, flush=True)
    out_file = args.out / f"scale_{args.preset}.json"
    if args.append and out_file.is_file():
        done = {r["n_train"] for r in rows}
        rows = sorted([r for r in json.loads(out_file.read_text())["rows"] if r["n_train"] not in done] + rows,
                      key=lambda r: r["n_train"])
    result = {"preset": args.preset, "data": "synthetic (patchbank.io.synthetic, 256 px, seed 0)",
              "rows": rows, "machine": rows[-1]["machine"],
              "command": "python benchmarks/bench_scale.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    args.out.mkdir(parents=True, exist_ok=True)
    out_file.write_text(json.dumps(result, indent=2) + "\n")
    plot(rows, args.plot)
    print(table(rows))


if __name__ == "__main__":
    main()
