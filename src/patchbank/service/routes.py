"""The v2 endpoints (KServe v2 / OpenVINO Model Server style paths).

* ``GET /v2/health/live`` -- 200 once the process answers.
* ``GET /v2/health/ready`` -- 200 once every model is loaded and warmed up, else 503.
* ``GET /v2/models`` -- the served models (name, kind, file, ready).
* ``GET /v2/models/{name}`` -- one model: configuration, bank, operating point, file, batching.
* ``POST /v2/models/{name}/infer`` -- score images (:mod:`~patchbank.service.codec` reads the
  request, :mod:`~patchbank.service.results` writes each image's entry).
* ``PUT /v2/models/{name}/threshold`` -- move the operating point (``{"threshold": null}``:
  back to the calibrated one); ``persist: true`` writes it into the model file.
* ``DELETE /v2/models/{name}/threshold`` -- back to the calibrated threshold.
"""
from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from patchbank.service.batching import DynamicBatcher
from patchbank.service.cancellation import to_the_end, unless_client_gone
from patchbank.service.codec import (MASK_KINDS, decode_uploads, open_uploads, parse_options, query_params,
                                     read_images)
from patchbank.service.pixel_budget import PixelBudget
from patchbank.service.registry import ModelRegistry
from patchbank.service.results import image_result
from patchbank.service.settings import ServeSettings

__all__ = ["ServiceState", "build_router", "ThresholdUpdate"]


@dataclass
class ServiceState:
    """What the endpoints share: settings, models, the decoded-pixel budget, and the batcher
    (made at startup)."""

    settings: ServeSettings
    registry: ModelRegistry
    batcher: DynamicBatcher | None = None
    pixels: PixelBudget = field(init=False)

    def __post_init__(self):
        self.pixels = PixelBudget(self.settings.max_decoded_pixels)


class ThresholdUpdate(BaseModel):
    """Body of ``PUT /v2/models/{name}/threshold`` (JSON types strictly: no "1" or true for
    a number)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    threshold: float | None   # on the normalised score; null = back to the calibrated one
    category: str | None = None   # multi-category models: this category only (default: all)
    persist: bool = False         # also write it into the model file


_OPTION_DOCS = {
    "threshold": "Normalised-score threshold for this request (decision: not score <= threshold).",
    "category": "Multi-category models: score against this category, skipping routing.",
    "heatmap": "true: return heatmap_png (base64 RGBA PNG at the original size) and heatmap_range.",
    "mask": f"Anomalous region: {' | '.join(MASK_KINDS)} (polygons: [[x, y], ...] in original pixels).",
}
_IMAGES_JSON = {
    "type": "object", "required": ["images"],
    "properties": {
        "images": {"type": "array", "items": {
            "type": "object", "required": ["data"],
            "properties": {"name": {"type": "string"},
                           "data": {"type": "string", "description": "base64 image file"}}}},
        "threshold": {"type": "number"}, "category": {"type": "string"},
        "heatmap": {"type": "boolean"}, "mask": {"type": "string", "enum": list(MASK_KINDS)}}}
_IMAGES_FORM = {"type": "object", "properties": {
    "files": {"type": "array", "items": {"type": "string", "format": "binary"}}}}
INFER_DOC = {
    "parameters": [{"name": n, "in": "query", "required": False, "description": d,
                    "schema": {"type": "string"}} for n, d in _OPTION_DOCS.items()],
    "requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": _IMAGES_FORM},
        "application/json": {"schema": _IMAGES_JSON}}},
    "responses": {status: {"description": text, "content": {"application/json": {"schema": {
        "type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}}}}
        for status, text in {
            "400": "An image that does not decode or is over --max-pixels, bad base64, a bad option, "
                   "malformed JSON: one line naming it.",
            "404": "Unknown model or category.",
            "413": "A body over --max-request-mb, more than --max-images images, or images that "
                   "together decode to more than --max-decoded-pixels (read from their headers).",
            "415": "A content type other than multipart/form-data or application/json.",
            "422": "A JSON body of the wrong shape."}.items()},
}


def build_router(state: ServiceState) -> APIRouter:
    """The v2 routes, bound to ``state``."""
    router = APIRouter(prefix="/v2")
    registry, settings = state.registry, state.settings

    def get(path: str, summary: str):
        """A GET route that answers HEAD too (health checks that send HEAD), HEAD unlisted in
        the OpenAPI schema (one operation per route there)."""
        def register(endpoint):
            router.add_api_route(path, endpoint, methods=["GET"], summary=summary)
            router.add_api_route(path, endpoint, methods=["HEAD"], include_in_schema=False)
            return endpoint
        return register

    @get("/health/live", summary="The process answers")
    def live() -> dict[str, Any]:
        return {"live": True}

    @get("/health/ready", summary="Every model is loaded and warmed up (else 503)")
    def ready() -> Any:
        if registry.ready:
            return {"ready": True}
        reason = f"loading failed: {registry.failure}" if registry.failure else "models are loading"
        return JSONResponse({"ready": False, "error": reason}, status_code=503)

    @get("/models", summary="The served models")
    def models() -> dict[str, Any]:
        return {"models": [{"name": m.name, "path": m.path, "ready": m.name in registry.models
                            and registry.ready} for m in settings.models]}

    @get("/models/{name}", summary="One model: configuration, bank, threshold, file")
    def model(name: str) -> dict[str, Any]:
        return _describe(state, name)

    @router.post("/models/{name}/infer", summary="Score images", openapi_extra=INFER_DOC)
    async def infer(name: str, request: Request) -> dict[str, Any]:
        t0 = time.perf_counter()
        served = registry.get(name)
        uploads, fields = await read_images(request, settings.max_images)
        options = parse_options(request.query_params.multi_items(), fields)
        served.check_category(options.category)
        return await unless_client_gone(request, _score(state, name, served, uploads, options, t0))

    @router.put("/models/{name}/threshold", summary="Move the threshold (persist: write the file)")
    def put_threshold(name: str, update: ThresholdUpdate, request: Request) -> dict[str, Any]:
        query_params(request.query_params.multi_items(), ())   # it takes none
        registry.set_threshold(name, update.threshold, update.category, update.persist)
        return _describe(state, name)

    @router.delete("/models/{name}/threshold", summary="Back to the calibrated threshold")
    def reset_threshold(name: str, request: Request, category: str | None = Query(None),
                        persist: bool = Query(False)) -> dict[str, Any]:
        query_params(request.query_params.multi_items(), ("category", "persist"))
        registry.set_threshold(name, None, category, persist)
        return _describe(state, name)

    return router


async def _score(state: ServiceState, name: str, served, uploads, options, t0: float) -> dict[str, Any]:
    """Decode, score and encode a read request's images (cancelled where it waits when its
    client goes away: :mod:`~patchbank.service.cancellation`)."""
    opened, pixels = await asyncio.to_thread(open_uploads, uploads, state.settings.max_pixels,
                                             state.settings.max_decoded_pixels, served.read_size)

    def encode(scored) -> list[dict[str, Any]]:
        return [image_result(served, u.name, s, options, t0) for u, s in zip(uploads, scored)]

    # the request's pixels are held from decoding to the end of encoding: the maps, heatmaps
    # and masks at the original size are as large as the images they are drawn for; a thread
    # that holds them runs to its end before the share is released
    async with state.pixels.hold(pixels):
        images = await to_the_end(asyncio.to_thread(decode_uploads, opened, uploads))
        scored = await state.batcher.submit_all((name, options.category), images)
        del images, opened
        results = await to_the_end(asyncio.to_thread(encode, scored))
    return {"model": name, "n_images": len(results),
            "time_ms": round((time.perf_counter() - t0) * 1000.0, 3), "results": results}


def _describe(state: ServiceState, name: str) -> dict[str, Any]:
    """The model's description plus its batching settings and counters."""
    out = state.registry.describe(name)
    stats = state.batcher.stats(name) if state.batcher is not None else None
    out["batching"] = {"enabled": state.settings.max_wait_ms > 0,
                       "max_batch": state.settings.max_batch,
                       "max_wait_ms": state.settings.max_wait_ms,
                       "calls": stats.calls if stats else 0, "images": stats.items if stats else 0,
                       "largest_call": stats.largest_call if stats else 0}
    out["decoding"] = {"max_decoded_pixels": state.pixels.capacity, "pixels_held": state.pixels.in_use,
                       "requests_waiting": state.pixels.waiting}
    # with --workers N the counters above are the answering process's: say which one it is
    out["worker"] = {"pid": os.getpid(), "workers": state.settings.workers}
    return out
