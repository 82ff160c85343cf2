"""``patchbank serve`` in a child process on a free local port: start, wait until ready, stop.

For tests, benchmarks and integrators' own checks: the server is the real one (uvicorn, the
installed command), reached over HTTP on 127.0.0.1 only.

    with ServerProcess(["model.patchbank"], ["--max-batch", "8"]) as server:
        httpx.get(server.url + "/v2/models")
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Sequence

from patchbank.errors import PatchbankError

__all__ = ["ServerProcess"]


class ServerProcess:
    """A ``patchbank serve MODELS... --fd N`` child process on a free 127.0.0.1 port.

    The port is bound and listening here, before the child starts, and the child inherits the
    socket (``--fd``): no other process can take the port in between, and no other server can
    answer the readiness check in this one's place.

    ``log`` receives the server's stdout and stderr (a file path; default: discarded).
    :meth:`start` returns once ``/v2/health/ready`` answers 200, or raises
    :class:`PatchbankError` with the log's last lines if the process exits or ``timeout`` passes.
    """

    def __init__(self, models: Sequence[str | os.PathLike], args: Sequence[str] = (), *,
                 log: str | os.PathLike | None = None, timeout: float = 300.0):
        self._socket: socket.socket | None = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(128)
        self.port = int(self._socket.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [sys.executable, "-m", "patchbank.cli", "serve", *map(str, models),
                        "--fd", str(self._socket.fileno()), *map(str, args)]
        self.log_path = Path(log) if log is not None else None
        self.timeout = timeout
        self.proc: subprocess.Popen | None = None
        self._log: IO | None = None

    @property
    def pid(self) -> int:
        """The server process's id."""
        if self.proc is None:
            raise PatchbankError("the server process is not started")
        return self.proc.pid

    def start(self) -> "ServerProcess":
        """Start the process and wait until it is ready (see the class docstring)."""
        self._log = open(self.log_path, "w") if self.log_path else subprocess.DEVNULL
        if self._socket is None:
            raise PatchbankError("a ServerProcess starts once")
        self.proc = subprocess.Popen(self.command, stdout=self._log, stderr=subprocess.STDOUT,
                                     pass_fds=(self._socket.fileno(),))
        self._socket.close()      # the child holds its own copy
        self._socket = None
        t0 = time.monotonic()
        while time.monotonic() - t0 < self.timeout:
            if self.proc.poll() is not None:
                raise PatchbankError(f"patchbank serve exited with status {self.proc.returncode}"
                                     f"{self._tail()}")
            if self.ready():
                return self
            time.sleep(0.2)
        self.stop()
        raise PatchbankError(f"patchbank serve was not ready within {self.timeout:.0f} s{self._tail()}")

    def ready(self) -> bool:
        """Whether ``/v2/health/ready`` answers 200 now."""
        try:
            with urllib.request.urlopen(self.url + "/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def models(self) -> list[dict]:
        """The ``/v2/models`` list."""
        with urllib.request.urlopen(self.url + "/v2/models", timeout=10) as r:
            return json.loads(r.read())["models"]

    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """Terminate the process (kill it after 15 s) and close the log."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(15)
        if self._log not in (None, subprocess.DEVNULL):
            self._log.close()
        self._log = None
        if self._socket is not None:      # never started
            self._socket.close()
            self._socket = None

    def _tail(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        lines = [ln for ln in self.log_path.read_text(errors="replace").splitlines() if ln.strip()]
        return ("; log: " + " | ".join(lines[-3:])) if lines else ""

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
