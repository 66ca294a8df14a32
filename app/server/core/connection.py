"""One WebSocket connection, whatever its protocol: admission, registration with the runtime, the `Outbox`
and its sender task (the only writer to the socket), the receive loop, the watchdog (slow readers, idleness)
and the connection's contexts. Protocol adapters subclass it (app/server/native_ws.py,
app/server/elevenlabs.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Callable

from starlette.websockets import WebSocket

from app.audio.encode import AudioEncoder
from app.errors import ClientError
from app.server.auth import accepted_subprotocol
from app.server.core.close_codes import GOING_AWAY, TRY_AGAIN_LATER
from app.server.core.context import Framing, StreamContext
from app.server.core.outbox import Outbox
from app.server.core.services import Services
from app.server.core.spec import ContextSpec

log = logging.getLogger(__name__)

WATCHDOG_TICK_S = 0.25
CLOSE_WAIT_S = 2.0  # how long a close waits for queued frames to reach a client that has stopped reading
# How a refusal of the runtime (app/server/core/runtime.py) closes a new connection.
_REFUSAL_CLOSE = {"shutting_down": (GOING_AWAY, "server shutting down"),
                  "warming_up": (TRY_AGAIN_LATER, "server warming up")}


class Connection:
    """Admission, registration with the runtime, the outbox and its sender, the watchdog and the registry of
    contexts. Subclasses speak a protocol: they greet, turn client text frames into context calls
    (`on_text`), and decide what idleness means (`check_idle`)."""

    def __init__(self, websocket: WebSocket, services: Services):
        self.ws = websocket
        self.services = services
        self.id = uuid.uuid4().hex[:12]
        self.outbox = Outbox(websocket)
        self.contexts: dict[str, StreamContext] = {}
        self.last_activity = time.monotonic()
        self._next_serial = 1

    @property
    def idle_timeout_s(self) -> float:
        """The protocol's idle limit (the watchdog ticks often enough to honour it)."""
        return self.services.settings.idle_timeout_s

    async def serve(self) -> None:
        await self.ws.accept(subprotocol=accepted_subprotocol(self.ws.scope))
        refusal = self._refusal()
        if refusal is not None:
            await self.ws.close(*refusal)
            return
        runtime, metrics = self.services.runtime, self.services.metrics
        runtime.connections.add(self)
        metrics.active_connections.inc()
        sender = asyncio.create_task(self.outbox.run())
        watchdog = asyncio.create_task(self._watchdog())
        try:
            await self.greet()
            await self._receive_loop()
        finally:
            for context in list(self.contexts.values()):
                context.abort(None)
            watchdog.cancel()
            sender.cancel()
            runtime.connections.discard(self)
            metrics.active_connections.dec()

    def _refusal(self) -> tuple[int, str] | None:
        runtime = self.services.runtime
        refusal = runtime.refusal()
        if refusal is not None:
            return _REFUSAL_CLOSE[refusal.code]
        if len(runtime.connections) >= self.services.settings.max_connections:
            return TRY_AGAIN_LATER, "too many connections"
        return None

    async def close(self, code: int, reason: str) -> None:
        """Close after what is queued (used by the idle watchdog and the drain)."""
        self.outbox.close(code, reason)
        try:
            await asyncio.wait_for(self.outbox.finished.wait(), CLOSE_WAIT_S)
        except TimeoutError:
            log.warning("connection %s: client not reading; close %d not delivered", self.id, code)

    # ---- what a protocol provides ---------------------------------------------------------------------------

    async def greet(self) -> None:
        """Runs once the connection is admitted, before the first client message is read."""

    async def on_text(self, raw: str) -> None:
        raise NotImplementedError

    def on_binary(self) -> None:
        raise NotImplementedError

    async def check_idle(self, now: float) -> bool:
        """Called every watchdog tick; True when the connection is closing and the watchdog can stop."""
        return False

    def context_failed(self, context: StreamContext, code: str, message: str) -> None:
        """After a context failed (its framing's error was queued)."""

    # ---- contexts -------------------------------------------------------------------------------------------

    async def open_context(self, spec: ContextSpec, encoder: AudioEncoder,
                           framing: Callable[[int], Framing]) -> StreamContext:
        """A new context; `framing(serial)` builds its framing. Raises `ClientError` when it may not open."""
        settings, runtime = self.services.settings, self.services.runtime
        context_id = spec.context_id
        if runtime.draining:
            raise ClientError("shutting_down", "the server is shutting down and opens no new contexts")
        if context_id in self.contexts:
            raise ClientError("bad_request", f"start: context {context_id!r} is already open")
        if len(self.contexts) >= settings.max_contexts_per_connection:
            raise ClientError("too_many_contexts", f"at most {settings.max_contexts_per_connection} open "
                                                   "contexts per connection")
        voice = await self.services.voices.conditionals(spec.voice)  # a VoiceError is a ClientError
        serial = self._next_serial
        self._next_serial += 1
        context = StreamContext(self, spec, serial, voice, spec.chunk_size or runtime.chunk_size, encoder,
                                framing(serial))
        self.contexts[context_id] = context
        return context

    def forget(self, context: StreamContext) -> None:
        if self.contexts.get(context.id) is context:
            del self.contexts[context.id]

    # ---- receiving and watching -----------------------------------------------------------------------------

    async def _receive_loop(self) -> None:
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            self.last_activity = time.monotonic()
            if message.get("text") is not None:
                await self.on_text(message["text"])
            else:
                self.on_binary()

    async def _watchdog(self) -> None:
        """Every tick: drop contexts whose client reads slower than real time, then the protocol's idle rule."""
        settings = self.services.settings
        while True:
            # The idle limit may come with the protocol's handshake, so the tick is worked out every time.
            tick = min(WATCHDOG_TICK_S, settings.send_buffer_s / 4, self.idle_timeout_s / 4)
            await asyncio.sleep(max(0.01, tick))
            now = time.monotonic()
            for context in list(self.contexts.values()):
                if context.reader_lag_s(now) > settings.send_buffer_s:
                    context.fail("slow_consumer", f"the client read too slowly: audio waited more than "
                                                  f"{settings.send_buffer_s:g} s past its playback time")
            if await self.check_idle(now):
                return
