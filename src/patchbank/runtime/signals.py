"""Stop signals of a command: Ctrl-C (SIGINT) and SIGTERM end it the same way, through its cleanup.

Python turns Ctrl-C into ``KeyboardInterrupt`` in the main thread, so every ``finally``, ``with``
and ``except BaseException`` on the way out runs (patchbank's outputs remove their placeholders
and the files a stopped run wrote).  SIGTERM, the signal of ``kill``, ``timeout`` and service
managers, would end the process at once, skipping all of that.  While :func:`stop_signals` is
active, both raise :class:`Stopped` (a ``KeyboardInterrupt``, so everything that handles Ctrl-C
handles SIGTERM alike), which carries the signal: the command line reports it in one line and
exits ``128 + signal number`` (130 for SIGINT, 143 for SIGTERM), as a shell reports a process
ended by that signal.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
"""The signals :func:`stop_signals` turns into :class:`Stopped`."""


class Stopped(KeyboardInterrupt):
    """A stop signal arrived (see the module docstring): ``signum``, its ``name``
    (``"SIGTERM"``) and the process ``exit_status`` it calls for (128 + ``signum``)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)
        self.name = signal.Signals(signum).name
        self.exit_status = 128 + self.signum


@contextlib.contextmanager
def stop_signals() -> Iterator[None]:
    """While the block runs: SIGINT and SIGTERM raise :class:`Stopped` in the main thread; the
    handlers found are put back after.

    Each stop signal raises, as each Ctrl-C does by default.  A signal whose handler is not the
    default (ignored, as in a ``nohup`` or background job, or set by the program embedding
    patchbank) is left alone, and so is everything outside the main thread, where no handler
    can be set.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise Stopped(signum)

    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    ours = [s for s, h in previous.items() if h in (signal.SIG_DFL, signal.default_int_handler)]
    for s in ours:
        signal.signal(s, stop)
    try:
        yield
    finally:
        for s in ours:
            signal.signal(s, previous[s])
