"""`/v1/stream`: one WebSocket, many contexts (docs/protocol.md), and the context machinery other WebSocket
protocols reuse (app/server/elevenlabs.py).

Per connection (`Connection`, whatever the protocol): admission, a receive loop, an `Outbox` with one sender
task (the only writer to the socket, so a slow reader blocks nobody but itself), and a watchdog (slow readers,
idleness). `StreamConnection` speaks /v1/stream on top of it.

Per context (`StreamContext`): text -> `AdaptiveChunker` -> a `ChunkPipeline` (app/server/pipeline.py: one
engine request per chunk, submitted as soon as the chunk exists, so chunks of a context may synthesize
concurrently) -> an emitter task that encodes each chunk's audio strictly in chunk order into the outbox. What goes on the wire for each of its events (audio, chunk
started/done, flushed, done, cancelled, error) is its `Framing`'s business, so the pipeline is the same for
every protocol. Timing stats are taken when frames are actually handed to the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any, Callable

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketDisconnected

from app.audio.encode import SAMPLE_RATES, STREAM_ENCODINGS, AudioEncoder, StreamEncoder
from app.engine.types import EngineError
from app.server import protocol as p
from app.server.auth import accepted_subprotocol
from app.server.pipeline import AudioPiece, ChunkDone, ChunkPipeline, Marker
from app.server.runtime import GOING_AWAY
from app.server.services import Services
from app.server.stats import ChunkTimes, ContextTimes, PlaybackClock
from app.text.chunker import AdaptiveChunker, ChunkerConfig, TextChunk
from app.voices.library import VoiceError

log = logging.getLogger(__name__)

FRAME_SECONDS = 0.1  # longest audio frame: fine-grained enough for prompt cancels and honest pacing stats
WATCHDOG_TICK_S = 0.25
CLOSE_WAIT_S = 2.0  # how long a close waits for queued frames to reach a client that has stopped reading
NORMAL_CLOSURE = 1000
INTERNAL_ERROR = 1011
TRY_AGAIN_LATER = 1013

StatsSource = Callable[[], dict[str, Any]]  # builds stats when called (they are final only once sent)


# ---- the send side ------------------------------------------------------------------------------------------

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
    """The connection's send queue. Producers never wait; one sender task writes in order, so a client that
    stops reading blocks only its own connection."""

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


# ---- what a context puts on the wire ------------------------------------------------------------------------

class Framing:
    """How one context's events become messages of its protocol. Each method returns what to queue, or None
    for "nothing on the wire" (the pipeline and its stats run the same either way)."""

    frame_seconds = FRAME_SECONDS  # longest audio message

    def chunk_started(self, chunk: TextChunk) -> Payload:
        return None

    def audio(self, data: bytes, seconds: float, chunk: TextChunk | None, chunk_ends: bool) -> Payload:
        """One frame of encoded audio. `chunk` is the text it speaks (None for an encoder's held-back tail);
        `chunk_ends` is set on the chunk's last frame when the engine marked its final piece."""
        raise NotImplementedError

    def chunk_done(self, chunk: TextChunk, stats: StatsSource) -> Payload:
        return None

    def flushed(self) -> Payload:
        return None

    def done(self, stats: StatsSource) -> Payload:
        raise NotImplementedError

    def cancelled(self) -> Payload:
        return None

    def error(self, code: str, message: str) -> Payload:
        raise NotImplementedError


class NativeFraming(Framing):
    """/v1/stream: JSON events, binary audio frames tagged with the context's channel."""

    def __init__(self, context_id: str, channel: int):
        self.context_id = context_id
        self.channel = channel

    def chunk_started(self, chunk: TextChunk) -> Payload:
        return p.chunk_started_event(self.context_id, chunk.index, chunk.text)

    def audio(self, data: bytes, seconds: float, chunk: TextChunk | None, chunk_ends: bool) -> Payload:
        return p.audio_frame(self.channel, data)

    def chunk_done(self, chunk: TextChunk, stats: StatsSource) -> Payload:
        return lambda: p.chunk_done_event(self.context_id, chunk.index, stats())

    def flushed(self) -> Payload:
        return p.flushed_event(self.context_id)

    def done(self, stats: StatsSource) -> Payload:
        return lambda: p.done_event(self.context_id, stats())

    def cancelled(self) -> Payload:
        return p.cancelled_event(self.context_id)

    def error(self, code: str, message: str) -> Payload:
        return p.error_event(code, message, self.context_id)


# ---- one context --------------------------------------------------------------------------------------------

class StreamContext:
    def __init__(self, connection: "Connection", start: p.Start, serial: int, voice: Any, chunk_size: int,
                 encoder: AudioEncoder, framing: Framing):
        self.connection = connection
        self.services = connection.services
        self.id = start.context_id
        self.serial = serial  # unique on the connection: names its engine requests
        self.start = start
        self.framing = framing
        self.chunker = AdaptiveChunker(ChunkerConfig(chunk_size=chunk_size))
        self.encoder = encoder
        sample_bytes = max(1, encoder.bytes_per_second // encoder.sample_rate)  # 1 for compressed streams
        frame_bytes = round(encoder.bytes_per_second * framing.frame_seconds)
        self.frame_bytes = max(sample_bytes, frame_bytes - frame_bytes % sample_bytes)
        self.times = ContextTimes()
        self.clock = PlaybackClock()
        self.pipeline = ChunkPipeline(self.services, f"{connection.id}-{serial}", voice, start.generation,
                                      start.priority)
        self._waiting: deque[tuple[float, float]] = deque()  # (queued at, seconds) of frames not yet sent
        self._waiting_s = 0.0
        self.last_activity = time.monotonic()  # a message for it, or its audio sent (protocols' idle rules)
        self.ended = False
        self.closed = False
        self.dropped = False  # aborted (cancel, failure, disconnect): queued audio was discarded
        self._last_times: ChunkTimes | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._emitter = asyncio.create_task(self._emit())

    @property
    def outbox(self) -> Outbox:
        return self.connection.outbox

    # ---- client messages ------------------------------------------------------------------------------------

    def touch(self) -> None:
        self.last_activity = time.monotonic()

    def push_text(self, text: str) -> None:
        self._refuse_after_end("text")
        limit = self.services.settings.max_buffered_text
        if self.unspoken_chars() + len(text) > limit:
            self.fail("text_too_long", f"more than {limit} characters of unspoken text; context cancelled")
            return
        now = time.monotonic()
        self.last_activity = now
        if self.times.first_text is None:
            self.times.first_text = now
        self._release(self.chunker.push(text, now, self.buffered_s(now)), now)

    def release_buffered(self) -> None:
        """Send everything buffered to synthesis now, without waiting for a boundary."""
        self._refuse_after_end("flush")
        now = time.monotonic()
        self.last_activity = now
        self._release(self.chunker.flush(), now)

    def flush(self) -> None:
        """`release_buffered`, then the encoder's held-back tail and the protocol's `flushed` once all of it
        has been queued."""
        self.release_buffered()
        self.pipeline.mark(Marker.FLUSH)

    def end(self, speak_buffered: bool = True) -> None:
        """No more text: speak the rest (or, with `speak_buffered=False`, only what was already released to
        synthesis, dropping the text still buffered), then `done`, then the context closes."""
        self._refuse_after_end("end")
        self.ended = True
        now = time.monotonic()
        self.last_activity = now
        if speak_buffered:
            self._release(self.chunker.end(), now)
        else:
            self.chunker.clear()
            self._schedule_poll()
        self.pipeline.mark(Marker.END)

    def cancel(self) -> None:
        self.abort(self.framing.cancelled())

    def _refuse_after_end(self, kind: str) -> None:
        if self.ended:
            raise p.ProtocolError("bad_request", f"{kind}: context {self.id!r} has already ended", self.id)

    # ---- chunks and engine requests -------------------------------------------------------------------------

    def unspoken_chars(self) -> int:
        return self.chunker.pending_chars + sum(len(job.chunk.text) for job in self.pipeline.pending)

    def buffered_s(self, now: float) -> float:
        """Audio the listener has ahead of it: sent but not yet played, plus queued for sending."""
        return self.clock.buffered_s(now) + self._waiting_s

    def reader_lag_s(self, now: float) -> float:
        """How long the oldest unsent frame has been overdue: waiting while a listener playing in real time
        would already need it. Large only when the client reads slower than real time."""
        if not self._waiting:
            return 0.0
        queued_at = self._waiting[0][0]
        needed_from = max(queued_at, self.clock.dry_at() or queued_at)
        return max(0.0, now - needed_from)

    def _release(self, chunks: list[TextChunk], now: float) -> None:
        for chunk in chunks:
            self._start_chunk(chunk, now)
        self._schedule_poll()

    def _start_chunk(self, chunk: TextChunk, now: float) -> None:
        job = self.pipeline.release(chunk, now, self.buffered_s(now))
        self.times.chunks.append(job.times)
        if self.times.first_release is None:
            self.times.first_release = now
        self.outbox.send(self.framing.chunk_started(chunk), owner=self)

    def _schedule_poll(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self.chunker.next_deadline()
        if deadline is not None and not self.closed:
            delay = max(0.0, deadline - time.monotonic())
            self._timer = asyncio.get_running_loop().call_later(delay, self._poll)

    def _poll(self) -> None:
        self._timer = None
        if self.closed:
            return
        now = time.monotonic()
        self._release(self.chunker.poll(now, self.buffered_s(now)), now)

    # ---- audio out, in chunk order --------------------------------------------------------------------------

    async def _emit(self) -> None:
        try:
            await self._emit_in_order()
        except Exception as exc:  # a bug here must end this context loudly, not leave it hanging
            log.exception("context %s failed", self.id)
            self.fail("internal_error", f"internal error: {exc}")

    async def _emit_in_order(self) -> None:
        try:
            async for event in self.pipeline.ordered():
                if isinstance(event, AudioPiece):
                    job = event.job
                    self._queue_audio(self.encoder.encode(event.pcm), job.times, job.chunk, event.ends_chunk)
                elif isinstance(event, ChunkDone):
                    job = event.job
                    self._last_times = job.times
                    self.outbox.send(self.framing.chunk_done(job.chunk, job.times.as_stats), owner=self)
                elif event is Marker.FLUSH:
                    self._queue_audio(self.encoder.flush(), self._last_times)
                    self.outbox.send(self.framing.flushed(), owner=self)
                else:  # Marker.END, the last event
                    self._queue_audio(self.encoder.flush(), self._last_times)
                    # The context stays open (cancel still works) until `done` has reached the socket.
                    self.outbox.send(self.framing.done(lambda: self.times.as_stats(self.clock)), owner=self,
                                     on_sent=lambda now: self._close())
        except EngineError as exc:
            self.fail("engine_error", exc.message)

    def _queue_audio(self, data: bytes, times: ChunkTimes | None, chunk: TextChunk | None = None,
                     chunk_ends: bool = False) -> None:
        """Split into frames of at most the framing's frame_seconds and queue them."""
        if not data or times is None:
            return
        now = time.monotonic()
        for start in range(0, len(data), self.frame_bytes):
            piece = data[start:start + self.frame_bytes]
            seconds = len(piece) / self.encoder.bytes_per_second
            self._waiting.append((now, seconds))
            self._waiting_s += seconds
            last = chunk_ends and start + self.frame_bytes >= len(data)
            self.outbox.send(self.framing.audio(piece, seconds, chunk, last), owner=self,
                             on_sent=partial(self._on_audio_sent, times, seconds))

    def _on_audio_sent(self, times: ChunkTimes, seconds: float, now: float) -> None:
        if self.dropped:  # a frame that was already being written when the context was dropped
            return
        self._waiting.popleft()
        self._waiting_s -= seconds
        self.connection.last_activity = now
        self.last_activity = now
        if times.first_audio is None:
            times.first_audio = now
        times.audio_s += seconds
        if self.times.first_audio is None:
            self.times.first_audio = now
            self.services.metrics.ttfa.observe(now - (self.times.first_text or now))
        if self.clock.on_frame(now, seconds, times.first_text):
            self.services.metrics.underruns.inc()

    # ---- endings --------------------------------------------------------------------------------------------

    def fail(self, code: str, message: str) -> None:
        if self.closed:
            return
        self.services.metrics.errors.labels(code).inc()
        self.abort(self.framing.error(code, message))
        self.connection.context_failed(self, code, message)

    def abort(self, final_event: Payload) -> None:
        """Stop at once: abort every in-flight request, drop queued audio, then send `final_event`."""
        if self.closed:
            return
        self.dropped = True
        self.pipeline.cancel()
        self.chunker.clear()
        self.outbox.purge(self)
        self._waiting.clear()
        self._waiting_s = 0.0
        if final_event is not None:
            self.outbox.send(final_event)
        if self._emitter is not asyncio.current_task():
            self._emitter.cancel()
        self._close()

    def _close(self) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.connection.forget(self)


# ---- one connection, whatever its protocol ------------------------------------------------------------------

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
    def open_contexts(self) -> int:
        return len(self.contexts)

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
        runtime, settings = self.services.runtime, self.services.settings
        if runtime.draining:
            return GOING_AWAY, "server shutting down"
        if not runtime.ready:
            return TRY_AGAIN_LATER, "server warming up"
        if len(runtime.connections) >= settings.max_connections:
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

    async def open_context(self, start: p.Start, encoder: AudioEncoder,
                           framing: Callable[[int], Framing]) -> StreamContext:
        """A new context; `framing(serial)` builds its framing. Raises `ProtocolError` when it may not open."""
        settings, runtime = self.services.settings, self.services.runtime
        context_id = start.context_id
        if runtime.draining:
            raise p.ProtocolError("shutting_down", "the server is shutting down and opens no new contexts",
                                  context_id)
        if context_id in self.contexts:
            raise p.ProtocolError("bad_request", f"start: context {context_id!r} is already open", context_id)
        if len(self.contexts) >= settings.max_contexts_per_connection:
            raise p.ProtocolError("too_many_contexts", f"at most {settings.max_contexts_per_connection} open "
                                                       "contexts per connection", context_id)
        try:
            voice = await self.services.voices.conditionals(start.voice)
        except VoiceError as exc:
            raise p.ProtocolError(exc.code, exc.message, context_id) from None
        serial = self._next_serial
        self._next_serial += 1
        context = StreamContext(self, start, serial, voice, start.chunk_size or runtime.chunk_size, encoder,
                                framing(serial))
        self.contexts[context_id] = context
        self.services.metrics.active_streams.inc()
        return context

    def forget(self, context: StreamContext) -> None:
        if self.contexts.get(context.id) is context:
            del self.contexts[context.id]
            self.services.metrics.active_streams.dec()
            self.services.runtime.contexts_changed()

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


# ---- /v1/stream ---------------------------------------------------------------------------------------------

class StreamConnection(Connection):
    async def greet(self) -> None:
        self.outbox.send(self._ready_event())

    def _ready_event(self) -> str:
        s = self.services.settings
        limits = {"max_contexts": s.max_contexts_per_connection, "max_buffered_text": s.max_buffered_text,
                  "max_message_bytes": s.max_message_bytes, "idle_timeout_s": s.idle_timeout_s,
                  "send_buffer_s": s.send_buffer_s, "encodings": list(STREAM_ENCODINGS),
                  "sample_rates": list(SAMPLE_RATES), "chunk_size": list(p.CHUNK_SIZE_RANGE)}
        defaults = {"voice": p.DEFAULT_VOICE, "output": asdict(p.OutputFormat()),
                    "generation": asdict(self.services.base_generation),
                    "chunking": {"chunk_size": self.services.runtime.chunk_size}}
        return p.ready_event(self.services.engine_info, limits, defaults)

    def send_error(self, code: str, message: str, context_id: str | None = None) -> None:
        self.services.metrics.errors.labels(code).inc()
        self.outbox.send(p.error_event(code, message, context_id))

    async def check_idle(self, now: float) -> bool:
        idle_timeout_s = self.idle_timeout_s
        if now - self.last_activity <= idle_timeout_s:
            return False
        self.send_error("idle_timeout", f"nothing sent or received for {idle_timeout_s:g} s")
        await self.close(NORMAL_CLOSURE, "idle timeout")
        return True

    def on_binary(self) -> None:
        self.send_error("binary_not_supported", "binary frames are not accepted; send JSON text frames")

    async def on_text(self, raw: str) -> None:
        try:
            message = p.parse_message(raw, self.services.base_generation)
            await self._dispatch(message)
        except p.ProtocolError as exc:
            self.send_error(exc.code, exc.message, exc.context_id)

    async def _dispatch(self, message: p.ClientMessage) -> None:
        if isinstance(message, p.Start):
            await self._open(message)
            return
        context = self.contexts.get(message.context_id)
        if isinstance(message, p.Text):
            if context is None:  # text to an unknown context opens it with defaults
                context = await self._open(p.Start(context_id=message.context_id))
            context.push_text(message.text)
            return
        if context is None:
            raise p.ProtocolError("unknown_context", f"{message.type}: context {message.context_id!r} is not open",
                                  message.context_id)
        {"flush": context.flush, "cancel": context.cancel, "end": context.end}[message.type]()

    async def _open(self, start: p.Start) -> StreamContext:
        output = start.output
        encoder = StreamEncoder(output.encoding, output.sample_rate, source_rate=self.services.sample_rate)
        context = await self.open_context(start, encoder, partial(NativeFraming, start.context_id))
        self.outbox.send(p.started_event(start.context_id, context.serial, output))
        return context


async def stream_endpoint(websocket: WebSocket) -> None:
    await StreamConnection(websocket, Services.from_state(websocket.app.state)).serve()
