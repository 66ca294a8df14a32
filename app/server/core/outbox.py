"""A WebSocket connection's send queue: producers never wait, one sender task writes in order, so a client
that stops reading blocks only its own connection.

The queue is bounded in bytes (`max_bytes`, the `max_send_queue_bytes` setting): a context whose queued audio
would take it past the bound while it holds at least its share asks `over_share` first and is dropped with
`slow_consumer` by its owner (app/server/core/context.py), so the other contexts go on; the connection's own
replies (errors, acknowledgements: items without an owner) may hold `max_bytes / REPLY_SHARE`, and a client
that provokes more of them than that without reading is closed with 1008.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketDisconnected

from app.server.core.close_codes import INTERNAL_ERROR, POLICY_VIOLATION

log = logging.getLogger(__name__)

REPLY_SHARE = 8  # the connection's own replies may fill 1/REPLY_SHARE of the queue
BUILT_EVENT_BYTES = 1024  # what an event built when sent (a callable) is counted as while queued


@dataclass
class _Close:
    code: int
    reason: str


# A callable builds its event when sent (stats are known by then); None (or a callable returning None) sends
# nothing, but its `on_sent` still runs in order.
Payload = str | bytes | Callable[[], str | None] | _Close | None


@dataclass
class _Item:
    payload: Payload
    owner: Any = None  # the context it belongs to; `purge` drops a context's items
    on_sent: Callable[[float], None] | None = None
    size: int = 0


def _size(payload: Payload) -> int:
    if isinstance(payload, (str, bytes)):
        return len(payload)
    return BUILT_EVENT_BYTES if callable(payload) else 0


class Outbox:
    """The connection's send queue; `run()` is its one writer."""

    def __init__(self, websocket: WebSocket, max_bytes: int):
        self._ws = websocket
        self.max_bytes = max_bytes
        self.queued_bytes = 0
        self._owner_bytes: dict[Any, int] = {}  # queued bytes by owner (None: the connection's replies)
        self._items: deque[_Item] = deque()
        self._wakeup = asyncio.Event()
        self.closing = False
        self.finished = asyncio.Event()

    def send(self, payload: Payload, owner: Any = None, on_sent: Callable[[float], None] | None = None) -> None:
        """Queue a message; `on_sent(now)` runs once it has been handed to the socket."""
        if self.closing or (payload is None and on_sent is None):
            return
        size = _size(payload)
        if owner is None and self._owner_bytes.get(None, 0) + size > self.max_bytes // REPLY_SHARE:
            self._give_up(POLICY_VIOLATION, "replies not read: the client sends faster than it reads")
            return
        self._items.append(_Item(payload, owner, on_sent, size))
        self._count(owner, size)
        self._wakeup.set()

    def over_share(self, owner: Any, size: int) -> bool:
        """Whether queuing `size` more bytes for `owner` would take the queue past `max_bytes` while `owner`
        holds at least its share of it (the bound divided among the owners with bytes queued)."""
        if self.queued_bytes + size <= self.max_bytes:
            return False
        held = self._owner_bytes.get(owner, 0) + size
        owners = len(self._owner_bytes) + (owner not in self._owner_bytes)
        return held > self.max_bytes / owners

    def purge(self, owner: Any) -> None:
        self._items = deque(item for item in self._items if item.owner is not owner)
        self.queued_bytes -= self._owner_bytes.pop(owner, 0)

    def close(self, code: int, reason: str) -> None:
        """Close after everything queued so far is sent; later sends are ignored."""
        self.send(_Close(code, reason))
        self.closing = True

    def _give_up(self, code: int, reason: str) -> None:
        """Drop everything queued and close: the client has stopped reading what it provokes."""
        log.warning("closing a connection with %d: %s", code, reason)
        self._items.clear()
        self._owner_bytes.clear()
        self.queued_bytes = 0
        self.close(code, reason)

    def _count(self, owner: Any, size: int) -> None:
        self.queued_bytes += size
        held = self._owner_bytes.get(owner, 0) + size
        if held:
            self._owner_bytes[owner] = held
        else:
            self._owner_bytes.pop(owner, None)

    async def run(self) -> None:
        try:
            while True:
                while not self._items:
                    self._wakeup.clear()
                    await self._wakeup.wait()
                item = self._items.popleft()
                self._count(item.owner, -item.size)
                if isinstance(item.payload, _Close):
                    await self._ws.close(item.payload.code, item.payload.reason)
                    return
                await self._write(item)
        except (WebSocketDisconnect, WebSocketDisconnected):
            pass  # the client went away: the receive loop sees the disconnect and cleans up
        except Exception:
            log.exception("sender failed; closing the connection")
            with contextlib.suppress(WebSocketDisconnect, WebSocketDisconnected):
                await self._ws.close(INTERNAL_ERROR, "internal error")
        finally:
            self.finished.set()

    async def _write(self, item: _Item) -> None:
        payload = item.payload() if callable(item.payload) else item.payload
        if isinstance(payload, bytes):
            await self._ws.send_bytes(payload)
        elif isinstance(payload, str):
            await self._ws.send_text(payload)
        if item.on_sent is not None:
            item.on_sent(time.monotonic())
