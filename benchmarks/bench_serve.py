"""Load and soak test of ``patchbank serve`` against a local server (127.0.0.1 only, bounded).

Load (the default): for each number of concurrent clients (``--clients 1,4,16,64``) every client
posts one image (multipart) after another for ``--seconds`` seconds; reported per level:
requests/s, images/s, p50/p95/p99 latency, errors (non-200 answers and transport errors), and
the server's RSS sampled every 0.5 s.  Run once with dynamic batching (the server's defaults)
and once with ``--no-batching`` (``--modes batching,no-batching``), each against a freshly
started server on a free port.

Soak (``--soak-minutes M``): ``--clients`` concurrent clients for M minutes, a share
``--bad-share`` of the requests malformed (garbage bytes, an empty file, a truncated PNG, bad
base64, a wrong content type, an oversized body, an unknown model); every good request must
come back 200 with a result, every bad one a 4xx with a one-line ``error``, never a 5xx or a
dropped connection; RSS is sampled throughout and its drift over the second half reported.

The model is ``--model FILE``, or fitted first from ``--fit FOLDER`` (default preset, or
``--preset``) into the output folder.  Results: ``OUT/serve.json`` and ``OUT/serve.md``.

    python benchmarks/bench_serve.py --fit ../shared/data/mtd/train/good --images ../shared/data/mtd/test \\
        -o benchmarks/results/serve_mtd --clients 1,4,16,64 --seconds 20
    python benchmarks/bench_serve.py --model M --images ../shared/data/mtd/test -o OUT --soak-minutes 10 \\
        --clients 8 --bad-share 0.2 --modes batching
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from patchbank.service.process import ServerProcess

IMAGE_EXT = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """Resident set size of ``pid`` and its children (uvicorn workers), MB, from /proc
    (``field="VmHWM"``: their peak resident sizes)."""
    total = 0.0
    pids = [pid] + _children(pid)
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    total += int(line.split()[1]) / 1024
        except OSError:
            pass
    return total


def _children(pid: int) -> list[int]:
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    out = [int(k) for k in kids]
    for k in list(out):
        out.extend(_children(k))
    return out


def bad_requests(image: bytes, model: str, max_mb: float) -> list[tuple[str, dict]]:
    """(what, httpx request kwargs) of malformed requests; each must get a 4xx."""
    png = io.BytesIO()
    Image.new("RGB", (64, 64), (120, 30, 200)).save(png, "PNG")
    trunc = png.getvalue()[: len(png.getvalue()) // 2]
    big = b"\0" * int((max_mb + 1) * 1e6)
    infer = f"/v2/models/{model}/infer"
    return [
        ("garbage bytes", dict(url=infer, files={"files": ("x.png", b"not an image at all", "image/png")})),
        ("empty file", dict(url=infer, files={"files": ("e.png", b"", "image/png")})),
        ("truncated png", dict(url=infer, files={"files": ("t.png", trunc, "image/png")})),
        ("bad base64", dict(url=infer, json={"images": [{"name": "b", "data": "%%%not-base64%%%"}]})),
        ("wrong content type", dict(url=infer, content=image, headers={"content-type": "text/plain"})),
        ("oversized", dict(url=infer, files={"files": ("big.png", big, "image/png")})),
        ("unknown model", dict(url="/v2/models/no-such-model/infer", files={"files": ("a.png", image, "image/png")})),
        ("malformed json", dict(url=infer, content=b"{\"images\": [", headers={"content-type": "application/json"})),
    ]


async def client_loop(client: httpx.AsyncClient, model: str, images: list[bytes], stop_at: float,
                      record: list, bad: list | None, bad_share: float, rng: random.Random) -> None:
    while time.monotonic() < stop_at:
        is_bad = bad is not None and rng.random() < bad_share
        if is_bad:
            what, kwargs = rng.choice(bad)
            kwargs = dict(kwargs)
            url = kwargs.pop("url")
        else:
            what, url = "good", f"/v2/models/{model}/infer"
            kwargs = {"files": {"files": ("img.png", rng.choice(images), "image/png")}}
        t0 = time.perf_counter()
        try:
            r = await client.post(url, **kwargs)
            status, body = r.status_code, r.text
        except httpx.HTTPError as exc:
            status, body = -1, f"{type(exc).__name__}: {exc}"
        ms = 1000 * (time.perf_counter() - t0)
        ok = (status == 200 and '"normalized_score"' in body) if not is_bad else \
            (400 <= status < 500 and _one_line_error(body))
        record.append((what, status, ms, ok, None if ok else body[:300]))


def _one_line_error(body: str) -> bool:
    try:
        err = json.loads(body).get("error")
    except (ValueError, AttributeError):
        return False
    return isinstance(err, str) and "\n" not in err and len(err) > 0


async def run_level(url: str, model: str, images: list[bytes], clients: int, seconds: float, pid: int,
                    bad: list | None = None, bad_share: float = 0.0, seed: int = 0) -> dict:
    record: list = []
    rss: list[tuple[float, float]] = []
    stop_at = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        async def sample():
            t0 = time.monotonic()
            while time.monotonic() < stop_at:
                rss.append((time.monotonic() - t0, rss_mb(pid)))
                await asyncio.sleep(0.5)
        t0 = time.perf_counter()
        await asyncio.gather(sample(), *[client_loop(client, model, images, stop_at, record, bad, bad_share,
                                                     random.Random(seed * 1000 + i)) for i in range(clients)])
        wall = time.perf_counter() - t0
    good = [r for r in record if r[0] == "good"]
    lat = np.array([r[2] for r in good if r[3]]) if good else np.array([])
    half = [m for t, m in rss if t >= seconds / 2]
    out = {
        "clients": clients, "seconds": round(wall, 2), "requests": len(record), "good_requests": len(good),
        "requests_per_s": round(len(good) / wall, 2),
        "p50_ms": _pct(lat, 50), "p95_ms": _pct(lat, 95), "p99_ms": _pct(lat, 99),
        "errors": sum(1 for r in good if not r[3]),
        "bad_requests": len(record) - len(good),
        "bad_not_4xx": sum(1 for r in record if r[0] != "good" and not r[3]),
        "status_5xx": sum(1 for r in record if r[1] >= 500),
        "transport_errors": sum(1 for r in record if r[1] == -1),
        "rss_mb_start": round(rss[0][1], 1) if rss else None,
        "rss_mb_max": round(max(m for _, m in rss), 1) if rss else None,
        "rss_mb_end": round(rss[-1][1], 1) if rss else None,
        "rss_mb_second_half_drift": round(half[-1] - half[0], 1) if len(half) > 1 else None,
        "rss_series": [(round(t, 1), round(m, 1)) for t, m in rss[:: max(1, len(rss) // 60)]],
        "failures": [r for r in record if not r[3]][:10],
    }
    return out


def _pct(x: np.ndarray, q: float):
    return round(float(np.percentile(x, q)), 1) if x.size else None


def load_images(folder: Path, n: int, seed: int) -> list[bytes]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXT)
    if not files:
        raise SystemExit(f"no images in {folder}")
    random.Random(seed).shuffle(files)
    return [p.read_bytes() for p in files[:n]]


def fit_model(folder: Path, out: Path, preset: str) -> Path:
    path = out / f"model_{preset}.patchbank"
    if not path.exists():
        subprocess.run([sys.executable, "-m", "patchbank.cli", "fit", str(folder), "-o", str(path),
                        "--preset", preset, "--quiet"], check=True)
    return path


def markdown(results: dict) -> str:
    lines = [f"# patchbank serve: {results['kind']}", "",
             f"Model `{results['model']}` (runtime {results.get('runtime', 'torch')}), images from `{results['images']}`; machine: {results['machine']}.",
             f"Command: `{results['command']}`", ""]
    lines += ["| mode | clients | req/s | p50 ms | p95 ms | p99 ms | errors | bad requests (all 4xx) | 5xx | RSS MB start / max / end | RSS drift 2nd half |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for mode, levels in results["modes"].items():
        for r in levels:
            bad = f"{r['bad_requests']} ({'yes' if r['bad_not_4xx'] == 0 else 'NO: ' + str(r['bad_not_4xx'])})"
            lines.append(f"| {mode} | {r['clients']} | {r['requests_per_s']} | {r['p50_ms']} | {r['p95_ms']} | "
                         f"{r['p99_ms']} | {r['errors']} | {bad} | {r['status_5xx']} | {r['rss_mb_start']} / "
                         f"{r['rss_mb_max']} / {r['rss_mb_end']} | {r['rss_mb_second_half_drift']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path)
    ap.add_argument("--fit", type=Path, help="fit a model on this folder of good images first")
    ap.add_argument("--preset", default="patchbank")
    ap.add_argument("--images", type=Path, required=True, help="folder of request images (recursive)")
    ap.add_argument("--n-images", type=int, default=64)
    ap.add_argument("-o", "--out", type=Path, required=True)
    ap.add_argument("--clients", default="1,4,16,64")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--modes", default="batching,no-batching")
    ap.add_argument("--soak-minutes", type=float, default=0.0)
    ap.add_argument("--bad-share", type=float, default=0.2)
    ap.add_argument("--max-request-mb", type=float, default=8.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runtime", default="torch", choices=("torch", "onnx", "openvino"),
                    help="passed to patchbank serve: onnx / openvino serve an export folder (--model DIR)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.seconds > 600 or args.soak_minutes > 60:
        raise SystemExit("bounded: at most 600 s per level and 60 min of soak")
    args.out.mkdir(parents=True, exist_ok=True)
    model = args.model or fit_model(args.fit, args.out, args.preset)
    images = load_images(args.images, args.n_images, args.seed)
    soak = args.soak_minutes > 0
    levels = [int(c) for c in args.clients.split(",")]
    results = {"kind": "soak" if soak else "load", "model": str(model), "images": str(args.images),
               "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                          f"threads {args.threads}", "runtime": args.runtime,
               "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]), "modes": {}}
    for mode in args.modes.split(","):
        extra = ["--threads", str(args.threads), "--max-request-mb", str(args.max_request_mb),
                 "--runtime", args.runtime]
        extra += ["--no-batching"] if mode == "no-batching" else []
        with ServerProcess([model], ["--quiet", *extra], log=args.out / f"server_{mode}.log") as server:
            name = server.models()[0]["name"]
            bad = bad_requests(images[0], name, args.max_request_mb) if soak else None
            out = []
            for c in levels:
                seconds = args.soak_minutes * 60 if soak else args.seconds
                print(f"{mode}: {c} clients for {seconds:.0f} s", file=sys.stderr, flush=True)
                r = asyncio.run(run_level(server.url, name, images, c, seconds, server.pid, bad,
                                          args.bad_share if soak else 0.0, args.seed))
                print({k: v for k, v in r.items() if k not in ("rss_series", "failures")}, file=sys.stderr, flush=True)
                out.append(r)
            results["modes"][mode] = out
            if not server.alive():
                raise SystemExit(f"the server died; see {args.out / f'server_{mode}.log'}")
    (args.out / "serve.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "serve.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
