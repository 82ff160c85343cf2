"""Speed of a preset against the backbone floor: ``patchbank benchmark`` and ``benchmarks/``.

**The floor** is what every memory-bank detector must do: read, resize and crop the images and
run the backbone's forward pass on them, nothing else.  It uses the detector's own loader
(:class:`~patchbank.io.images.ImageStream`, same decoder, same background decoding) and its own
forward (:meth:`FeatureExtractor.maps`), the same thread count and the same batch size, so a ratio
measures only what the detector adds (aggregation, fusion, projection, bank building, search,
maps).  Each run is repeated ``repeats`` times interleaved with the floor (floor, run, floor, run,
..., floor) and a ratio is the fastest run over the fastest floor (the usual ``timeit``
estimator: noise only ever adds time); every single time is kept in the result.  An untimed pass
over all images first warms the file cache.  Why it is measured this way: docs/performance.md,
"Speed study (patchbank.studies.speed)".

:func:`run_benchmark` reports, per coreset ratio: fit time and fit / floor, peak memory of the fit
(RSS; CUDA max allocated on a GPU), bank entries x dim and MB (entries x dim x bytes per value);
per predict batch size: ms per image, images/s, the read / extract / search / post split
(``Detector.last_timings_``), the floor per image and predict / floor, peak memory.  The result
carries :func:`machine` (CPU model, cores, library versions, thread counts of every runtime).
"""
from __future__ import annotations

import os
import platform
import resource
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from patchbank.config import DEFAULT_PRESET, Config
from patchbank.errors import PatchbankError
from patchbank.io.images import list_images
from patchbank.runtime.environment import library_versions
from patchbank.runtime.threads import thread_report


# ------------------------------------------------------------------------------ machine, memory
def machine() -> dict[str, Any]:
    """CPU model, cores, library versions and thread counts, for every benchmark JSON."""
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    out: dict[str, Any] = {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
                           **library_versions(), "threads": torch.get_num_threads(),
                           "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    try:
        import faiss

        out["faiss"] = faiss.__version__
    except ImportError:
        out["faiss"] = None
    try:
        out["memory_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1)
    except (ValueError, OSError, AttributeError):
        pass
    out["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    out["thread_pools"] = thread_report()
    return out


def _status_kb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux ``clear_refs``); False if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak resident memory (MB) since the last :func:`reset_peak_rss` (else since start)."""
    kb = _status_kb("VmHWM")
    if kb is None:
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KB on Linux
    return kb / 1024.0


class PeakMemory:
    """Context manager: peak RSS (MB) and, on CUDA, max allocated (MB) inside the block."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)

    def __enter__(self) -> "PeakMemory":
        self.resettable = reset_peak_rss()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc) -> None:
        self.rss_mb = peak_rss_mb()
        self.cuda_mb = (torch.cuda.max_memory_allocated(self.device) / 2**20
                        if self.device.type == "cuda" else None)

    def as_dict(self) -> dict[str, Any]:
        """``peak_rss_mb``, ``peak_rss_since`` (``phase`` or ``process``), ``cuda_max_allocated_mb``."""
        return {"peak_rss_mb": self.rss_mb, "peak_rss_since": "phase" if self.resettable else "process",
                "cuda_max_allocated_mb": self.cuda_mb}


# ------------------------------------------------------------------------------ the floor
def _sync(det) -> None:
    if det.device.type == "cuda":
        torch.cuda.synchronize(det.device)


@torch.inference_mode()
def floor_seconds(det, items: Sequence[Any], batch_size: int | None = None) -> float:
    """Read + resize + crop + backbone forward over ``items``: the detector's loader and forward,
    nothing else (see the module docstring)."""
    t0 = time.perf_counter()
    for x, _ in det.stream(list(items), batch_size):
        det.extractor.maps(x)
    _sync(det)
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------ data
def resolve_category(data: str | os.PathLike) -> Path:
    """A category folder (``train/good`` inside), or a category name under ``$PATCHBANK_DATA``
    or ``../shared/data``."""
    path = Path(data)
    if (path / "train" / "good").is_dir():
        return path
    roots = [os.environ.get("PATCHBANK_DATA"), "../shared/data", "shared/data"]
    for root in roots:
        if root and (Path(root) / str(data) / "train" / "good").is_dir():
            return Path(root) / str(data)
    raise PatchbankError(f"{data} is not an MVTec-layout category folder (no train/good inside) "
                         f"nor a category under $PATCHBANK_DATA or ../shared/data")


def test_images(root: Path) -> tuple[list[Path], np.ndarray]:
    """Images under ``root/test/<kind>/`` and their labels (0 for ``good``)."""
    items, labels = [], []
    test = root / "test"
    if not test.is_dir():
        return items, np.zeros(0, dtype=int)
    for folder in sorted(p for p in test.iterdir() if p.is_dir()):
        for path in list_images(folder):
            items.append(path)
            labels.append(0 if folder.name == "good" else 1)
    return items, np.asarray(labels)


# ------------------------------------------------------------------------------ the benchmark
def bank_bytes_per_value(config: Config) -> int:
    """Bytes per stored bank value: 2 for ``bank_dtype`` float16, else 4."""
    return 2 if config.bank_dtype == "float16" else 4


def time_predict(det, items: Sequence[Any], batch_size: int, repeats: int = 1) -> dict[str, Any]:
    """Predict ``items`` ``repeats`` times at ``batch_size``, interleaved with ``repeats + 1``
    floor measurements; times and split of the fastest predict, ratio fastest / fastest floor."""
    n = len(items)
    last: list = []                      # the latest predictions (one set kept at a time)

    def run():
        preds = det.predict(list(items), batch_size=batch_size)
        _sync(det)
        last[:] = [preds]
        return {k: v / n * 1000 for k, v in det.last_timings_.items()}

    totals, splits, floors, peak = _interleaved(run, lambda: floor_seconds(det, items, batch_size),
                                                repeats, det.device)
    best = int(np.argmin(totals))
    total, floor = totals[best], min(floors)
    preds = last[0]
    row = {"batch_size": batch_size, "images": n, "total_s": total, "total_s_all": totals,
           "ms_per_image": total / n * 1000, "images_per_s": n / total,
           "split_ms_per_image": splits[best], "split_sum_ms_per_image": sum(splits[best].values()),
           "floor_s": floors, "floor_ms_per_image": floor / n * 1000,
           "predict_ratio": total / floor,
           # batch sizes replayed as CUDA graphs (a GPU): the split cannot see inside a replay
           "cuda_graph_batches": graph_batches(det)}
    row.update(peak)
    return row, preds


def graph_batches(det) -> list[int]:
    """The batch sizes ``det``'s predictions replay as CUDA graphs (none on the CPU)."""
    graphs = det.model_.graphs
    return sorted({shape[0] for shape, _ in graphs.captured}) if graphs is not None else []


def _interleaved(run, floor, repeats: int, device,
                 before=None) -> tuple[list[float], list, list[float], dict]:
    """``floor(), run(), floor(), ..., run(), floor()``: the ``repeats`` run times, what each run
    returned, the ``repeats + 1`` floor times, and the runs' peak memory (per-field maximum).
    ``before()``, if given, runs untimed just before each run."""
    floors, times, outs, peak = [floor()], [], [], None
    for _ in range(repeats):
        if before is not None:
            before()
        with PeakMemory(device) as mem:
            t0 = time.perf_counter()
            outs.append(run())
            times.append(time.perf_counter() - t0)
        peak = _max_memory(peak, mem.as_dict())
        floors.append(floor())
    return times, outs, floors, peak


def _max_memory(a: dict[str, Any] | None, b: dict[str, Any]) -> dict[str, Any]:
    """Per-field maximum of two :class:`PeakMemory` results (None fields stay None)."""
    if a is None:
        return dict(b)
    return {k: (max(a[k], b[k]) if isinstance(a.get(k), (int, float)) and isinstance(b[k], (int, float))
                else b[k]) for k in b}


def check_settings(overrides: dict | None, ratios: Iterable[float] | None, batch_sizes: Iterable[int]) -> None:
    """Refuse (one line) a benchmark whose settings say two things: ``ratios`` beside a
    ``coreset_ratio`` override (the runs would use the ratios while the result recorded the
    override), or a ratio or batch size given twice (timed twice, two entries of one label)."""
    if ratios is not None and "coreset_ratio" in (overrides or {}):
        raise PatchbankError("the coreset ratio is set by --ratios; do not give --coreset-ratio too")
    for name, values in (("ratios", ratios), ("batch sizes", batch_sizes)):
        values = list(values or [])
        if len(set(values)) != len(values):
            raise PatchbankError(f"{name} repeat a value: {', '.join(map(str, values))}")


def benchmark_inputs(data: str | os.PathLike) -> list[Path]:
    """Every image a benchmark of ``data`` reads (training and test images): no output may be one."""
    train, test, _ = _benchmark_images(resolve_category(data), None)
    return [*train, *test]


def _benchmark_images(root: Path, max_test: int | None) -> tuple[list[Path], list[Path], np.ndarray]:
    """Train images, test images (at most ``max_test``, evenly spaced) and their labels; the
    train images stand in for the test set when the category has no test/ folder."""
    train = list_images(root / "train" / "good")
    test, labels = test_images(root)
    if not test:
        test, labels = list(train), np.zeros(0, dtype=int)
    if max_test is not None and len(test) > max_test:
        pick = np.linspace(0, len(test) - 1, max_test).round().astype(int)
        test = [test[i] for i in pick]
        labels = labels[pick] if labels.size else labels
    return train, test, labels


def _time_fits(probe, config: Config, train: list[Path], device: str, progress: bool,
               repeats: int) -> tuple[Any, dict[str, Any]]:
    """``repeats`` timed fits of ``config`` interleaved with floors; the last fitted detector and
    the ``fit`` entry of a run (fastest fit, all times, floors, ratio, split, peak memory)."""
    from patchbank.detector import Detector

    last: list = []                  # the latest fitted detector (only one bank alive at a time)

    def fit():
        det = Detector(config, device=device, progress=progress,
                       backbone=probe.backbone)                      # loaded and warm
        det.fit(train)
        _sync(det)
        last.append(det)
        return dict(det.fit_timings_)

    fits, fit_splits, floors, peak = _interleaved(
        fit, lambda: floor_seconds(probe, train, config.batch_size), repeats, probe.device,
        before=last.clear)          # the previous fit is freed outside the timer
    best = int(np.argmin(fits))
    fit_s, floor_fit = fits[best], min(floors)
    return last[0], {"fit_s": fit_s, "fit_s_all": fits, "floor_s": floors,
                     "floor_ms_per_image": floor_fit / len(train) * 1000,
                     "fit_ratio": fit_s / floor_fit, "split_s": fit_splits[best], **peak}


def _bank_entry(det, config: Config) -> dict[str, Any]:
    """Entries, dim, bytes per value, dtype, MB and search kind of a fitted detector's bank."""
    info = det.info()
    elem = bank_bytes_per_value(config)
    return {"entries": info["bank_entries"], "dim": info["bank_dim"], "bytes_per_value": elem,
            "dtype": config.bank_dtype, "mb": info["bank_entries"] * info["bank_dim"] * elem / 1e6,
            "search": info["search"]}


def run_benchmark(data: str | os.PathLike, preset: str = DEFAULT_PRESET, overrides: dict | None = None,
                  ratios: Iterable[float] | None = None, batch_sizes: Iterable[int] = (1, 16),
                  device: str = "cpu", max_test: int | None = None, progress: bool = False,
                  command: str | None = None, repeats: int = 3) -> dict[str, Any]:
    """Fit and predict timings of ``preset`` on one category against the floor (module docstring).

    ``ratios``: coreset ratios to fit (None: the preset's); ``batch_sizes``: predict batch sizes;
    ``max_test``: predict on at most this many test images (None: all; train images if the
    category has no test/ folder); ``repeats``: timed fits and predicts per setting (module
    docstring).
    """
    if repeats < 1:
        raise PatchbankError(f"repeats must be at least 1, got {repeats}")
    check_settings(overrides, ratios, batch_sizes)
    from patchbank.detector import Detector
    from patchbank.evaluation.metrics import image_metrics

    root = resolve_category(data)
    overrides = dict(overrides or {})
    base = Config.preset(preset, **overrides)
    ratio_list = [base.coreset_ratio] if ratios is None else [float(r) for r in ratios]
    batch_list = [int(b) for b in batch_sizes]
    train, test, labels = _benchmark_images(root, max_test)
    result: dict[str, Any] = {"data": str(root), "preset": preset, "overrides": overrides,
                              "device": str(device), "n_train": len(train), "n_test": len(test),
                              "batch_sizes": batch_list, "ratios": ratio_list, "repeats": repeats,
                              "runs": []}
    probe = Detector(base, device=device, progress=False)
    # the floor reads the images as the fit will (aspect "auto" reshapes the input to them)
    resolved, _ = probe.input_config(train)
    probe = Detector(resolved, device=device, progress=False, backbone=probe.backbone)
    result["input_size"] = list(resolved.input_size)
    result["network_size"] = list(resolved.network_size)
    # warm-up: load and convert the backbone, and read every file once, so that no timed pass
    # pays for cold files (the first pass over a folder can be far slower than the next ones)
    floor_seconds(probe, train, base.batch_size)
    floor_seconds(probe, test, max(batch_list))
    for ratio in ratio_list:
        config = base.replace(coreset_ratio=ratio)
        det, fit_entry = _time_fits(probe, config, train, device, progress, repeats)
        run: dict[str, Any] = {"coreset_ratio": ratio, "config": config.to_dict(), "fit": fit_entry,
                               "bank": _bank_entry(det, config), "predict": []}
        for bs in batch_list:
            row, preds = time_predict(det, test, bs, repeats)
            if labels.size and 0 < labels.sum() < labels.size:
                row.update(image_metrics(labels, np.array([p.score for p in preds])))
            run["predict"].append(row)
        result["runs"].append(run)
        del det
    result["machine"] = machine()
    result["command"] = command
    return result


def summary_lines(result: dict[str, Any]) -> list[str]:
    """A short human-readable table of :func:`run_benchmark`'s result."""
    lines = [f"{result['preset']} on {result['data']} ({result['n_train']} train, "
             f"{result['n_test']} test images), {result['device']}, "
             f"{result['machine']['threads']} threads, {result['machine']['cpu']}"]
    for run in result["runs"]:
        f, b = run["fit"], run["bank"]
        lines.append(f"ratio {run['coreset_ratio']:g}: bank {b['entries']:,} x {b['dim']} = "
                     f"{b['mb']:.2f} MB ({b['search']}); fit {f['fit_s']:.2f} s, floor "
                     f"{min(f['floor_s']):.2f} s, ratio {f['fit_ratio']:.3f}; "
                     f"peak RSS {f['peak_rss_mb']:.0f} MB")
        for p in run["predict"]:
            split = " ".join(f"{k} {v:.2f}" for k, v in p["split_ms_per_image"].items())
            lines.append(f"  batch {p['batch_size']:>3}: {p['ms_per_image']:.2f} ms/img "
                         f"({p['images_per_s']:.1f} img/s), floor {p['floor_ms_per_image']:.2f} "
                         f"ms/img, ratio {p['predict_ratio']:.3f}; split ms/img: {split}"
                         + (" (CUDA graph replays: the split cannot see their steps)"
                            if p.get("cuda_graph_batches") else ""))
    return lines


def write_json(result: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write :func:`run_benchmark`'s result as indented JSON (parent folders created); returns the path."""
    from patchbank.evaluation.reports import write_json as write_json_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_json_file(path, result, default=str)

