"""One reply's text chunks through the engine and back in order: the part /v1/stream contexts (and the
protocols built on them) share with whole-text HTTP synthesis.

Each released chunk becomes one engine request, submitted at once, so a reply's chunks may synthesize
concurrently, batched with everything else the engine runs. `ordered()` hands their audio back strictly in
chunk order, with the caller's markers (flush, end) in place between chunks, and `deliver(sink)` is its one
consumer: it hands each event to a `PipelineSink` (a WebSocket context, an HTTP synthesis). The pipeline also keeps the
per-chunk metrics: speech tokens, and the real-time factor (synthesis wall time / engine audio seconds).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol, TypeVar

import numpy as np

from app.engine.types import EngineError, EngineRequest, GenerationSettings
from app.engine.worker import RequestHandle
from app.server.core.quota import RequestQuota, Ticket
from app.server.core.services import Services
from app.server.core.stats import ChunkTimes
from app.text.chunker import TextChunk

SPEECH_CHARS_PER_SECOND = 15.0  # rough speaking rate, to estimate when not-yet-synthesized audio will play


class ChunkJob:
    """One text chunk: its engine request and the PCM pieces received so far (in order, `None` at the end)."""

    def __init__(self, chunk: TextChunk, times: ChunkTimes):
        self.chunk = chunk
        self.times = times
        self.pieces: asyncio.Queue[np.ndarray | None] = asyncio.Queue()
        self.error: EngineError | None = None
        self.speech_tokens = 0
        self.emitted_s = 0.0  # audio seconds of this chunk handed out by `ChunkPipeline.ordered`
        # The engine's final piece of audio, once it has arrived (it stays None when the request ended without
        # audio in its final output): lets a framing know a chunk's last audio when it queues it.
        self.last_piece: np.ndarray | None = None
        self._handle: RequestHandle | None = None
        self._reader: asyncio.Task | None = None
        self.ticket: Ticket | None = None  # its place in the client's quota, if it has one
        # Measured (start, end) seconds of each word, from the engine's final output where the model measures them.
        self.word_times: list[tuple[float, float]] | None = None
        self.word_starts: list[float] | None = None  # measured starts of the words reached so far
        self.alignment_sent = False

    def start(self, handle: RequestHandle) -> None:
        self._handle = handle
        self._reader = asyncio.create_task(self._collect(handle))

    def finish_empty(self) -> None:
        """A chunk with nothing to speak (punctuation only): no request, no audio."""
        self.times.last_synthesized = self.times.released
        self.pieces.put_nowait(None)

    def estimated_unemitted_s(self) -> float:
        return max(0.0, len(self.chunk.speak_text) / SPEECH_CHARS_PER_SECOND - self.emitted_s)

    def cancel(self) -> None:
        self._release_ticket()
        if self._handle is not None:
            self._handle.cancel()  # frees the engine slot before the worker's next step
        if self._reader is not None:
            self._reader.cancel()

    async def _collect(self, handle: RequestHandle) -> None:
        try:
            async for output in handle:
                if output.word_times is not None:
                    self.word_times = output.word_times
                if output.word_starts is not None:
                    self.word_starts = output.word_starts
                if output.pcm.size:
                    if output.finished:
                        self.last_piece = output.pcm
                    self.pieces.put_nowait(output.pcm)
                self.speech_tokens = max(self.speech_tokens, output.speech_tokens)
        except EngineError as exc:
            self.error = exc
        finally:
            self._release_ticket()
            self.times.last_synthesized = time.monotonic()
            self.pieces.put_nowait(None)

    def _release_ticket(self) -> None:
        if self.ticket is not None:
            self.ticket.done()


class Marker(Enum):
    """A point between chunks that the caller wants to act on in order."""

    FLUSH = "flush"
    END = "end"  # the last event `ordered()` yields


@dataclass(frozen=True)
class AudioPiece:
    job: ChunkJob
    pcm: np.ndarray  # float32 at the engine's sample rate

    @property
    def ends_chunk(self) -> bool:
        """The engine marked this piece as its chunk's last."""
        return self.pcm is self.job.last_piece


@dataclass(frozen=True)
class ChunkDone:
    """All audio of the chunk has been handed out and the engine finished it without error."""

    job: ChunkJob


Event = AudioPiece | ChunkDone | Marker
T = TypeVar("T", covariant=True)


class PipelineSink(Protocol[T]):
    """What a reply's events turn into, in order. A method's result, unless None, is what `deliver` yields
    (an HTTP body's bytes); a sink that pushes its output elsewhere (a socket's outbox) returns None."""

    def on_audio(self, piece: AudioPiece) -> T | Awaitable[T | None] | None: ...

    def on_chunk_done(self, job: ChunkJob) -> T | None: ...

    def on_marker(self, marker: Marker) -> T | None: ...


class ChunkPipeline:
    """The chunks of one reply, spoken with one voice, model, settings and priority; engine request ids are
    `{request_prefix}-{chunk index}`. `client` names who asks (the engine shares its rows fairly across
    clients); with a `quota`, requests beyond the client's running limit wait there for their turn."""

    def __init__(self, services: Services, request_prefix: str, voice: Any, settings: GenerationSettings,
                 priority: int, client: str = "", quota: RequestQuota | None = None, model: str = "",
                 language: str = ""):
        self.services = services
        self.model = model
        self.language = language
        self.client = client
        self.quota = quota
        self.request_prefix = request_prefix
        self.voice = voice
        self.settings = settings
        self.priority = priority
        self.pending: list[ChunkJob] = []  # released chunks whose audio has not all been handed out
        self._released = 0
        self._plan: asyncio.Queue[ChunkJob | Marker] = asyncio.Queue()
        self._cancelled = False

    def release(self, chunk: TextChunk, now: float, buffered_s: float = 0.0) -> ChunkJob:
        """Submit `chunk` for synthesis (a chunk with nothing to speak gets no request, and no audio).
        `buffered_s`: audio the listener has ahead of it already. Raises `ClientError` (`too_many_requests`)
        when the client's quota is full."""
        job = ChunkJob(chunk, ChunkTimes(first_text=chunk.first_text_at or now, released=now))
        if chunk.speak_text.strip():
            self._submit(job, self._request(chunk, now, buffered_s))
        else:
            job.finish_empty()
        self._released += 1
        self.pending.append(job)
        self._plan.put_nowait(job)
        return job

    def _submit(self, job: ChunkJob, request: EngineRequest) -> None:
        def start() -> None:
            if not self._cancelled:
                job.start(self.services.worker.submit(request))

        if self.quota is None:
            start()
        else:
            job.ticket = self.quota.admit(start)

    def mark(self, marker: Marker) -> None:
        """`marker` is yielded by `ordered()` once the audio of every chunk released before it was."""
        self._plan.put_nowait(marker)

    def cancel(self) -> None:
        """Abort every request still running; `ordered()` ends where it is."""
        self._cancelled = True
        for job in self.pending:
            job.cancel()  # a no-op for finished requests; frees the engine slot of running ones
        self.pending.clear()

    async def ordered(self) -> AsyncIterator[Event]:
        """Each chunk's audio pieces as they arrive, then its `ChunkDone`, chunk after chunk in release order,
        and the markers where they were put. Ends after `Marker.END` or once cancelled; raises the
        `EngineError` of a chunk that failed."""
        while True:
            item = await self._plan.get()
            if isinstance(item, Marker):
                yield item
                if item is Marker.END:
                    return
                continue
            while (pcm := await item.pieces.get()) is not None:
                item.emitted_s += pcm.size / self.services.sample_rate
                yield AudioPiece(item, pcm)
            if item.error is not None:
                raise item.error
            if self._cancelled:
                return
            self._chunk_done(item)
            yield ChunkDone(item)

    async def deliver(self, sink: PipelineSink[T]) -> AsyncIterator[T]:
        """Every event of `ordered()` handed to `sink`, yielding what it returns; ends and raises as
        `ordered()` does. `on_audio` may return a coroutine (CPU-heavy encoding it runs off the event loop):
        it is awaited before the next event, so the order holds."""
        async for event in self.ordered():
            if isinstance(event, AudioPiece):
                produced = sink.on_audio(event)
                result = await produced if inspect.isawaitable(produced) else produced
            elif isinstance(event, ChunkDone):
                result = sink.on_chunk_done(event.job)
            else:
                result = sink.on_marker(event)
            if result is not None:
                yield result

    def _request(self, chunk: TextChunk, now: float, buffered_s: float) -> EngineRequest:
        return EngineRequest(
            request_id=f"{self.request_prefix}-{chunk.index}", text=chunk.speak_text, voice=self.voice,
            settings=self.settings, priority=self.priority, deadline=self._deadline(now, buffered_s),
            first_in_context=self._released == 0, arrival=now, client=self.client, model=self.model,
            language=self.language)

    def _deadline(self, now: float, buffered_s: float) -> float:
        """When the listener runs dry if this chunk has no audio by then: after the audio it has and the
        estimated audio of earlier chunks not handed out yet."""
        return now + buffered_s + sum(job.estimated_unemitted_s() for job in self.pending)

    def _chunk_done(self, job: ChunkJob) -> None:
        metrics = self.services.metrics
        metrics.speech_tokens.labels(self.model).inc(job.speech_tokens)
        if job.chunk.speak_text.strip():
            metrics.chunks.labels(self.model).inc()
        synthesis_s = job.times.synthesis_s
        if synthesis_s is not None and job.emitted_s > 0:
            metrics.rtf.labels(self.model).observe(synthesis_s / job.emitted_s)
        self.pending.remove(job)
