"""The exported model (``patchbank export``) on ONNX Runtime and OpenVINO against the torch path.

Two modes, both on one MVTec-layout category with the default preset (seed 0), the model fitted
once and kept in ``--work`` (``model.patchbank``, export folders beside it):

* ``speed``: per-image predict latency at each ``--batch-sizes`` for torch, ONNX Runtime and
  OpenVINO (``--ov-hints``), each against its own floor (read + resize + crop + the backbone
  forward in that runtime: torch's ``FeatureExtractor.maps``, or a backbone-only graph exported
  the same way); ``--repeats`` interleaved passes over every ``--stride``-th test image, the
  fastest kept and every pass recorded.
* ``settings``: the exported graph alone (random input, no image reading) under ONNX Runtime's
  optimisation levels and OpenVINO's LATENCY hint, at 1 and ``--threads`` threads, ms per image
  at batch 1 and 16, ``--repeats`` passes each.
* ``metrics``: the seven metrics of torch, ONNX Runtime and OpenVINO predictions (batch 16) on
  the whole test set, and of an export with a float16 bank (``--fp16``), plus the parity numbers
  (max relative score difference, max map difference / map range, decisions that differ).

    flock /tmp/patchbank-cpu.lock python benchmarks/bench_runtimes.py speed ../shared/data/mtd \
        --work /tmp/rt_mtd --threads 2 --out benchmarks/results/runtimes_mtd_speed.json
    python benchmarks/bench_runtimes.py metrics ../shared/data/ksdd --work /tmp/rt_ksdd --fp16 \
        --out benchmarks/results/runtimes_ksdd_metrics.json
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from patchbank.detector import Detector
from patchbank.evaluation.scoring import score_category
from patchbank.export.exporter import export_model
from patchbank.export.runtimes import ExportedModel
from patchbank.io.datasets import read_dataset
from patchbank.runtime.threads import set_threads
from patchbank.studies.speed import machine

KEYS = ("image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=("speed", "metrics", "settings"))
    ap.add_argument("root", type=Path, help="one MVTec-layout category folder")
    ap.add_argument("--work", type=Path, required=True, help="folder for the model and its exports")
    ap.add_argument("--preset", default="patchbank")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-sizes", default="1,16")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--stride", type=int, default=3, help="speed: every n-th test image")
    ap.add_argument("--ov-hints", default="LATENCY,THROUGHPUT")
    ap.add_argument("--fp16", action="store_true", help="metrics: also a float16-bank export")
    ap.add_argument("--out", type=Path, required=True)
    return ap.parse_args(argv)


def prepare(args) -> tuple[Detector, object, Path]:
    """The fitted model (cached in --work) and its export folder (onnx + openvino)."""
    (cat,) = read_dataset(args.root)
    args.work.mkdir(parents=True, exist_ok=True)
    path = args.work / "model.patchbank"
    if not path.is_file():
        t0 = time.perf_counter()
        Detector.from_preset(args.preset, progress=False).fit(list(cat.train)).save(path)
        print(f"fit {time.perf_counter() - t0:.1f} s", flush=True)
    det = Detector.load(path, progress=False)
    folder = args.work / "export"
    if not (folder / "patchbank_export.json").is_file():
        export_model(det, folder, ["onnx", "openvino"], overwrite=True)
    return det, cat, folder


def backbone_folder(det: Detector, work: Path) -> Path:
    """A backbone-only graph (input -> tapped maps), exported the same way, for the floors."""
    folder = work / "backbone"
    onnx_path = folder / "backbone.onnx"
    if not onnx_path.is_file():
        folder.mkdir(exist_ok=True)
        x = torch.zeros(2, 3, *det.config.network_size)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
            warnings.simplefilter("ignore")
            prog = torch.onnx.export(det.extractor.backbone.eval(), (x,), None, input_names=["images"],
                                     dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=4096)}},
                                     dynamo=True, optimize=True)
            prog.save(str(onnx_path), external_data=False)
        import openvino as ov

        ov.save_model(ov.convert_model(str(onnx_path)), str(folder / "backbone.xml"), compress_to_fp16=False)
    return folder


def backbone_runner(kind: str, folder: Path, threads: int, hint: str | None):
    """``run(x numpy)`` of the backbone graph in ONNX Runtime or OpenVINO, set up as the runtime is."""
    if kind == "onnx":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        sess = ort.InferenceSession(str(folder / "backbone.onnx"), opts, providers=["CPUExecutionProvider"])
        return lambda x: sess.run(None, {"images": x})
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(folder / "backbone.xml")), "CPU",
                                  {"PERFORMANCE_HINT": hint, "INFERENCE_PRECISION_HINT": "f32",
                                   "INFERENCE_NUM_THREADS": threads})
    req = compiled.create_infer_request()
    return lambda x: req.infer({0: x})


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def speed(args) -> dict:
    det, cat, folder = prepare(args)
    bb = backbone_folder(det, args.work)
    items = [str(p) for p in cat.test[::args.stride]]
    n = len(items)
    batches = [int(b) for b in args.batch_sizes.split(",")]
    hints = [h for h in args.ov_hints.split(",") if h]
    engines = {"torch": (det, lambda x: det.extractor.maps(x))}
    ort_model = ExportedModel(folder, "onnx", threads=args.threads, progress=False)
    engines["onnx"] = (ort_model, backbone_runner("onnx", bb, args.threads, None))
    for hint in hints:
        ov_model = ExportedModel(folder, "openvino", threads=args.threads, hint=hint, progress=False)
        engines[f"openvino_{hint.lower()}"] = (ov_model, backbone_runner("openvino", bb, args.threads, hint))
    for model, _ in engines.values():          # warm-up: first calls, page cache
        model.predict(items[:16], batch_size=16)
    runs: dict[str, dict[str, list[float]]] = {}
    for rep in range(args.repeats):
        for bs in batches:
            for name, (model, backbone) in engines.items():
                stream = det.stream(items, bs)
                floor = timed(lambda: [backbone(x if name == "torch" else x.numpy()) for x, _ in stream])
                pred = timed(lambda: model.predict(items, batch_size=bs))
                key = f"{name}_b{bs}"
                runs.setdefault(key, {"floor_ms": [], "predict_ms": []})
                runs[key]["floor_ms"].append(1000 * floor / n)
                runs[key]["predict_ms"].append(1000 * pred / n)
                print(f"rep {rep} {key}: predict {1000 * pred / n:.1f} ms/img, floor {1000 * floor / n:.1f}",
                      flush=True)
    table = {k: {"predict_ms": min(v["predict_ms"]), "floor_ms": min(v["floor_ms"]),
                 "ratio": min(v["predict_ms"]) / min(v["floor_ms"]),
                 "predict_ms_all": v["predict_ms"], "floor_ms_all": v["floor_ms"]} for k, v in runs.items()}
    for bs in batches:
        base = table[f"torch_b{bs}"]["predict_ms"]
        for k in table:
            if k.endswith(f"_b{bs}"):
                table[k]["vs_torch"] = table[k]["predict_ms"] / base
    return {"n_images": n, "stride": args.stride, "repeats": args.repeats, "runs": table}


def settings(args) -> dict:
    """ms per image of the exported graph under each runtime setting (see the module docstring)."""
    import onnxruntime as ort
    import openvino as ov

    _, _, folder = prepare(args)
    xs = {bs: np.random.RandomState(0).randn(bs, 3, *json.loads(
        (folder / "patchbank_export.json").read_text())["input_size"]).astype(np.float32) for bs in (1, 16)}
    runners = {}
    for level in ("ORT_ENABLE_BASIC", "ORT_ENABLE_EXTENDED", "ORT_ENABLE_ALL"):
        for th in sorted({1, args.threads}):
            opts = ort.SessionOptions()
            opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
            opts.intra_op_num_threads, opts.inter_op_num_threads = th, 1
            sess = ort.InferenceSession(str(folder / "model.onnx"), opts, providers=["CPUExecutionProvider"])
            runners[f"onnx {level} t{th}"] = lambda x, s=sess: s.run(None, {"images": x})
    core = ov.Core()
    for th in sorted({1, args.threads}):
        req = core.compile_model(core.read_model(str(folder / "model.xml")), "CPU",
                                 {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32",
                                  "INFERENCE_NUM_THREADS": th}).create_infer_request()
        runners[f"openvino LATENCY t{th}"] = lambda x, r=req: r.infer({0: x})
    out: dict[str, dict[str, list[float]]] = {}
    for _ in range(args.repeats):
        for name, run in runners.items():
            for bs, x in xs.items():
                n = 20 if bs == 1 else 2
                run(x)
                t = timed(lambda: [run(x) for _ in range(n)])
                out.setdefault(name, {}).setdefault(f"b{bs}_ms", []).append(1000 * t / n / bs)
        print({k: {b: [round(v, 1) for v in vs] for b, vs in d.items()} for k, d in out.items()}, flush=True)
    return {"settings": out}


def parity(preds, ref) -> dict:
    rel = max(abs(p.score - r.score) / max(abs(r.score), 1e-12) for p, r in zip(preds, ref))
    # the raw image score's own units (a mean patch distance), beside the relative difference
    absolute = max(abs(p.score - r.score) for p, r in zip(preds, ref))
    maps = max(float(np.abs(p.anomaly_map - r.anomaly_map).max())
               / max(float(r.anomaly_map.max() - r.anomaly_map.min()), 1e-12) for p, r in zip(preds, ref))
    return {"max_rel_score_diff": rel, "max_abs_score_diff": absolute, "max_map_diff_over_range": maps,
            "decisions_differ": int(sum(p.is_anomalous != r.is_anomalous for p, r in zip(preds, ref)))}


def metrics(args) -> dict:
    det, cat, folder = prepare(args)
    items = [str(p) for p in cat.test]
    out = {"n_test": len(items)}
    ref = det.predict(items, batch_size=16)
    out["torch"] = score_category(cat, ref, det.config)
    models = {"onnx": (folder, "onnx"), "openvino": (folder, "openvino")}
    if args.fp16:
        f16 = args.work / "export_fp16"
        if not (f16 / "patchbank_export.json").is_file():
            export_model(det, f16, ["onnx"], overwrite=True, bank_dtype="float16")
        models["onnx_fp16_bank"] = (f16, "onnx")
        out["fp16_bank_bytes"] = json.loads((f16 / "patchbank_export.json").read_text())["bank"]["bytes"]
    for name, (path, runtime) in models.items():
        preds = ExportedModel(path, runtime, threads=args.threads, progress=False).predict(items, batch_size=16)
        out[name] = {**score_category(cat, preds, det.config), **parity(preds, ref)}
        delta = max(abs(out[name][k] - out["torch"][k]) for k in KEYS if out["torch"][k] is not None)
        out[name]["max_metric_diff"] = delta
        print(name, {k: round(v, 6) for k, v in out[name].items() if v is not None}, flush=True)
    print("torch", {k: round(v, 6) for k, v in out["torch"].items() if v is not None})
    return out


def main(argv=None) -> None:
    args = parse_args(argv)
    set_threads(args.threads)
    result = {"speed": speed, "metrics": metrics, "settings": settings}[args.mode](args)
    result.update(mode=args.mode, root=str(args.root), preset=args.preset, threads=args.threads,
                  machine=machine(), versions={m: _version(m) for m in ("onnxruntime", "openvino", "onnx")})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except ImportError:
        return None


if __name__ == "__main__":
    main()
