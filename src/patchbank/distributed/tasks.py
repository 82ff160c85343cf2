"""Many independent jobs as Ray tasks: submitted with a bound on how many run at once, results
handed back in submission order, a failure raised as its one-line error."""
from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence


def run_tasks(ray: Any, fn: Callable, jobs: Sequence[tuple], *, threads: int = 1,
              max_running: int | None = None, device: str = "cpu") -> Iterator[Any]:
    """Yield ``fn(*job)`` for each job, computed as Ray tasks of ``threads`` CPUs (and one GPU
    each with a cuda ``device``), at most ``max_running`` at a time (default: as many as the
    cluster's CPUs hold); results come in the order of ``jobs``, each as soon as it and every
    earlier one are done.  A task whose worker dies is retried (Ray's default, 3 times)."""
    from patchbank.distributed.engine import cluster_cpus, reraise

    gpus = 1 if device.startswith("cuda") else 0
    remote = ray.remote(num_cpus=threads, num_gpus=gpus)(fn)
    limit = max_running or max(1, int(cluster_cpus(ray) // threads))
    pending: list[Any] = []
    nxt = 0
    with reraise():
        for i in range(len(jobs)):
            while nxt < len(jobs) and nxt - i < limit:
                pending.append(remote.remote(*jobs[nxt]))
                nxt += 1
            yield ray.get(pending[i])
            pending[i] = None
