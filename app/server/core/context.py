"""One context of a WebSocket connection, whatever its protocol: text in, audio frames out in order.

Text -> `AdaptiveChunker` (app/text) -> a `ChunkPipeline` (pipeline.py: one engine request per chunk, submitted
as soon as the chunk exists, so chunks of a context may synthesize concurrently) -> this context's sink, which
encodes each chunk's audio strictly in chunk order into the connection's `Outbox`. What goes on the wire for
each of its events (audio, chunk started/done, flushed, done, cancelled, error) is its `Framing`'s business, so
the pipeline is the same for every protocol. Timing stats are taken when frames are actually handed to the
socket.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from app.audio.encode import AudioEncoder
from app.engine.types import EngineError
from app.errors import ClientError
from app.server.core.outbox import Outbox, Payload
from app.server.core.pipeline import AudioPiece, ChunkJob, ChunkPipeline, Marker
from app.server.core.spec import ContextSpec
from app.server.core.stats import ChunkTimes, ContextTimes, PlaybackClock
from app.text.chunker import AdaptiveChunker, ChunkerConfig, TextChunk

if TYPE_CHECKING:
    from app.server.core.connection import Connection

log = logging.getLogger(__name__)

FRAME_SECONDS = 0.1  # longest audio frame: fine-grained enough for prompt cancels and honest pacing stats

StatsSource = Callable[[], dict[str, Any]]  # builds stats when called (they are final only once sent)


# ---- what a context puts on the wire ------------------------------------------------------------------------

class Framing:
    """How one context's events become messages of its protocol. Each method returns what to queue, or None
    for "nothing on the wire" (the pipeline and its stats run the same either way)."""

    frame_seconds = FRAME_SECONDS  # longest audio message

    def chunk_started(self, chunk: TextChunk) -> Payload:
        return None

    def alignment(self, chunk: TextChunk, word_times: list[tuple[float, float]]) -> Payload:
        """Measured word times of a chunk, for a context that asked for them."""
        return None

    def measure(self, chunk: TextChunk, word_starts: list[float]) -> None:
        """The measured starts of the chunk's words reached so far, before its next audio (transcripts)."""

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


# ---- one context --------------------------------------------------------------------------------------------

class StreamContext:
    def __init__(self, connection: Connection, spec: ContextSpec, serial: int, voice: Any, chunking: ChunkerConfig,
                 encoder: AudioEncoder, framing: Framing):
        self.connection = connection
        self.services = connection.services
        self.id = spec.context_id
        self.serial = serial  # unique on the connection: names its engine requests
        self.spec = spec
        self.framing = framing
        self.chunker = AdaptiveChunker(chunking)
        self.encoder = encoder
        sample_bytes = max(1, encoder.bytes_per_second // encoder.sample_rate)  # 1 for compressed streams
        frame_bytes = round(encoder.bytes_per_second * framing.frame_seconds)
        self.frame_bytes = max(sample_bytes, frame_bytes - frame_bytes % sample_bytes)
        self.times = ContextTimes()
        self.clock = PlaybackClock()
        self.pipeline = ChunkPipeline(self.services, f"{connection.id}-{serial}", voice, spec.generation,
                                      spec.priority, client=connection.id, quota=connection.quota,
                                      model=spec.model, language=spec.language)
        # A drain waits for the context; past its deadline the connection's 1001 close ends it.
        self._stream = self.services.runtime.open_stream(stop=lambda: None)
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
            raise ClientError("bad_request", f"{kind}: context {self.id!r} has already ended")

    # ---- chunks and engine requests -------------------------------------------------------------------------

    def awaiting_audio(self) -> bool:
        """Text in the chunker or chunks not yet spoken: the client is waiting for audio."""
        return self.chunker.pending_chars > 0 or bool(self.pipeline.pending)

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
        try:
            for chunk in chunks:
                self._start_chunk(chunk, now)
        except ClientError as exc:  # the client's quota of engine requests is full
            self.fail(exc.code, exc.message)
            return
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
            async for _ in self.pipeline.deliver(self):  # the sink methods below queue into the outbox
                pass
        except EngineError as exc:
            self.fail("engine_error", exc.message)

    def on_audio(self, piece: AudioPiece) -> Awaitable[None] | None:
        if self.encoder.cpu_heavy:
            return self._encode_off_loop(piece)
        job = piece.job
        self._measure(job)
        if piece.ends_chunk:
            self._send_alignment(job)
        self._queue_audio(self.encoder.encode(piece.pcm), job.times, job.chunk, piece.ends_chunk)
        return None

    def _measure(self, job: ChunkJob) -> None:
        if job.word_starts is not None:
            self.framing.measure(job.chunk, job.word_starts)

    def _send_alignment(self, job: ChunkJob) -> None:
        """With the chunk's last audio (or before its `chunk_done` when that had none), once."""
        if self.spec.alignment and job.word_times is not None and not job.alignment_sent:
            job.alignment_sent = True
            self.outbox.send(self.framing.alignment(job.chunk, job.word_times), owner=self)

    async def _encode_off_loop(self, piece: AudioPiece) -> None:
        """MP3 and resampling in a thread, so other streams are not held up; `deliver` awaits it before the
        next event, so frames stay in order."""
        data = await asyncio.to_thread(self.encoder.encode, piece.pcm)
        if not self.closed:
            self._measure(piece.job)
            if piece.ends_chunk:
                self._send_alignment(piece.job)
            self._queue_audio(data, piece.job.times, piece.job.chunk, piece.ends_chunk)

    def on_chunk_done(self, job: ChunkJob) -> None:
        self._send_alignment(job)
        self._last_times = job.times
        self.outbox.send(self.framing.chunk_done(job.chunk, job.times.as_stats), owner=self)

    def on_marker(self, marker: Marker) -> None:
        self._queue_audio(self.encoder.flush(), self._last_times)
        if marker is Marker.FLUSH:
            self.outbox.send(self.framing.flushed(), owner=self)
            return
        # Marker.END, the last event. The context stays open (cancel still works) until `done` has reached
        # the socket.
        self.outbox.send(self.framing.done(lambda: self.times.as_stats(self.clock)), owner=self,
                         on_sent=lambda now: self._close())

    def _queue_audio(self, data: bytes, times: ChunkTimes | None, chunk: TextChunk | None = None,
                     chunk_ends: bool = False) -> None:
        """Split into frames of at most the framing's frame_seconds and queue them."""
        if not data or times is None or self.closed:
            return
        now = time.monotonic()
        for start in range(0, len(data), self.frame_bytes):
            piece = data[start:start + self.frame_bytes]
            if self.outbox.over_share(self, len(piece)):
                self.fail("slow_consumer", f"the client read too slowly: more than its share of "
                                           f"{self.outbox.max_bytes} bytes waited to be sent")
                return
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
            self.services.metrics.ttfa.labels(self.spec.model).observe(now - (self.times.first_text or now))
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
        self._stream.close()
        self.connection.forget(self)
