"""How ``patchbank serve`` decodes uploads: JPEG answers against the library's, and the server's
memory for a request of large, highly compressible images.

    python benchmarks/serve_uploads.py MODEL.patchbank ../shared/data/ksdd/test/good \\
        --images 8 --big 8 --big-side 8000 -o benchmarks/results/serve_uploads/ksdd.json

A real server (``ServerProcess``, 127.0.0.1) serves MODEL.  Two checks:

* **JPEG parity.** The first ``--images`` images of the folder are posted as they are stored;
  each answer's score is compared with ``Detector.predict`` on the file, and with the library's
  answer for the same bytes decoded at full scale (how the service read uploads before
  session 28).
* **Request memory.** ``--concurrent`` requests at once, each of ``--big`` flat-grey
  ``--big-side`` x ``--big-side`` PNGs (a few hundred KB each; every one under the decoder's
  per-image budget), then the server's peak resident memory (``VmHWM``) before and after, and
  the answers' statuses (``--heatmap``: each asks for its heatmaps, drawn at the original size).

Writes one JSON with every score, both memory figures, the machine and the command.
"""
from __future__ import annotations

import argparse
import io
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from bench_serve import rss_mb
from patchbank.detector import Detector
from patchbank.io.images import decode_bytes, list_images
from patchbank.service.process import ServerProcess
from patchbank.studies.speed import machine, write_json


def flat_png(side: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (side, side), (128, 128, 128)).save(buf, "PNG")
    return buf.getvalue()


def main(argv=None) -> dict:
    import httpx

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("folder", type=Path, help="images to post as stored (JPEGs for the parity check)")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--big", type=int, default=8)
    ap.add_argument("--big-side", type=int, default=8000)
    ap.add_argument("--concurrent", type=int, default=1, help="big requests sent at once")
    ap.add_argument("--heatmap", action="store_true", help="the big requests ask for heatmaps")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("-o", "--out", type=Path, required=True)
    args = ap.parse_args(argv)
    name = args.model.stem
    paths = list_images(args.folder)[:args.images]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        det = Detector.load(args.model, progress=False)
        by_file = det.predict(paths)
        full_scale = det.predict([decode_bytes(p.read_bytes(), p.name) for p in paths])
    out: dict = {"model": str(args.model), "folder": str(args.folder)}
    with ServerProcess([args.model], ["--quiet", "--threads", str(args.threads)]) as server, \
            httpx.Client(base_url=server.url, timeout=600) as client:
        r = client.post(f"/v2/models/{name}/infer",
                        files=[("files", (p.name, p.read_bytes(), "application/octet-stream")) for p in paths])
        r.raise_for_status()
        served = [g["score"] for g in r.json()["results"]]
        out["parity"] = [{"image": p.name, "served": s, "library_file": f.score, "full_scale_decode": u.score,
                          "served_equals_file": s == f.score,
                          "full_scale_relative_difference": abs(u.score - f.score) / abs(f.score)}
                         for p, s, f, u in zip(paths, served, by_file, full_scale)]
        data = flat_png(args.big_side)
        files = [("files", (f"{i}.png", data, "image/png")) for i in range(args.big)]
        before = rss_mb(server.pid, "VmHWM")
        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.concurrent) as pool:
            answers = list(pool.map(lambda _: client.post(f"/v2/models/{name}/infer", files=files,
                                                          params={"heatmap": str(args.heatmap).lower()}),
                                    range(args.concurrent)))
        seconds = time.perf_counter() - t0
        out["big_request"] = {"images": args.big, "side": args.big_side, "png_bytes_each": len(data),
                              "concurrent": args.concurrent, "heatmap": args.heatmap, "statuses": [a.status_code for a in answers],
                              "seconds": seconds,
                              "answers": [a.json().get("error") if a.status_code != 200 else "scored"
                                          for a in answers],
                              "peak_rss_mb_before": before, "peak_rss_mb_after": rss_mb(server.pid, "VmHWM")}
    rel = [row["full_scale_relative_difference"] for row in out["parity"]]
    print(f"JPEG parity: {sum(row['served_equals_file'] for row in out['parity'])} of {len(paths)} served "
          f"scores equal the library's on the file; full-scale decoding differs by "
          f"{min(rel):.4f}-{max(rel):.4f} relative")
    b = out["big_request"]
    print(f"{b['concurrent']} request(s) at once of {b['images']} flat {b['side']} px PNGs "
          f"({b['png_bytes_each']:,} bytes each): statuses {b['statuses']} in {b['seconds']:.1f} s "
          f"({b['answers'][0]}); server peak RSS {b['peak_rss_mb_before']:.0f} -> "
          f"{b['peak_rss_mb_after']:.0f} MB")
    out.update(machine=machine(), command=" ".join(sys.argv), mean_relative_difference=float(np.mean(rel)))
    write_json(out, args.out)
    return out


if __name__ == "__main__":
    main()
