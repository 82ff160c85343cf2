"""``patchbank serve``: the HTTP inference service (FastAPI on uvicorn), with dynamic batching."""
from __future__ import annotations

import os
import socket
import sys

import click

from patchbank.cli.export import RUNTIME_CHOICES
from patchbank.cli.options import model_weights_option, run_options, setup_threads
from patchbank.errors import PatchbankError


@click.command(context_settings={"max_content_width": 110})
@click.argument("models", nargs=-1, required=True, metavar="MODEL...")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="Port to listen on.")
@click.option("--fd", type=click.IntRange(min=0), default=None,
              help="Serve on this inherited file descriptor, a TCP socket already bound and "
                   "listening (a supervisor's or systemd's), instead of binding --host / --port.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Server processes; each loads every model.")
@click.option("--max-batch", type=click.IntRange(min=1), default=16, show_default=True,
              help="Most images in one model call.")
@click.option("--max-wait-ms", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="How long a request waits for others to share its model call (0: no batching).")
@click.option("--no-batching", is_flag=True, help="Each request runs alone (as --max-wait-ms 0).")
@click.option("--max-request-mb", type=click.FloatRange(min=0, min_open=True), default=32.0,
              show_default=True, help="Request body limit in MB (413 above it).")
@click.option("--max-images", type=click.IntRange(min=1), default=64, show_default=True,
              help="Most images in one request.")
@click.option("--max-pixels", type=click.IntRange(min=1), default=None,
              help="Most pixels (width x height) of one image, read from its header before decoding "
                   "[the decoder's budget, patchbank.io.images.MAX_IMAGE_PIXELS].")
@click.option("--max-decoded-pixels", type=click.IntRange(min=1), default=None,
              help="Most pixels the server holds decoded at once, over all requests (a JPEG counted "
                   "at the reduced scale it decodes at; from the headers, before decoding): a request "
                   "over it alone is a 413, others wait until earlier ones are answered "
                   "[4 x the decoder's per-image budget].")
@click.option("--runtime", type=click.Choice(RUNTIME_CHOICES), default="torch", show_default=True,
              help="torch: each MODEL is a model file; onnx / openvino: each MODEL is a "
                   "'patchbank export' folder (--threads goes to the runtime).")
@model_weights_option
@run_options
def serve(models: tuple[str, ...], host: str, port: int, fd: int | None, workers: int, max_batch: int,
          max_wait_ms: float, no_batching: bool, max_request_mb: float, max_images: int,
          max_pixels: int | None, max_decoded_pixels: int | None, runtime: str, weights: str | None,
          device: str, threads: int | None, quiet: bool) -> None:
    """Serve MODEL files (or export folders) over HTTP: POST images to /v2/models/NAME/infer,
    docs at /docs.

    A MODEL is a model file (named after its stem: line.patchbank -> line), with --runtime
    onnx|openvino an export folder (named after the folder), or NAME=PATH.  Every model is
    loaded and checked before the server starts.  Requests for the same model arriving within
    --max-wait-ms are scored in one batch (one inference thread per model).
    """
    setup_threads(threads)   # before torch is imported (the imports below import it)
    from patchbank.io.images import MAX_IMAGE_PIXELS
    from patchbank.service.settings import MAX_DECODED_PIXELS, SETTINGS_ENV, ServeSettings, parse_model_arg

    max_pixels = MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    if max_pixels > MAX_IMAGE_PIXELS:
        raise PatchbankError(f"--max-pixels {max_pixels} is over the decoder's budget of "
                             f"{MAX_IMAGE_PIXELS} (patchbank.io.images.MAX_IMAGE_PIXELS)")
    settings = ServeSettings(
        models=tuple(parse_model_arg(m) for m in models), max_batch=max_batch,
        max_wait_ms=0.0 if no_batching else max_wait_ms, max_request_mb=max_request_mb,
        max_images=max_images, max_pixels=max_pixels,
        max_decoded_pixels=MAX_DECODED_PIXELS if max_decoded_pixels is None else max_decoded_pixels,
        device=device, threads=threads, runtime=runtime,
        weights=weights, workers=workers)
    sock = None if fd is None else listening_socket(fd)
    if sock is None:
        check_listen(host, port)

    from patchbank.service.app import create_app
    from patchbank.service.registry import ModelRegistry

    registry = ModelRegistry(settings).load()   # a bad file stops here: one line, exit 2
    if workers > 1:
        del registry   # each worker process loads its own copy
        os.environ[SETTINGS_ENV] = settings.to_json()
        app, factory = "patchbank.service.app:app_from_env", True
    else:
        app, factory = create_app(settings, registry), False
    run_uvicorn(app, factory, host, port, sock, workers, "warning" if quiet else "info")


def run_uvicorn(app, factory: bool, host: str, port: int, sock: socket.socket | None, workers: int,
                log_level: str) -> None:
    """uvicorn serving ``app`` with ``workers`` processes: bound to ``host:port``, or on the
    listening ``sock`` (``--fd``; uvicorn's own ``fd`` option reads a descriptor as a Unix
    socket, so the socket is handed to its server, or to its worker processes, directly).  A
    stop signal ends a server cleanly, exit status 0, however it was started: uvicorn shuts down
    on SIGTERM / SIGINT and ``uvicorn.run`` then returns; its ``Server.run`` re-raises the signal
    (:class:`~patchbank.runtime.signals.Stopped` while the command line's handler is set), which
    is taken here as the same clean stop."""
    import uvicorn

    from patchbank.runtime.signals import Stopped

    if sock is None:
        uvicorn.run(app, factory=factory, host=host, port=port, workers=workers, log_level=log_level)
        return
    config = uvicorn.Config(app, factory=factory, workers=workers, log_level=log_level)
    if workers > 1:
        from uvicorn.supervisors import Multiprocess

        Multiprocess(config, sockets=[sock]).run()
        return
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    except Stopped:
        return            # shut down by the signal: a clean stop, as with --port
    if not server.started:
        sys.exit(1)       # as uvicorn.run: the failure is in the log


def listening_socket(fd: int) -> socket.socket:
    """The socket of the inherited descriptor ``fd`` (``--fd``), or a one-line error now,
    before the models load, if it is not an open, listening TCP socket."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise PatchbankError(f"--fd {fd} is not an open socket: {exc.strerror or exc}") from None
    if (sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM
            or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)):
        sock.detach()     # leave the caller's descriptor open
        raise PatchbankError(f"--fd {fd} is not a listening TCP socket (bind and listen before "
                             f"passing it)")
    return sock


def check_listen(host: str, port: int) -> None:
    """A one-line error now, before the models load, if ``host:port`` cannot be listened on
    (port taken, unknown address); uvicorn would otherwise log it and exit 1."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as uvicorn binds
            sock.bind(address)
    except OSError as exc:
        raise PatchbankError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
