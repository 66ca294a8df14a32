"""Plumbing shared by the HTTP APIs: bounded request bodies, client-disconnect detection, and a streaming
response that always releases what produces its body."""

from __future__ import annotations

import asyncio
from typing import Any, AsyncGenerator, Awaitable, TypeVar

import orjson
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Message, Receive, Scope, Send

T = TypeVar("T")


class BodyTooLarge(Exception):
    def __init__(self, limit: int):
        super().__init__(f"the request body is larger than {limit} bytes")
        self.limit = limit


class BadJson(Exception):
    pass


class ClientDisconnected(Exception):
    pass


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


async def read_json_object(request: Request, limit: int) -> dict[str, Any]:
    """The body as a JSON object, read up to `limit` bytes."""
    check_declared_length(request, limit)
    bounded = Request(request.scope, receive=limited_receive(request.receive, limit))
    try:
        data = orjson.loads(await bounded.body())
    except orjson.JSONDecodeError as exc:
        raise BadJson(f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadJson("the body must be a JSON object")
    return data


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


class ClosingStreamingResponse(StreamingResponse):
    """A StreamingResponse whose body generator is closed however the response ends, a client that
    disconnects mid-body included, so the generator's `finally` releases its resources at once."""

    body_iterator: AsyncGenerator[bytes, None]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()
