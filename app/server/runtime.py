"""Mutable server-wide state that lives on `app.state.runtime`: readiness, draining, streaming defaults, and
the registry of open stream connections."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

log = logging.getLogger(__name__)

GOING_AWAY = 1001


class Closable(Protocol):
    open_contexts: int

    async def close(self, code: int, reason: str) -> None: ...


class Runtime:
    def __init__(self, chunk_size: int):
        self.ready = False
        self.not_ready_reason = "warming up"
        self.draining = False
        self.chunk_size = chunk_size  # default for new contexts; POST /configure-streaming changes it
        self.connections: set[Closable] = set()
        self._contexts_changed = asyncio.Event()

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

    @property
    def open_contexts(self) -> int:
        return sum(connection.open_contexts for connection in self.connections)

    def contexts_changed(self) -> None:
        """Connections call this when a context closes, so a drain can notice the last one."""
        self._contexts_changed.set()

    async def drain(self, timeout_s: float) -> None:
        """Refuse new connections and contexts, let open contexts finish (up to `timeout_s`), then close every
        remaining connection with 1001."""
        self.draining = True
        deadline = time.monotonic() + timeout_s
        log.info("draining: %d open context(s), up to %.0f s", self.open_contexts, timeout_s)
        while self.open_contexts and time.monotonic() < deadline:
            self._contexts_changed.clear()
            try:
                await asyncio.wait_for(self._contexts_changed.wait(), deadline - time.monotonic())
            except TimeoutError:
                break
        if self.open_contexts:
            log.warning("drain deadline passed with %d open context(s)", self.open_contexts)
        await asyncio.gather(*(c.close(GOING_AWAY, "server shutting down") for c in list(self.connections)))
