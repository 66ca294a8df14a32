"""Mutable server-wide state that lives on `app.state.runtime`: readiness, draining, streaming defaults,
admission, and the registry of what a drain waits for.

Two registries: `streams` holds every open speech stream (a WebSocket context or an HTTP synthesis), what a
drain waits for and what the active-streams gauge counts; `connections` holds the open WebSockets, which a
drain closes with 1001 at the end. Both kinds of stream register through `open_stream`, the one place that
keeps the gauge and wakes a waiting drain.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Protocol

from app.errors import ClientError
from app.metrics import Metrics
from app.server.core.close_codes import GOING_AWAY
from app.server.core.quota import KeyUsage
from app.text.chunker import ChunkerConfig

log = logging.getLogger(__name__)

SERVICE_UNAVAILABLE = 503


class Closable(Protocol):
    async def close(self, code: int, reason: str) -> None: ...


class ActiveStream:
    """One open speech stream as the runtime sees it; `stop` is how a drain that ran out of time ends it."""

    def __init__(self, runtime: Runtime, stop: Callable[[], None]):
        self._runtime = runtime
        self.stop = stop
        self._closed = False

    def close(self) -> None:
        """The stream ended (idempotent)."""
        if not self._closed:
            self._closed = True
            self._runtime._stream_closed(self)


class Runtime:
    def __init__(self, chunking: ChunkerConfig, metrics: Metrics):
        self.ready = False
        self.not_ready_reason = "warming up"
        self.draining = False
        self.chunking = chunking  # for new contexts; POST /configure-streaming changes its chunk_size
        self.connections: set[Closable] = set()
        # Sockets still waiting for their first message's API key: a pool apart, so they take no slot of
        # `connections` from clients that authenticated.
        self.authenticating: set[object] = set()
        self.keys: dict[str, KeyUsage] = {}  # what every connection presenting one API key holds, by key_id
        self.streams: set[ActiveStream] = set()
        self._metrics = metrics
        self._streams_changed = asyncio.Event()

    @property
    def chunk_size(self) -> int:
        return self.chunking.chunk_size

    @chunk_size.setter
    def chunk_size(self, chunk_size: int) -> None:
        self.chunking = dataclasses.replace(self.chunking, chunk_size=chunk_size)

    def chunker_config(self, chunk_size: int | None = None, tags: frozenset[str] = frozenset(),
                       language: str = "en") -> ChunkerConfig:
        """The rules for a new context: the server's, with the context's own chunk size if it chose one, its
        model's tags and its language."""
        config = dataclasses.replace(self.chunking, chunk_size=chunk_size or self.chunk_size, tags=tags)
        return config.for_language(language)

    def mark_ready(self) -> None:
        self.ready = True
        self.not_ready_reason = ""

    def mark_failed(self, reason: str) -> None:
        self.ready = False
        self.not_ready_reason = reason

    def readiness(self) -> tuple[bool, str]:
        if self.draining:
            return False, "draining"
        return self.ready, self.not_ready_reason

    def refusal(self) -> ClientError | None:
        """Why new work is refused now (draining, or the engine is not warm yet), or None."""
        if self.draining:
            return ClientError("shutting_down", "the server is shutting down", SERVICE_UNAVAILABLE)
        if not self.ready:
            return ClientError("warming_up", f"the engine is not ready yet ({self.not_ready_reason})",
                               SERVICE_UNAVAILABLE)
        return None

    # ---- streams --------------------------------------------------------------------------------------------

    @property
    def open_contexts(self) -> int:
        return len(self.streams)

    def open_stream(self, stop: Callable[[], None]) -> ActiveStream:
        """Register a stream that is starting; close the returned handle when it ends."""
        stream = ActiveStream(self, stop)
        self.streams.add(stream)
        self._metrics.active_streams.inc()
        return stream

    def _stream_closed(self, stream: ActiveStream) -> None:
        self.streams.discard(stream)
        self._metrics.active_streams.dec()
        self._streams_changed.set()  # a drain may be waiting for the last one

    async def drain(self, timeout_s: float) -> None:
        """Refuse new connections and streams, let open streams finish (up to `timeout_s`), then stop the rest
        and close every remaining connection with 1001."""
        self.draining = True
        deadline = time.monotonic() + timeout_s
        log.info("draining: %d open stream(s), up to %.0f s", self.open_contexts, timeout_s)
        while self.streams and time.monotonic() < deadline:
            self._streams_changed.clear()
            try:
                await asyncio.wait_for(self._streams_changed.wait(), deadline - time.monotonic())
            except TimeoutError:
                break
        if self.streams:
            log.warning("drain deadline passed with %d open stream(s)", self.open_contexts)
        for stream in list(self.streams):
            stream.stop()
        await asyncio.gather(*(c.close(GOING_AWAY, "server shutting down") for c in list(self.connections)))
