"""Speaking one whole text: the service behind POST /synthesize, POST /v1/audio/speech and the ElevenLabs HTTP
routes (POST /v1/text-to-speech/{voice_id}...).

The text goes through the same `AdaptiveChunker` as /v1/stream: a small first chunk (time to first audio),
then whole sentences packed up to the chunk budget (the whole text is known, so nothing waits for a
deadline). Every chunk is submitted to the engine worker at once, so a reply's chunks synthesize
concurrently, batched with everything else the engine runs (the `ChunkPipeline` of pipeline.py, which
WebSocket contexts use too); their audio comes back strictly in chunk order as it is produced, and an
`AudioBody` turns it into the response's bytes.

Seeded requests go through the response cache, keyed by the texts the engine speaks, the voice and its
content hash, the settings, the body's format and any caller extras: a hit is served without touching the
engine; a miss is stored once its synthesis completed. Unseeded requests never touch the cache.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app.audio.encode import AudioEncoder, StreamEncoder, content_type, encode_file, streaming_wav_header
from app.audio.resample import resample
from app.cache import ResponseCache, cache_key, is_cacheable
from app.engine.types import SAMPLE_RATE, EngineError, GenerationSettings
from app.errors import ClientError
from app.server.core.pipeline import AudioPiece, ChunkJob, ChunkPipeline, Marker
from app.server.core.runtime import SERVICE_UNAVAILABLE, ActiveStream
from app.server.core.services import Services
from app.server.core.spec import UNPROCESSABLE
from app.text.chunker import AdaptiveChunker, TextChunk
from app.voices.library import DEFAULT_VOICE_ID

# The whole text is known up front: tell the chunker the listener is well supplied, so after the first chunk
# it packs whole sentences up to the budget instead of cutting at clauses.
WHOLE_TEXT_BUFFER_S = math.inf
OUTPUT_RATE = SAMPLE_RATE  # every HTTP response is 24 kHz (OpenAI's `pcm` is defined as 24 kHz s16le)
INTERNAL_SERVER_ERROR = 500


@dataclass(frozen=True)
class SpeechRequest:
    text: str
    voice: str = DEFAULT_VOICE_ID
    settings: GenerationSettings = GenerationSettings()
    priority: int = 0
    model: str = ""  # "" for the server's default
    language: str = ""  # "" for English


# ---- response bodies ----------------------------------------------------------------------------------------

class AudioBody(ABC):
    """Turns the engine's PCM (float32 at `source_rate`) into one response body, piece by piece."""

    media_type: str
    progressive: bool  # bytes leave while audio is still being produced

    @property
    @abstractmethod
    def cache_name(self) -> str:
        """Everything about the encoding that changes the bytes (the cache key's format)."""

    def start(self) -> bytes:
        return b""

    @abstractmethod
    def encode(self, pcm: np.ndarray) -> bytes: ...

    def piece(self, piece: AudioPiece) -> bytes:
        """One piece of a chunk's audio; bodies that follow the text as well as the audio override it."""
        return self.encode(piece.pcm)

    def chunk_done(self, job: ChunkJob) -> bytes:
        """All of a chunk's audio has been given to `piece`."""
        return b""

    @abstractmethod
    def finish(self) -> bytes: ...


class StreamBody(AudioBody):
    """An `AudioEncoder`'s bytes as they are produced (raw PCM, G.711, MP3), behind an optional `header` (an
    open-ended WAV header: the length is not known when it is sent)."""

    progressive = True

    def __init__(self, encoder: AudioEncoder, media_type: str, cache_name: str, header: bytes = b""):
        self.media_type = media_type
        self._encoder = encoder
        self._cache_name = cache_name
        self._header = header

    @property
    def cache_name(self) -> str:
        return self._cache_name

    def start(self) -> bytes:
        return self._header

    def encode(self, pcm: np.ndarray) -> bytes:
        return self._encoder.encode(pcm)

    def finish(self) -> bytes:
        return self._encoder.flush()


def pcm_body(wav_header: bool, source_rate: int = SAMPLE_RATE, rate: int = OUTPUT_RATE) -> StreamBody:
    """16-bit PCM at `rate` as it is produced: raw s16le, or WAV behind a header of open-ended length."""
    encoder = StreamEncoder("pcm_s16le", rate, source_rate=source_rate)
    fmt = "wav" if wav_header else "pcm"
    name = ("wav-stream" if wav_header else "pcm") + ("" if rate == OUTPUT_RATE else f"@{rate}")
    return StreamBody(encoder, content_type(fmt), name, streaming_wav_header(rate) if wav_header else b"")


class FileBody(AudioBody):
    """A complete file (`encode_file` formats), written once all audio exists, so a WAV's header carries its
    real length. `output_rate` resamples first (None: the engine's rate); `transform` changes the whole PCM
    first (e.g. a tempo change); `transform_key` names it in the cache key."""

    progressive = False

    def __init__(self, fmt: str, source_rate: int = SAMPLE_RATE,
                 transform: Callable[[np.ndarray, int], np.ndarray] | None = None, transform_key: str = "",
                 output_rate: int | None = None):
        self.fmt = fmt
        self.media_type = content_type(fmt)
        self._source_rate = source_rate
        self._output_rate = output_rate
        self._transform = transform
        self._transform_key = transform_key
        self._pieces: list[np.ndarray] = []

    @property
    def cache_name(self) -> str:
        name = self.fmt if self._output_rate is None else f"{self.fmt}@{self._output_rate}"
        return f"{name}+{self._transform_key}" if self._transform_key else name

    def encode(self, pcm: np.ndarray) -> bytes:
        self._pieces.append(pcm)
        return b""

    def finish(self) -> bytes:
        pcm = np.concatenate(self._pieces) if self._pieces else np.zeros(0, np.float32)
        if self._transform is not None:
            pcm = self._transform(pcm, self._source_rate)
        rate = self._output_rate or self._source_rate
        return encode_file(resample(pcm, self._source_rate, rate), rate, self.fmt)


# ---- timings ------------------------------------------------------------------------------------------------

@dataclass
class SpeechTimings:
    """Monotonic times of one synthesis; `received` is when the HTTP request arrived."""

    received: float
    sample_rate: int = SAMPLE_RATE
    first_audio: float | None = None  # the engine delivered the first audio of chunk 0
    finished: float | None = None  # the last chunk's audio arrived
    audio_samples: int = 0
    speech_tokens: int = 0

    @property
    def audio_s(self) -> float:
        return self.audio_samples / self.sample_rate

    @property
    def synthesis_s(self) -> float | None:
        return None if self.finished is None else self.finished - self.received

    @property
    def rtf(self) -> float | None:
        synthesis_s = self.synthesis_s
        return None if synthesis_s is None or self.audio_s <= 0 else synthesis_s / self.audio_s

    def headers(self) -> dict[str, str]:
        """What is known so far, as response headers."""
        headers = {}
        if self.first_audio is not None:
            headers["X-TTFA-Ms"] = f"{(self.first_audio - self.received) * 1000:.1f}"
        if self.synthesis_s is not None:
            headers["X-Synthesis-Ms"] = f"{self.synthesis_s * 1000:.1f}"
            headers["X-Audio-Seconds"] = f"{self.audio_s:.3f}"
            if self.rtf is not None:
                headers["X-RTF"] = f"{self.rtf:.4f}"
        return headers


# ---- one synthesis ------------------------------------------------------------------------------------------

@dataclass
class Speech:
    """One prepared synthesis. `await open()` starts it (or finds it in the cache) and returns once the
    first audio bytes exist, so headers can carry the time to first audio; then iterate `body()` once.
    `close()` (also run when `body()` ends early) aborts whatever is still running."""

    services: Services
    cache: ResponseCache
    request: SpeechRequest
    audio: AudioBody
    chunks: list[TextChunk]
    conditionals: Any
    key: tuple | None  # None: not cacheable
    timings: SpeechTimings
    client: str = ""  # who asks: the engine shares its rows fairly across clients
    cache_status: str = "bypass"  # "hit" | "miss" | "bypass" (no seed, or the cache is off)
    _pipeline: ChunkPipeline | None = None
    _pending: list[bytes] = field(default_factory=list)
    _source: AsyncIterator[bytes] | None = None
    _stream: ActiveStream | None = None  # registered with the runtime while synthesizing
    _closed: bool = False

    @property
    def headers(self) -> dict[str, str]:
        return {"X-Cache": self.cache_status, "X-Engine": self.services.engine_info["engine"],
                **self.timings.headers()}

    async def open(self) -> None:
        if self.key is not None:
            cached = self.cache.get(self.key)
            self.cache_status = "miss" if cached is None else "hit"
            metrics = self.services.metrics
            (metrics.cache_misses if cached is None else metrics.cache_hits).inc()
            if cached is not None:
                self._pending.append(cached)
                self._close()
                return
        self._start()
        self._source = self._produce()
        async for data in self._source:  # up to the first audio, so the headers can tell its time
            self._pending.append(data)
            if self.timings.first_audio is not None and (data or not self.audio.progressive):
                break

    async def body(self) -> AsyncIterator[bytes]:
        try:
            pending, self._pending = self._pending, []
            for data in pending:
                if data:
                    yield data
            if self._source is not None:
                async for data in self._source:
                    if data:
                        yield data
        finally:
            self._close()

    async def read_all(self) -> bytes:
        return b"".join([data async for data in self.body()])

    def close(self) -> None:
        self._close()

    # ---- internals ------------------------------------------------------------------------------------------

    def _start(self) -> None:
        services = self.services
        self._pipeline = ChunkPipeline(services, f"http-{uuid.uuid4().hex[:12]}", self.conditionals,
                                       self.request.settings, self.request.priority, client=self.client,
                                       model=self.request.model, language=self.request.language)
        now = time.monotonic()
        for chunk in self.chunks:
            self._pipeline.release(chunk, now)
        self._pipeline.mark(Marker.END)
        self._stream = services.runtime.open_stream(stop=self._close)

    async def _produce(self) -> AsyncIterator[bytes]:
        """The body's bytes, chunk by chunk in order; stores the complete body when it is cacheable."""
        stored: list[bytes] | None = [] if self.key is not None else None

        def emit(data: bytes) -> bytes:
            if stored is not None:
                stored.append(data)
            return data

        yield emit(self.audio.start())
        assert self._pipeline is not None  # made by _start, which body() runs first
        try:
            async for data in self._pipeline.deliver(self):
                yield emit(data)
        except EngineError as exc:
            raise ClientError(exc.code, exc.message, INTERNAL_SERVER_ERROR) from None
        if self._closed:  # stopped by a drain: the audio is incomplete and must not look complete
            raise ClientError("shutting_down", "the server stopped this synthesis while shutting down",
                              SERVICE_UNAVAILABLE)
        self.timings.finished = time.monotonic()
        # A whole file is encoded (and maybe stretched) here: off the event loop, which serves every stream.
        yield emit(self.audio.finish() if self.audio.progressive else await asyncio.to_thread(self.audio.finish))
        if stored is not None and self.key is not None:
            self.cache.put(self.key, b"".join(stored))
        self._close()

    # ---- the pipeline's sink (ChunkPipeline.deliver) -----------------------------------------------------------

    def on_audio(self, piece: AudioPiece) -> bytes:
        timings = self.timings
        if timings.first_audio is None:
            timings.first_audio = time.monotonic()
            if self.audio.progressive:  # the client hears it now; a whole-file body's client hears nothing yet
                self.services.metrics.ttfa.labels(self.request.model).observe(timings.first_audio - timings.received)
        timings.audio_samples += piece.pcm.size
        return self.audio.piece(piece)

    def on_chunk_done(self, job: ChunkJob) -> bytes:
        self.timings.speech_tokens += job.speech_tokens
        return self.audio.chunk_done(job)

    def on_marker(self, marker: Marker) -> None:
        """Only Marker.END, after the last chunk: the body's end is written by `_produce`."""

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._pipeline is not None:
            self._pipeline.cancel()
        if self._stream is not None:
            self._stream.close()


class SpeechService:
    """Prepares `Speech`es from what lives on `app.state`."""

    def __init__(self, services: Services, cache: ResponseCache):
        self.services = services
        self.cache = cache

    @classmethod
    def from_state(cls, state: Any) -> SpeechService:
        return cls(Services.from_state(state), state.response_cache)

    @property
    def base_generation(self) -> GenerationSettings:
        """Defaults and caps (max_new_tokens) for the settings of a request."""
        return self.services.base_generation

    def audio_body(self, fmt: str, progressive: bool) -> AudioBody:
        """`fmt` (an `encode_file` format) sent as produced where it can be (raw PCM, WAV with an open-ended
        header) and `progressive` is asked for; otherwise a complete file, written at the end."""
        if fmt == "pcm" or (fmt == "wav" and progressive):
            return pcm_body(wav_header=fmt == "wav", source_rate=self.services.sample_rate)
        return FileBody(fmt, source_rate=self.services.sample_rate)

    async def prepare(self, request: SpeechRequest, audio: AudioBody, received: float, client: str = "") -> Speech:
        """Raises `ClientError` (a `VoiceError` among them) when it cannot be spoken. `client` names who asks
        (the engine shares its rows fairly across clients)."""
        refusal = self.services.runtime.refusal()
        if refusal is not None:
            raise refusal
        model = self.services.resolve_model(request.model)
        request = dataclasses.replace(request, model=model,
                                      language=self.services.resolve_language(model, request.language))
        record = self.services.voices.get(request.voice)
        conditionals = await self.services.conditionals(request.voice, request.model)
        # A chunk with nothing to speak (bare punctuation) stays: no engine request, but its characters are
        # the caller's and belong in a transcript.
        chunks = self._chunks(request.text, self.services.tags(model), request.language)
        if not any(chunk.speak_text for chunk in chunks):
            raise ClientError("nothing_to_speak", "the text has nothing to speak (no letters or digits)",
                              UNPROCESSABLE)
        key = None
        if is_cacheable(request.settings) and self.cache.enabled:
            spoken = "\n".join(chunk.speak_text for chunk in chunks)  # exactly what the engine is given
            key = cache_key(spoken, record.id, record.hash, request.settings, audio.cache_name, OUTPUT_RATE,
                            extra=(request.model, request.language))
        timings = SpeechTimings(received=received, sample_rate=self.services.sample_rate)
        return Speech(self.services, self.cache, request, audio, chunks, conditionals, key, timings, client)

    def _chunks(self, text: str, tags: frozenset[str], language: str) -> list[TextChunk]:
        chunker = AdaptiveChunker(self.services.runtime.chunker_config(tags=tags, language=language))
        now = time.monotonic()
        return chunker.push(text, now, WHOLE_TEXT_BUFFER_S) + chunker.end()

