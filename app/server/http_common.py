"""What every HTTP adapter shares (none imports another): our one error shape and the exception handlers that
produce it, bounded request bodies, client-disconnect detection, a streaming response that always releases
what produces its body, and the steps from a prepared `Speech` to response bytes.

Our routes raise `ClientError` (app/errors.py) and never build error responses themselves: the handlers in
`EXCEPTION_HANDLERS` (installed by app/server/app.py) answer `{"error": {"code", "message"}}` with its status.
The OpenAI adapter answers in OpenAI's shape instead, through its own translation table.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Mapping
from typing import Any, TypeVar

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from app.errors import ClientError, error_body
from app.server.core.speech import Speech

T = TypeVar("T")

PAYLOAD_TOO_LARGE = 413
UNSUPPORTED_MEDIA_TYPE = 415
CLIENT_CLOSED_REQUEST = 499  # nobody reads it: the client is gone


class BodyTooLarge(ClientError):
    def __init__(self, limit: int):
        super().__init__("body_too_large", f"the request body is larger than {limit} bytes", PAYLOAD_TOO_LARGE)
        self.limit = limit


class ClientDisconnected(Exception):
    """The client went away before its response was ready: nobody is left to answer."""


# ---- errors -------------------------------------------------------------------------------------------------

async def client_error_response(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ClientError)
    return _error_json(request, exc)


def _error_json(request: Request, error: ClientError, headers: Mapping[str, str] | None = None) -> Response:
    """Our one error shape, counted by code."""
    request.app.state.metrics.errors.labels(error.code).inc()
    return JSONResponse(error_body(error.code, error.message), status_code=error.status, headers=headers)


async def client_gone_response(request: Request, exc: Exception) -> Response:
    return Response(status_code=CLIENT_CLOSED_REQUEST)


_ROUTING_CODES = {404: "not_found", 405: "method_not_allowed"}


def routing_error(request: Request, exc: HTTPException) -> ClientError:
    """Starlette's own refusals (no route for the path, a method the route does not take) as a
    `ClientError`, so every adapter answers them in its shape (with the exception's headers: 405's Allow)."""
    code = _ROUTING_CODES.get(exc.status_code, "http_error")
    if exc.status_code == 404:
        message = f"no route for {request.url.path}"
    elif exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        message = f"{request.method} is not allowed on {request.url.path}" + (f"; use {allowed}" if allowed else "")
    else:
        message = str(exc.detail)
    return ClientError(code, message, exc.status_code)


async def routing_error_response(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return _error_json(request, routing_error(request, exc), exc.headers)


EXCEPTION_HANDLERS = {ClientError: client_error_response, ClientDisconnected: client_gone_response,
                      HTTPException: routing_error_response}


# ---- bounded bodies -----------------------------------------------------------------------------------------

def json_body_limit(max_text_chars: int) -> int:
    """Bytes a JSON body may take to carry `max_text_chars` characters: the worst escaping ("\\ud83d\\ude00"
    is 12 bytes for one character) plus room for the other fields."""
    return 12 * max_text_chars + 64 * 1024


def check_declared_length(request: Request, limit: int) -> None:
    """Refuse at once a body whose Content-Length already says it is too large (nothing of it is read)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(limit)


def limited_receive(receive: Receive, limit: int) -> Receive:
    """`receive` that raises `BodyTooLarge` as soon as more than `limit` body bytes arrived, whatever the
    headers claimed (chunked uploads declare no length)."""
    received = 0

    async def counting() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise BodyTooLarge(limit)
        return message

    return counting


def check_json_content_type(request: Request) -> None:
    """Refuse (415) a body not declared as JSON: a web page can post `text/plain` (or no type at all) to any
    origin without a preflight, so accepting those would let any page make this server speak."""
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/json" and not (media_type.startswith("application/")
                                                 and media_type.endswith("+json")):
        raise ClientError("unsupported_media_type", f"the body must be JSON sent with Content-Type: "
                                                    f"application/json, not {media_type or 'no type'}",
                          UNSUPPORTED_MEDIA_TYPE)


async def read_json_object(request: Request, limit: int) -> dict[str, Any]:
    """The body as a JSON object, read up to `limit` bytes (415 unless declared as JSON, `BodyTooLarge` past
    the limit, `bad_json` if it is not a JSON object)."""
    check_json_content_type(request)
    check_declared_length(request, limit)
    bounded = Request(request.scope, receive=limited_receive(request.receive, limit))
    try:
        data = orjson.loads(await bounded.body())
    except orjson.JSONDecodeError as exc:
        raise ClientError("bad_json", f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ClientError("bad_json", "the body must be a JSON object")
    return data


# ---- the client's connection --------------------------------------------------------------------------------

def client_id(request: Request) -> str:
    """Who asks, for the engine's fair sharing: the client's address (every HTTP request is its own
    connection, so the address is what ties one client's requests together)."""
    return f"http:{request.client.host}" if request.client else "http"



async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await `work` (after the body was read), cancelling it if the client goes away first."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request.receive))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
    if task.cancelled():
        raise ClientDisconnected()
    return task.result()


async def finished_audio(request: Request, speech: Speech) -> bytes:
    """The whole body once synthesis is complete; the synthesis stops if the client goes away first."""
    async def run() -> bytes:
        await speech.open()
        return await speech.read_all()

    try:
        return await unless_disconnected(request, run())
    finally:
        speech.close()


async def opened(request: Request, speech: Speech) -> Speech:
    """`speech` with its first audio ready, so a streaming response's headers can carry its timing."""
    try:
        await unless_disconnected(request, speech.open())
    except BaseException:
        speech.close()
        raise
    return speech


class ClosingStreamingResponse(StreamingResponse):
    """A StreamingResponse whose body generator is closed however the response ends, a client that
    disconnects mid-body included, so the generator's `finally` releases its resources at once."""

    body_iterator: AsyncGenerator[bytes, None]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()
