"""One WebSocket connection, whatever its protocol: authentication, admission, registration with the runtime,
the `Outbox` and its sender task (the only writer to the socket), the receive loop, the watchdog (slow
readers, idleness), the connection's contexts and its quota of engine requests. Protocol adapters subclass it
(app/server/native_ws.py, app/server/elevenlabs.py).

Authentication comes before admission: with an API key set, a socket whose handshake (headers, query,
subprotocol) carries no valid key is closed with 1008, unless its protocol lets the first message carry the
key (ElevenLabs'); such a socket waits for that message at most `auth_timeout_s`, in a pool of its own
(`Runtime.authenticating`), and takes a connection slot only once its key is accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import Callable

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketDisconnected

from app.audio.encode import AudioEncoder
from app.errors import ClientError
from app.server.auth import accepted_subprotocol, key_accepted, presented_keys
from app.server.core.close_codes import GOING_AWAY, POLICY_VIOLATION, TRY_AGAIN_LATER
from app.server.core.context import Framing, StreamContext
from app.server.core.outbox import Outbox, Payload
from app.server.core.quota import KeyUsage, RequestQuota, key_id
from app.server.core.services import Services
from app.server.core.spec import ContextSpec

log = logging.getLogger(__name__)

WATCHDOG_TICK_S = 0.25
CLOSE_WAIT_S = 2.0  # how long a close waits for queued frames to reach a client that has stopped reading
# How a refusal of the runtime (app/server/core/runtime.py) closes a new connection.
_REFUSAL_CLOSE = {"shutting_down": (GOING_AWAY, "server shutting down"),
                  "warming_up": (TRY_AGAIN_LATER, "server warming up")}


class NotAdmitted(Exception):
    """The socket may not be admitted: closed with `code` after the protocol's `reply`, if any."""

    def __init__(self, code: int, reason: str, reply: Payload = None):
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.reply = reply


class Unauthorized(NotAdmitted):
    """No valid key (in time)."""

    def __init__(self, reply: Payload = None):
        super().__init__(POLICY_VIOLATION, "missing or invalid API key", reply)


class Connection:
    """Admission, registration with the runtime, the outbox and its sender, the watchdog and the registry of
    contexts. Subclasses speak a protocol: they greet, turn client text frames into context calls
    (`on_text`), and decide what idleness means (`check_idle`)."""

    keys_in_first_message = False  # the protocol lets a socket send its API key in its first message

    def __init__(self, websocket: WebSocket, services: Services):
        self.ws = websocket
        self.services = services
        settings = services.settings
        self.id = uuid.uuid4().hex[:12]
        self.outbox = Outbox(websocket, settings.max_send_queue_bytes)
        self.contexts: dict[str, StreamContext] = {}
        self.last_activity = time.monotonic()
        self.key: KeyUsage | None = None  # what every connection with this one's API key holds (keys only)
        self.quota = RequestQuota(settings.max_running_requests_per_connection,
                                  settings.max_queued_requests_per_connection)
        self._next_serial = 1
        self._ended = asyncio.Event()  # set when the connection gives up on a client that stopped reading

    @property
    def idle_timeout_s(self) -> float:
        """The protocol's idle limit (the watchdog ticks often enough to honour it)."""
        return self.services.settings.idle_timeout_s

    async def serve(self) -> None:
        await self.ws.accept(subprotocol=accepted_subprotocol(self.ws.scope))
        try:
            first_message = await self._authenticate()
        except NotAdmitted as refused:
            await self._refuse(refused.code, refused.reason, refused.reply)
            return
        except WebSocketDisconnect:
            return
        refusal = self._refusal()
        if refusal is not None:
            await self.ws.close(*refusal)
            return
        runtime, metrics = self.services.runtime, self.services.metrics
        runtime.connections.add(self)
        metrics.active_connections.inc()
        sender = asyncio.create_task(self.outbox.run())
        watchdog = asyncio.create_task(self._watchdog())
        receiver = asyncio.create_task(self._receive(first_message))
        ended = asyncio.create_task(self._ended.wait())
        try:
            await asyncio.wait({receiver, ended}, return_when=asyncio.FIRST_COMPLETED)
            if receiver.done():
                receiver.result()  # a bug in a handler surfaces here, as it did in the receive loop
        finally:
            for task in (receiver, ended, watchdog):
                task.cancel()
            for context in list(self.contexts.values()):
                context.abort(None)
            if self.outbox.closing:  # let a close already queued reach the client
                await self._wait_closed()
            sender.cancel()
            runtime.connections.discard(self)
            metrics.active_connections.dec()

    # ---- authentication and admission -----------------------------------------------------------------------

    def handshake_keys(self) -> list[str]:
        """The API keys the handshake carries (a protocol may accept more places than ours)."""
        return presented_keys(self.ws.scope)

    def message_keys(self, raw: str) -> list[str]:
        """The API keys a first message carries (protocols with `keys_in_first_message`)."""
        return []

    def unauthorized_reply(self) -> Payload:
        """What the protocol says before closing an unauthorized socket with 1008 (None: only the close)."""
        return None

    async def _authenticate(self) -> str | None:
        """Returns the first message when that is what carried the key (it is then handled as usual)."""
        api_key = self.services.settings.api_key
        if not api_key:
            return None
        if key_accepted(api_key, self.handshake_keys()):
            self._take_key(api_key)
            return None
        if not self.keys_in_first_message:
            raise Unauthorized()
        runtime = self.services.runtime
        if len(runtime.authenticating) >= self.services.settings.max_connections:
            raise NotAdmitted(TRY_AGAIN_LATER, "too many connections waiting to authenticate")
        runtime.authenticating.add(self)
        try:
            message = await asyncio.wait_for(self.ws.receive(), self.services.settings.auth_timeout_s)
        except TimeoutError:
            raise Unauthorized(self.unauthorized_reply()) from None
        finally:
            runtime.authenticating.discard(self)
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000))
        raw = message.get("text")
        if raw is None or not key_accepted(api_key, self.message_keys(raw)):
            raise Unauthorized(self.unauthorized_reply())
        self._take_key(api_key)
        return raw

    def _take_key(self, api_key: str) -> None:
        settings = self.services.settings
        usage = self.services.runtime.keys.setdefault(
            key_id(api_key), KeyUsage(settings.max_contexts_per_key, settings.max_requests_per_key))
        self.key = self.quota.key = usage

    async def _refuse(self, code: int, reason: str, reply: Payload) -> None:
        """Close a socket that was never admitted (nothing else is queued for it)."""
        with contextlib.suppress(WebSocketDisconnect, WebSocketDisconnected, TimeoutError):
            if isinstance(reply, str):
                await asyncio.wait_for(self.ws.send_text(reply), CLOSE_WAIT_S)
            await asyncio.wait_for(self.ws.close(code, reason), CLOSE_WAIT_S)

    def _refusal(self) -> tuple[int, str] | None:
        runtime = self.services.runtime
        refusal = runtime.refusal()
        if refusal is not None:
            return _REFUSAL_CLOSE[refusal.code]
        if len(runtime.connections) >= self.services.settings.max_connections:
            return TRY_AGAIN_LATER, "too many connections"
        return None

    async def close(self, code: int, reason: str) -> None:
        """Close after what is queued (used by the idle watchdog and the drain); a client that does not take
        the close within CLOSE_WAIT_S is given up on."""
        self.outbox.close(code, reason)
        await self._wait_closed()

    async def _wait_closed(self) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(self.outbox.finished.wait()), CLOSE_WAIT_S)
        except TimeoutError:
            log.warning("connection %s: client not reading; its close was not delivered", self.id)
            self._ended.set()

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
        if self.key is not None:
            self.key.check_context()
        model = self.services.resolve_model(spec.model)
        spec = dataclasses.replace(spec, model=model, language=self.services.resolve_language(model, spec.language))
        voice = await self.services.conditionals(spec.voice, spec.model)  # a VoiceError is a ClientError
        serial = self._next_serial
        self._next_serial += 1
        chunking = runtime.chunker_config(spec.chunk_size, self.services.tags(model), spec.language)
        context = StreamContext(self, spec, serial, voice, chunking, encoder, framing(serial))
        self.contexts[context_id] = context
        if self.key is not None:
            self.key.contexts += 1
        return context

    def forget(self, context: StreamContext) -> None:
        if self.contexts.get(context.id) is context:
            del self.contexts[context.id]
            if self.key is not None:
                self.key.contexts -= 1

    def awaiting_audio(self) -> bool:
        """Some context has text in its chunker or chunks in the engine: the client is waiting, not idle."""
        return any(context.awaiting_audio() for context in self.contexts.values())

    # ---- receiving and watching -----------------------------------------------------------------------------

    async def _receive(self, first_message: str | None) -> None:
        """Every client message in order, until the client goes away or the connection is closing (a client
        that keeps sending after its close was queued is not read any more)."""
        await self.greet()
        if first_message is not None:
            await self.on_text(first_message)
        while not self.outbox.closing:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            self.last_activity = time.monotonic()
            if message.get("text") is not None:
                await self.on_text(message["text"])
            else:
                self.on_binary()
            # Messages already received are read without a pause: let the sender (and other connections)
            # run between two, so replies reach a reading client instead of piling up in the outbox.
            await asyncio.sleep(0)

    async def _watchdog(self) -> None:
        """Every tick: drop contexts whose client reads slower than real time, then the protocol's idle rule."""
        settings = self.services.settings
        while True:
            # The idle limit may come with the protocol's handshake, so the tick is worked out every time.
            tick = min(WATCHDOG_TICK_S, settings.send_buffer_s / 4, self.idle_timeout_s / 4)
            await asyncio.sleep(max(0.01, tick))
            if self.outbox.closing:  # a close is queued: it reaches the client, or the client is given up on
                await self._wait_closed()
                return
            now = time.monotonic()
            for context in list(self.contexts.values()):
                if context.reader_lag_s(now) > settings.send_buffer_s:
                    context.fail("slow_consumer", f"the client read too slowly: audio waited more than "
                                                  f"{settings.send_buffer_s:g} s past its playback time")
            if await self.check_idle(now):
                return
