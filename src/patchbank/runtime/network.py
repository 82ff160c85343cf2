"""Whether a TCP service can be reached now: asked before a client that would wait or retry
without end (Ray's connection to a cluster, the Hugging Face hub client's retries)."""
from __future__ import annotations

import socket


def unreachable(host: str, port: int, timeout: float) -> str | None:
    """Why no TCP connection to ``host``:``port`` opens within ``timeout`` seconds (the host
    name does not resolve, the connection is refused or times out), as one line; None when one
    opens (it is closed at once)."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except (OSError, ValueError) as exc:
        return " ".join(str(exc).split()) or type(exc).__name__
    return None
