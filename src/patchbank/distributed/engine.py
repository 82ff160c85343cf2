"""Ray itself: imported lazily, connected to (or started) for one run, its errors made one line.

:func:`ray_session` uses a Ray that is already initialised as it is (a test fixture, a job
submitted with ``ray job submit``); otherwise it starts a local Ray (``address=None``) or
connects to a cluster (``address="auto"`` or ``HOST:PORT``) and shuts it down afterwards.
:func:`reraise` turns a failure inside a Ray task or actor into the
:class:`~patchbank.errors.PatchbankError` it carried (one line), and re-raises anything else.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from typing import Any, Iterator

from patchbank.errors import PatchbankError
from patchbank.runtime.signals import Stopped

INSTALL_HINT = "pip install 'patchbank[ray]'"


def import_ray() -> Any:
    """The ``ray`` module with Ray Data, or a one-line error naming the extra to install."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise PatchbankError(f"--engine ray needs Ray and Ray Data: {INSTALL_HINT}") from None
    return ray


@contextlib.contextmanager
def ray_session(address: str | None = None) -> Iterator[Any]:
    """The ``ray`` module, initialised for the ``with`` block (see the module docstring)."""
    ray = import_ray()
    check_reachable(address)
    if ray.is_initialized():
        yield ray
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    # a local Ray started here turns token authentication on and says so on the console: not
    # something a user of this one run can act on (Ray's own setting, RAY_AUTH_MODE, still applies)
    notice = logging.getLogger("ray._private.authentication.authentication_token_setup")
    level = notice.level
    notice.setLevel(logging.ERROR)
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        raise PatchbankError(f"cannot start or reach {where}: {' '.join(str(exc).split())}") from None
    finally:
        notice.setLevel(level)
    previous = _exit_on_sigterm()
    try:
        yield ray
    finally:
        ray.shutdown()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _exit_on_sigterm() -> Any:
    """In the main thread, let SIGTERM end the run as :class:`~patchbank.runtime.signals.Stopped`
    (as Ctrl-C does: the command line says ``aborted (SIGTERM)``, exit status 143) instead of
    Ray's handler, which aborts the process with a native stack dump and skips the cleanup: the
    session then shuts Ray down and the outputs' placeholders and staging folder are removed.
    Returns the handler it replaced (None where none was set)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def terminate(signum: int, frame: Any) -> None:
        raise Stopped(signum)     # the command line: "aborted (SIGTERM)", exit status 143

    return signal.signal(signal.SIGTERM, terminate)


CONNECT_TIMEOUT = 10.0   # seconds for a cluster's address to accept a connection


def check_reachable(address: str | None) -> None:
    """Refuse (one line) a ``HOST:PORT`` (or ``ray://HOST:PORT``) address where nothing accepts
    a connection within :data:`CONNECT_TIMEOUT`: Ray itself waits for it without end, retrying.
    ``None`` (a local Ray) and ``"auto"`` are Ray's to resolve."""
    import re

    from patchbank.runtime.network import unreachable

    m = re.fullmatch(r"(?:ray://)?\[?([^\[\]/]+?)\]?:(\d+)", address or "")
    why = None if m is None else unreachable(m.group(1), int(m.group(2)), CONNECT_TIMEOUT)
    if why is not None:
        raise PatchbankError(f"cannot reach the Ray cluster at {address}: {why}")


def cluster_cpus(ray: Any) -> float:
    """The CPUs the connected Ray cluster has in all."""
    return float(ray.cluster_resources().get("CPU", 0.0))


def carried_error(exc: BaseException) -> PatchbankError | None:
    """The PatchbankError a Ray task/actor failure carries (its cause chain), if any."""
    seen = set()
    todo = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, PatchbankError) and not _is_ray_error(e):
            return PatchbankError(str(e))
        todo += [getattr(e, "cause", None), e.__cause__, e.__context__]
    text = str(exc)
    marker = "PatchbankError: "
    if marker in text:   # a cause Ray could not hand back as an object: its text
        line = text[text.rindex(marker) + len(marker):].strip().splitlines()
        return PatchbankError(line[0] if line else text)
    return None


ACTOR_RETRIES = 3   # restarts of an actor, and retries of a batch whose actor died


@contextlib.contextmanager
def reraise() -> Iterator[None]:
    """Within the block, a Ray failure carrying a PatchbankError is raised as that error, and
    actors that kept dying (past :data:`ACTOR_RETRIES`) as a one-line PatchbankError."""
    try:
        yield
    except PatchbankError as exc:
        if not _is_ray_error(exc):       # our own, raised in the block
            raise
        raise carried_error(exc) from None   # Ray's task error posing as its cause: the cause's line
    except Exception as exc:
        err = carried_error(exc)
        if err is None and _actor_died(exc):
            err = PatchbankError(f"the scoring actors kept dying ({ACTOR_RETRIES} restarts and "
                                 f"{ACTOR_RETRIES} retries of a batch): the run stopped and wrote "
                                 f"nothing; look at the workers' memory and logs (ray logs)")
        if err is None:
            raise
        raise err from None


def _is_ray_error(exc: BaseException) -> bool:
    """Whether ``exc`` is one of Ray's errors (a task's error is an instance of its cause's class
    too, and its text is the whole remote traceback)."""
    from ray.exceptions import RayError

    return isinstance(exc, RayError)


def _actor_died(exc: BaseException) -> bool:
    """Whether ``exc`` is (or was caused by) Ray's "actor died" error."""
    from ray.exceptions import RayActorError

    seen, e = set(), exc
    while e is not None and id(e) not in seen:
        if isinstance(e, RayActorError):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False
