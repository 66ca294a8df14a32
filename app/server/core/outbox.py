"""A WebSocket connection's send queue: producers never wait, one sender task writes in order, so a client
that stops reading blocks only its own connection."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketDisconnected

from app.server.core.close_codes import INTERNAL_ERROR

log = logging.getLogger(__name__)


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


class Outbox:
    """The connection's send queue; `run()` is its one writer."""

    def __init__(self, websocket: WebSocket):
        self._ws = websocket
        self._items: deque[_Item] = deque()
        self._wakeup = asyncio.Event()
        self._closing = False
        self.finished = asyncio.Event()

    def send(self, payload: Payload, owner: Any = None, on_sent: Callable[[float], None] | None = None) -> None:
        """Queue a message; `on_sent(now)` runs once it has been handed to the socket."""
        if not self._closing and (payload is not None or on_sent is not None):
            self._items.append(_Item(payload, owner, on_sent))
            self._wakeup.set()

    def purge(self, owner: Any) -> None:
        self._items = deque(item for item in self._items if item.owner is not owner)

    def close(self, code: int, reason: str) -> None:
        """Close after everything queued so far is sent; later sends are ignored."""
        self.send(_Close(code, reason))
        self._closing = True

    async def run(self) -> None:
        try:
            while True:
                while not self._items:
                    self._wakeup.clear()
                    await self._wakeup.wait()
                item = self._items.popleft()
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
        elif payload is not None:
            await self._ws.send_text(payload)
        if item.on_sent is not None:
            item.on_sent(time.monotonic())
