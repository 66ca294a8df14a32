"""Operational HTTP routes: /health, /ready, /metrics, /optimization-status, POST /configure-streaming.

Failures are `ClientError`s, answered by the app's exception handlers in our one error shape."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.errors import ClientError
from app.metrics import CONTENT_TYPE
from app.server.core.spec import UNPROCESSABLE, check_chunk_size
from app.server.http_common import read_json_object

ENGINE_CALL_TIMEOUT_S = 5.0  # the engine answers between steps; while it compiles it may not answer at all
CONFIGURE_BODY_LIMIT = 1024  # {"chunk_size": 50} with room to spare


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
    """Set the default chunk size of new contexts (open contexts keep theirs). Every refusal of a body that
    arrived whole is `invalid_settings` (422); a body over CONFIGURE_BODY_LIMIT is `body_too_large` (413)."""
    try:
        body = await read_json_object(request, CONFIGURE_BODY_LIMIT)
    except ClientError as exc:
        if exc.code != "bad_json":
            raise
        raise _invalid("body must be a JSON object like {\"chunk_size\": 50}") from None
    if set(body) != {"chunk_size"}:
        raise _invalid("body must be a JSON object with exactly one field, chunk_size")
    try:
        chunk_size = check_chunk_size(body["chunk_size"])
    except ClientError as exc:
        raise _invalid(exc.message) from None
    request.app.state.runtime.chunk_size = chunk_size
    return JSONResponse({"chunk_size": chunk_size})


def _invalid(message: str) -> ClientError:
    return ClientError("invalid_settings", message, UNPROCESSABLE)


routes = [
    Route("/health", health),
    Route("/ready", ready),
    Route("/metrics", metrics),
    Route("/optimization-status", optimization_status),
    Route("/configure-streaming", configure_streaming, methods=["POST"]),
]
