"""Operational HTTP routes: /health, /ready, /metrics, /optimization-status, POST /configure-streaming."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.metrics import CONTENT_TYPE
from app.server.protocol import ProtocolError, parse_chunk_size

ENGINE_CALL_TIMEOUT_S = 5.0  # the engine answers between steps; while it compiles it may not answer at all


async def health(request: Request) -> Response:
    """Alive: 200 for as long as the process serves HTTP (readiness is /ready's job)."""
    return JSONResponse({"status": "ok"})


async def ready(request: Request) -> Response:
    is_ready, reason = request.app.state.runtime.readiness()
    body: dict[str, Any] = {"ready": is_ready}
    if not is_ready:
        body["reason"] = reason
    return JSONResponse(body, status_code=200 if is_ready else 503)


async def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE)


async def optimization_status(request: Request) -> Response:
    state = request.app.state
    worker = state.worker
    is_ready, reason = state.runtime.readiness()
    body: dict[str, Any] = {
        "ready": is_ready,
        "worker": {"steps": worker.stats.steps, "busy_seconds": round(worker.stats.busy_seconds, 3),
                   "last_batch_size": worker.stats.last_batch_size, "active_requests": worker.active_requests},
    }
    if not is_ready:
        body["reason"] = reason
    try:
        # Only the worker thread may touch the engine.
        body["engine"] = await asyncio.wait_for(worker.call(state.engine.optimization_status),
                                                ENGINE_CALL_TIMEOUT_S)
    except TimeoutError:
        body["engine"] = {**state.engine_info.as_dict(), "status": "busy (warming up)"}
    return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY, default=str),
                    media_type="application/json")


async def configure_streaming(request: Request) -> Response:
    """Set the default chunk size of new contexts (open contexts keep theirs)."""
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        return _unprocessable("body must be a JSON object like {\"chunk_size\": 50}")
    if not isinstance(body, dict) or set(body) != {"chunk_size"}:
        return _unprocessable("body must be a JSON object with exactly one field, chunk_size")
    try:
        chunk_size = parse_chunk_size(body["chunk_size"])
    except ProtocolError as exc:
        return _unprocessable(exc.message)
    request.app.state.runtime.chunk_size = chunk_size
    return JSONResponse({"chunk_size": chunk_size})


def _unprocessable(message: str) -> Response:
    return JSONResponse({"error": "invalid_settings", "message": message}, status_code=422)


routes = [
    Route("/health", health),
    Route("/ready", ready),
    Route("/metrics", metrics),
    Route("/optimization-status", optimization_status),
    Route("/configure-streaming", configure_streaming, methods=["POST"]),
]
