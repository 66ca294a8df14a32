"""`/v1/stream`: one WebSocket, many contexts (docs/protocol.md). The adapter between the wire format
(native_protocol.py) and the speech core: `StreamConnection` turns client messages into the core's context
calls, `NativeFraming` turns a context's events into JSON events and channel-tagged binary audio frames.
"""

from __future__ import annotations

from dataclasses import asdict
from functools import partial

from starlette.websockets import WebSocket

from app.audio.encode import SAMPLE_RATES, STREAM_ENCODINGS, StreamEncoder
from app.errors import ClientError
from app.server import native_protocol as p
from app.server.core.close_codes import NORMAL_CLOSURE
from app.server.core.connection import Connection
from app.server.core.context import Framing, StatsSource, StreamContext
from app.server.core.outbox import Payload
from app.server.core.services import Services
from app.server.core.spec import CHUNK_SIZE_RANGE, ContextSpec
from app.text.chunker import TextChunk
from app.voices.library import DEFAULT_VOICE_ID


class NativeFraming(Framing):
    """/v1/stream: JSON events, binary audio frames tagged with the context's channel."""

    def __init__(self, context_id: str, channel: int):
        self.context_id = context_id
        self.channel = channel

    def chunk_started(self, chunk: TextChunk) -> Payload:
        return p.chunk_started_event(self.context_id, chunk.index, chunk.source)

    def audio(self, data: bytes, seconds: float, chunk: TextChunk | None, chunk_ends: bool) -> Payload:
        return p.audio_frame(self.channel, data)

    def alignment(self, chunk: TextChunk, word_times: list[tuple[float, float]]) -> Payload:
        return p.alignment_event(self.context_id, chunk.index, chunk.speak_text.split(), word_times)

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


class StreamConnection(Connection):
    async def greet(self) -> None:
        self.outbox.send(self._ready_event())

    def _ready_event(self) -> str:
        s = self.services.settings
        limits = {"max_contexts": s.max_contexts_per_connection, "max_buffered_text": s.max_buffered_text,
                  "max_message_bytes": s.max_message_bytes, "idle_timeout_s": s.idle_timeout_s,
                  "send_buffer_s": s.send_buffer_s, "encodings": list(STREAM_ENCODINGS),
                  "sample_rates": list(SAMPLE_RATES), "chunk_size": list(CHUNK_SIZE_RANGE)}
        defaults = {"voice": DEFAULT_VOICE_ID, "output": asdict(p.OutputFormat()),
                    "generation": asdict(self.services.base_generation),
                    "chunking": {"chunk_size": self.services.runtime.chunk_size}}
        return p.ready_event(self.services.engine_info, limits, defaults)

    def send_error(self, code: str, message: str, context_id: str | None = None) -> None:
        self.services.metrics.errors.labels(code).inc()
        self.outbox.send(p.error_event(code, message, context_id))

    async def check_idle(self, now: float) -> bool:
        idle_timeout_s = self.idle_timeout_s
        if now - self.last_activity <= idle_timeout_s or self.awaiting_audio():
            return False
        self.send_error("idle_timeout", f"nothing sent or received for {idle_timeout_s:g} s")
        await self.close(NORMAL_CLOSURE, "idle timeout")
        return True

    def on_binary(self) -> None:
        self.send_error("binary_not_supported", "binary frames are not accepted; send JSON text frames")

    async def on_text(self, raw: str) -> None:
        try:
            message = p.parse_message(raw, self.services.base_generation)
        except p.ProtocolError as exc:
            self.send_error(exc.code, exc.message, exc.context_id)
            return
        try:
            await self._dispatch(message)
        except ClientError as exc:  # the core's refusals concern the message's context
            self.send_error(exc.code, exc.message, message.context_id)

    async def _dispatch(self, message: p.ClientMessage) -> None:
        if isinstance(message, p.Start):
            await self._open(message)
            return
        context = self.contexts.get(message.context_id)
        if isinstance(message, p.Text):
            if context is None:  # text to an unknown context opens it with defaults
                context = await self._open(p.Start(ContextSpec(context_id=message.context_id)))
            context.push_text(message.text)
            return
        if context is None:
            raise ClientError("unknown_context", f"{message.type}: context {message.context_id!r} is not open")
        {"flush": context.flush, "cancel": context.cancel, "end": context.end}[message.type]()

    async def _open(self, start: p.Start) -> StreamContext:
        output = start.output
        encoder = StreamEncoder(output.encoding, output.sample_rate, source_rate=self.services.sample_rate)
        context = await self.open_context(start.spec, encoder, partial(NativeFraming, start.context_id))
        self.outbox.send(p.started_event(start.context_id, context.serial, output))
        return context


async def stream_endpoint(websocket: WebSocket) -> None:
    await StreamConnection(websocket, Services.from_state(websocket.app.state)).serve()
