"""An evaluation's category x seed runs as Ray tasks.

:func:`run_map` gives :func:`patchbank.evaluation.runner.evaluate` its ``map_runs``: each run
still to compute (fit on the category's training images, score its test images, metrics) is
:func:`patchbank.evaluation.runner.run_category` in one Ray task; the runner stores, resumes and
summarises them exactly as it does its own runs.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence


def run_task(category: Any, config: Any, device: str, threads: int) -> dict[str, Any]:
    """Ray task body: :func:`~patchbank.evaluation.runner.run_category` of one run."""
    from patchbank.evaluation.runner import run_category
    from patchbank.runtime.threads import set_threads

    set_threads(threads)
    return run_category(category, config, device=device, progress=False)


def run_map(*, address: str | None = None, device: str = "cpu", threads: int = 1,
            max_running: int | None = None) -> Callable[[Sequence[tuple]], Iterator[dict[str, Any]]]:
    """A ``map_runs`` for ``evaluate``: ``[(Category, Config), ...]`` -> their
    :func:`run_category` results, in order, computed as Ray tasks (``threads`` each, at most
    ``max_running`` at once)."""

    def map_runs(jobs: Sequence[tuple]) -> Iterator[dict[str, Any]]:
        from patchbank.distributed.engine import ray_session
        from patchbank.distributed.tasks import run_tasks

        if not jobs:
            return
        with ray_session(address) as ray:
            yield from run_tasks(ray, run_task, [(cat, cfg, device, threads) for cat, cfg in jobs],
                                 threads=threads, max_running=max_running, device=device)

    return map_runs
