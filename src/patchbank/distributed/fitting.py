"""Many fits at once: each category of a dataset fitted as one Ray task.

Each task fits one category exactly as the local ``fit`` does (the same Config, so the same seed
and the same bank, calibration and routing prototypes) and hands back its model file's bytes.
The driver then either keeps one single-category model per category, or assembles one routed
multi-category model by putting the per-category files side by side in one file
(:func:`merge_multi`: every category's tensors byte for byte, the header's category order and
per-category info joined) -- the same file a local ``MultiDetector.fit`` of those categories
writes, since every category of a multi-category model is fitted on its own anyway.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

from patchbank.config import Config
from patchbank.errors import PatchbankError


def fit_task(name: str, images: Sequence[str], config: dict[str, Any], multi: bool, device: str,
             threads: int) -> bytes:
    """Ray task body: fit category ``name`` on ``images``; the model file's bytes (a one-category
    MultiDetector with its routing prototypes if ``multi``, else a Detector)."""
    from patchbank.detector import Detector
    from patchbank.multi import MultiDetector
    from patchbank.runtime.threads import set_threads

    set_threads(threads)
    cfg = Config.from_dict(config)
    if multi:
        model = MultiDetector(cfg, device=device, progress=False).fit({name: list(images)})
    else:
        model = Detector(cfg, device=device, progress=False).fit(list(images))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.patchbank"
        model.save(path)
        return path.read_bytes()


def merge_multi(parts: Sequence[bytes], path: str | os.PathLike) -> None:
    """Write one multi-category model file at ``path`` from one-category model files' bytes
    (same configuration; categories in the order given)."""
    import torch

    from patchbank.io.model_file import load_model, save_model

    tensors: dict[str, torch.Tensor] = {}
    merged: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory() as tmp:
        for k, data in enumerate(parts):
            part = Path(tmp) / f"{k}.patchbank"
            part.write_bytes(data)
            t, meta = load_model(part)
            tensors.update(t)
            if merged is None:
                merged = {**meta, "category_order": [], "categories": {}, "bank_bytes": 0}
            elif meta["config"] != merged["config"]:
                raise PatchbankError("the categories to merge were fitted with different configurations")
            merged["category_order"] += meta["category_order"]
            merged["categories"].update(meta["categories"])
            merged["bank_bytes"] += int(meta["bank_bytes"])
    if merged is None:
        raise PatchbankError("no categories to merge")
    save_model(path, tensors, merged, overwrite=True)


def fit_categories(categories: Mapping[str, Sequence[Any]], config: Config, *, multi: bool = True,
                   device: str = "cpu", threads: int = 1, address: str | None = None,
                   max_running: int | None = None) -> Any:
    """Fit every category (``{name: images}``) as one Ray task each.

    Returns a :class:`~patchbank.multi.MultiDetector` of all categories (``multi``), else
    ``{name: Detector}``.  ``threads`` per task; at most ``max_running`` tasks at once.
    """
    from patchbank.detector import Detector
    from patchbank.distributed.engine import ray_session
    from patchbank.distributed.tasks import run_tasks
    from patchbank.multi import MultiDetector

    if not categories:
        raise PatchbankError("no categories to fit")
    jobs = [(name, [str(p) for p in images], config.to_dict(), multi, device, threads)
            for name, images in categories.items()]
    with ray_session(address) as ray:
        parts = list(run_tasks(ray, fit_task, jobs, threads=threads, max_running=max_running,
                               device=device))
    with tempfile.TemporaryDirectory() as tmp:
        if multi:
            path = Path(tmp) / "merged.patchbank"
            merge_multi(parts, path)
            return MultiDetector.load(path, device=device)
        out = {}
        for name, data in zip(categories, parts):
            path = Path(tmp) / f"{name}.patchbank"
            path.write_bytes(data)
            out[name] = Detector.load(path, device=device)
        return out
