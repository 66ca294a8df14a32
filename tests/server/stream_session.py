"""A thin test client for /v1/stream over the real `websockets` client: it records every event and audio
frame in arrival order, so tests can assert on ordering ("no audio after `cancelled`")."""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.frames import Close

from app.server.native_protocol import split_frame
from harness import Deadline

RECV_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class Frame:
    channel: int
    payload: bytes


class Session:
    def __init__(self, ws: ClientConnection):
        self.ws = ws
        self.log: list[dict[str, Any] | Frame] = []
        self.ready: dict[str, Any] = {}

    async def send(self, kind: str, **fields: Any) -> None:
        await self.ws.send(json.dumps({"type": kind, **fields}))

    async def recv(self, timeout: float = RECV_TIMEOUT_S) -> dict[str, Any] | Frame:
        message = await asyncio.wait_for(self.ws.recv(), timeout)
        item: dict[str, Any] | Frame = Frame(*split_frame(message)) if isinstance(message, bytes) \
            else json.loads(message)
        self.log.append(item)
        return item

    async def until(self, kind: str, context_id: str | None = None, timeout: float = RECV_TIMEOUT_S
                    ) -> dict[str, Any]:
        """Read until an event of `kind` (for `context_id`, if given) arrives; return it."""
        deadline = Deadline(timeout)
        while True:
            item = await self.recv(deadline.left())
            if isinstance(item, dict) and item["type"] == kind and context_id in (None, item.get("context_id")):
                return item

    async def until_all(self, kind: str, context_ids: list[str], timeout: float = RECV_TIMEOUT_S) -> None:
        """Read until each of `context_ids` has had an event of `kind` (in any order)."""
        deadline = Deadline(timeout)
        while any(not self.events(kind, context_id) for context_id in context_ids):
            await self.recv(deadline.left())

    async def first_audio(self, channel: int, timeout: float = RECV_TIMEOUT_S) -> Frame:
        deadline = Deadline(timeout)
        while True:
            item = await self.recv(deadline.left())
            if isinstance(item, Frame) and item.channel == channel:
                return item

    async def until_closed(self, timeout: float = RECV_TIMEOUT_S) -> Close | None:
        """Read until the server closes the connection; the close frame it sent."""
        return await _close_frame(self.recv, timeout)

    async def start(self, context_id: str, **fields: Any) -> int:
        """Open a context and return its channel."""
        await self.send("start", context_id=context_id, **fields)
        return (await self.until("started", context_id))["channel"]

    async def speak(self, context_id: str, text: str, **start_fields: Any) -> dict[str, Any]:
        """start + text + end; returns the `done` event."""
        await self.start(context_id, **start_fields)
        await self.send("text", context_id=context_id, text=text)
        await self.send("end", context_id=context_id)
        return await self.until("done", context_id)

    def events(self, kind: str | None = None, context_id: str | None = None) -> list[dict[str, Any]]:
        return [item for item in self.log if isinstance(item, dict) and kind in (None, item["type"])
                and context_id in (None, item.get("context_id"))]

    def audio(self, channel: int) -> bytes:
        return b"".join(item.payload for item in self.log if isinstance(item, Frame) and item.channel == channel)

    def frames_after(self, event: dict[str, Any], channel: int) -> list[Frame]:
        position = next(i for i, item in enumerate(self.log) if item is event)
        return [item for item in self.log[position + 1:] if isinstance(item, Frame) and item.channel == channel]


async def _close_frame(recv: Callable[[float], Awaitable[Any]], timeout: float) -> Close | None:
    deadline = Deadline(timeout)
    try:
        while True:
            await recv(deadline.left())
    except ConnectionClosed as closed:
        return closed.rcvd


async def refused(url: str, timeout: float = 10.0, **connect_kwargs: Any) -> Close | None:
    """Connect where the server accepts the handshake and then closes at once; its close frame."""
    async with connect(url, **connect_kwargs) as ws:
        return await _close_frame(lambda left: asyncio.wait_for(ws.recv(), left), timeout)


@contextlib.asynccontextmanager
async def open_session(url: str, **connect_kwargs: Any) -> AsyncIterator[Session]:
    """Connect, check the `ready` greeting, yield a Session."""
    async with connect(url, max_size=None, compression=None, open_timeout=10, **connect_kwargs) as ws:
        session = Session(ws)
        ready = await session.recv()
        assert isinstance(ready, dict) and ready["type"] == "ready", ready
        session.ready = ready
        yield session
