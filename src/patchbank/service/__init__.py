"""``patchbank serve``: an HTTP inference service (FastAPI on uvicorn, KServe v2 style paths).

* :mod:`~patchbank.service.settings` -- the server's settings (limits, batching, models), JSON
  for worker processes.
* :mod:`~patchbank.service.registry` -- the loaded models: load, warm up, describe, predict,
  move or persist the threshold.
* :mod:`~patchbank.service.batching` -- :class:`DynamicBatcher`, grouping concurrent requests into
  one call of the model in one worker thread per model.
* :mod:`~patchbank.service.codec` -- reading a request: multipart or JSON images, options.
* :mod:`~patchbank.service.results` -- writing a response: scores, decision, heatmap, mask,
  polygons in the original image's pixels.
* :mod:`~patchbank.service.errors` -- errors with an HTTP status; every error is one JSON line.
* :mod:`~patchbank.service.handlers` -- the exception handlers answering them.
* :mod:`~patchbank.service.limits` -- the request body limit (Content-Length and bytes read).
* :mod:`~patchbank.service.routes` -- the v2 endpoints.
* :mod:`~patchbank.service.app` -- the FastAPI application: wiring, startup, the web page at ``/``.
* :mod:`~patchbank.service.process` -- the real server in a child process (tests, benchmarks).

Scoring is never reimplemented here: every image goes through ``Detector.predict`` /
``MultiDetector.predict`` of the model loaded with :func:`patchbank.multi.load_any`.
"""
