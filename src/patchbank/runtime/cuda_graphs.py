"""The device part of a prediction replayed as a CUDA graph: one launch per batch.

At batch 1 on a GPU the host sets the pace: the inference path launches ~300 small kernels per
image, each costing the host more than the GPU spends on it (docs/performance.md, "CUDA graphs").  A
CUDA graph records those launches once for an input shape and replays them with one call.

:class:`GraphedCall` wraps a function ``fn(x) -> tuple of tensors`` made of device work only (no
host synchronisation, no data-dependent shapes): for the inference path, images -> (maps,
descriptors, base scores).  Per input shape (shape, dtype):

* the first call runs ``fn`` as it is (eager): a shape seen once, such as a run's last partial
  batch, is not worth a capture;
* the second call captures it: ``WARMUP`` eager runs on a side stream (cuBLAS and cuDNN set up
  their workspaces outside the capture), then the capture into a static input and static
  outputs;
* every later call copies the batch into the static input, replays the graph and returns clones
  of the outputs (the next replay overwrites the static ones).

The graphs run the same kernels on the same inputs as the eager calls that precede them, so
their answers equal the eager path's to float rounding (``benchmarks/cuda_graphs.py`` measures
the difference and the time).  At most ``max_graphs`` shapes are captured, all in one memory
pool: a later capture may reuse the memory of an earlier graph's intermediates, its own outputs
included, which is safe because replays are serialised by a lock and each replay's outputs are
cloned, in stream order, before any other graph runs.  Further shapes stay eager, so a service
whose batch sizes vary never re-captures.  The capture forbids unsafe calls in its own thread
only (``capture_error_mode="thread_local"``): a service's other threads go on copying and scoring
meanwhile.  A capture that fails (an operation that cannot be captured) is reported once as a
warning and its shape stays eager: the answers are the eager path's either way.  CPU tensors
always run eagerly.

Whether a detector uses them: its ``cuda_graphs`` argument, or where that is None the environment
variable ``PATCHBANK_CUDA_GRAPHS`` (``0`` / ``1``; unset: on), which reaches the command line, the
service and the Ray workers that inherit the environment (:func:`graphs_wanted`).

The policy above is :class:`GraphedCall`'s; the recording itself is :class:`CudaGraphs`'s, so the
policy is tested on the CPU with a stand-in that records by running the function again
(``tests/test_cuda_graphs.py``), and the CUDA recording where a GPU is lent.
"""
from __future__ import annotations

import os
import threading
import warnings
from dataclasses import dataclass
from typing import Callable, Protocol

import torch

from patchbank.errors import PatchbankError

WARMUP = 2   # eager runs on the side stream before a capture
ENV = "PATCHBANK_CUDA_GRAPHS"
_ON, _OFF = ("1", "true", "on", "yes"), ("0", "false", "off", "no")


def graphs_wanted(value: bool | None = None) -> bool:
    """``value`` if given (True or False), else ``PATCHBANK_CUDA_GRAPHS`` (1 / true / on / yes or
    0 / false / off / no; unset or empty: True).  Any other value or text is refused in one line."""
    if value is not None:
        if not isinstance(value, bool):
            raise PatchbankError(f"cuda_graphs must be True, False or None, got {value!r}")
        return value
    raw = os.environ.get(ENV, "")
    text = raw.strip().lower()
    if not text or text in _ON:
        return True
    if text in _OFF:
        return False
    raise PatchbankError(f"{ENV} must be 0 or 1, got {raw!r}")


class Recorder(Protocol):
    """What :class:`GraphedCall` records and replays with (:class:`CudaGraphs`, or a test's
    stand-in)."""

    def applies(self, device: torch.device) -> bool:
        """Whether inputs on ``device`` can be recorded."""

    def capture(self, fn: Callable[[torch.Tensor], tuple[torch.Tensor, ...]], inputs: torch.Tensor
                ) -> tuple[Callable[[], None], tuple[torch.Tensor, ...]]:
        """(replay, static outputs) of ``fn`` on the static ``inputs``; RuntimeError if it
        cannot be recorded."""


class CudaGraphs:
    """The :class:`Recorder` of a CUDA device: ``WARMUP`` eager runs on a side stream, then one
    capture into a memory pool shared by every capture of this object."""

    def __init__(self) -> None:
        self.pool = None

    def applies(self, device: torch.device) -> bool:
        """Whether inputs on ``device`` can be captured (CUDA devices)."""
        return device.type == "cuda"

    def capture(self, fn: Callable[[torch.Tensor], tuple[torch.Tensor, ...]], inputs: torch.Tensor
                ) -> tuple[Callable[[], None], tuple[torch.Tensor, ...]]:
        """(replay, static outputs) of ``fn`` recorded on the static ``inputs``; ``replay()``
        reruns the recording on whatever ``inputs`` holds then.  Raises RuntimeError when
        ``fn`` cannot be captured."""
        device = inputs.device
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP):
                fn(inputs)
        torch.cuda.current_stream(device).wait_stream(side)
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
            outputs = tuple(fn(inputs))
        return graph.replay, outputs


@dataclass
class _Graph:
    replay: Callable[[], None]
    inputs: torch.Tensor
    outputs: tuple[torch.Tensor, ...]


def graphed_call(fn: Callable[[torch.Tensor], tuple[torch.Tensor, ...]], device: torch.device,
                 wanted: bool) -> "GraphedCall | None":
    """``fn`` as a :class:`GraphedCall` on ``device`` when graphs are ``wanted`` and
    :class:`CudaGraphs` can record there (a CUDA device); None otherwise (the caller runs ``fn``
    eagerly)."""
    recorder = CudaGraphs() if wanted else None
    if recorder is None or not recorder.applies(torch.device(device)):
        return None
    return GraphedCall(fn, device, backend=recorder)


class GraphedCall:
    """``fn`` replayed as CUDA graphs per input shape (see the module docstring).

    ``fn(x)`` returns a tuple of tensors computed from ``x`` on ``device`` with device work
    only.  ``captured`` lists the shapes that replay a graph, ``eager`` those that failed to
    capture.  ``backend`` records and replays (a :class:`Recorder`; default :class:`CudaGraphs`)."""

    def __init__(self, fn: Callable[[torch.Tensor], tuple[torch.Tensor, ...]], device: torch.device,
                 max_graphs: int = 8, backend: Recorder | None = None):
        self.fn = fn
        self.device = torch.device(device)
        self.max_graphs = int(max_graphs)
        self.backend = backend if backend is not None else CudaGraphs()
        self.graphs: dict[tuple, _Graph] = {}
        self.seen: dict[tuple, int] = {}
        self.failed: set[tuple] = set()
        self.lock = threading.Lock()

    @property
    def captured(self) -> list[tuple]:
        return list(self.graphs)

    @property
    def eager(self) -> list[tuple]:
        return sorted(self.failed, key=str)

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if not self.backend.applies(self.device):
            return self.fn(x)
        key = (tuple(x.shape), x.dtype)
        with self.lock:
            entry = self.graphs.get(key)
            if entry is None:
                entry = self._maybe_capture(key, x)
            if entry is None:
                return self.fn(x)
            entry.inputs.copy_(x, non_blocking=True)
            entry.replay()
            return tuple(t.clone() for t in entry.outputs)

    def _maybe_capture(self, key: tuple, x: torch.Tensor) -> _Graph | None:
        """The graph of ``key`` captured now when this is its second call and there is room;
        None: run eagerly."""
        self.seen[key] = self.seen.get(key, 0) + 1
        if self.seen[key] < 2 or key in self.failed or len(self.graphs) >= self.max_graphs:
            return None
        inputs = x.to(self.device, copy=True)
        try:
            replay, outputs = self.backend.capture(self.fn, inputs)
        except RuntimeError as exc:
            self.failed.add(key)
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            warnings.warn(f"could not capture the inference path as a CUDA graph for input "
                          f"{list(key[0])} ({first_line}); that shape runs without one",
                          RuntimeWarning, stacklevel=4)
            return None
        entry = _Graph(replay, inputs, outputs)
        self.graphs[key] = entry
        return entry
