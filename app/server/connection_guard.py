"""Connection-level limits uvicorn's HTTP/1.1 protocol lacks: a request-head deadline and a cap on open connections.

uvicorn's h11 protocol arms its keep-alive timer only after a response and cancels it on the first byte that
arrives, so a client that sends a partial request head (or trickles one header line at a time) holds a connection,
and a file descriptor, forever, before any route or API key is checked. `guarded_h11_protocol` returns a subclass
that closes a connection whose request head is not complete within `header_timeout_s` of the moment the server
started waiting for it (the connection opening, or the previous response), however the bytes trickle in, and that
answers 503 and closes at once when more than `max_connections` connections (HTTP and upgraded WebSockets alike)
are open. uvicorn's own `limit_concurrency` only answers once a whole request head has arrived, so slow clients
would still hold their sockets.
"""

from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

_BUSY_BODY = b'{"error": "too_many_connections", "message": "too many open connections; retry later"}'
OVER_CAPACITY_RESPONSE = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
                          b"connection: close\r\nretry-after: 1\r\ncontent-length: %d\r\n\r\n%s"
                          % (len(_BUSY_BODY), _BUSY_BODY))


class GuardedH11Protocol(H11Protocol):
    header_timeout_s: float = 10.0
    max_connections: int = 512

    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            transport.write(OVER_CAPACITY_RESPONSE)
            transport.close()
            return
        self._sync_head_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._sync_head_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._sync_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def _sync_head_timer(self) -> None:
        """Run the deadline while the server waits for a request head (the client's h11 state is IDLE), and
        only then: a request being read or answered, or a connection upgraded to a WebSocket, has none."""
        waiting_for_head = self.conn.their_state is h11.IDLE and not self.transport.is_closing()
        if not waiting_for_head:
            self._cancel_head_timer()
        elif self._head_timer is None:  # bytes that arrive do not restart it: trickling buys no time
            self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        self.timeout_keep_alive_handler()  # uvicorn's own close of an idle connection


def guarded_h11_protocol(header_timeout_s: float, max_connections: int) -> type[H11Protocol]:
    """uvicorn takes a protocol class and builds it with its own arguments, so the limits are class attributes."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,),
                {"header_timeout_s": header_timeout_s, "max_connections": max_connections})
