"""ElevenLabs-compatible HTTP text-to-speech (docs/elevenlabs.md), as their SDK (`text_to_speech.convert`,
`stream`, `convert_with_timestamps`, `stream_with_timestamps`), Pipecat's `ElevenLabsHttpTTSService` and
LiveKit's `elevenlabs.TTS.synthesize()` call it:

    POST /v1/text-to-speech/{voice_id}                         the whole audio
    POST /v1/text-to-speech/{voice_id}/stream                  the audio as it is produced
    POST /v1/text-to-speech/{voice_id}/with-timestamps         {audio_base64, alignment, normalized_alignment}
    POST /v1/text-to-speech/{voice_id}/stream/with-timestamps  the same, one JSON object per line, as produced

A thin adapter over the core's whole-text speech (app/server/core/speech.py): their body and query become a
`SpeechRequest` and an `AudioBody`; failures answer their way, `{"detail": {"status", "message"}}`, through
the translation table the WebSocket adapter shares (elevenlabs_common.py).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.audio.encode import streaming_wav_header
from app.errors import ClientError
from app.server.auth import key_accepted, presented_keys
from app.server.core.pipeline import AudioPiece, ChunkJob
from app.server.core.speech import AudioBody, FileBody, SpeechRequest, SpeechService, StreamBody
from app.server.elevenlabs_common import (
    DEFAULT_OUTPUT_FORMAT,
    MAX_SEED,
    Alignment,
    Alignments,
    ElevenLabsError,
    OutputFormat,
    TranscriptAligner,
    generation_settings,
    model_for,
)
from app.server.http_common import (
    ClosingStreamingResponse,
    finished_audio,
    json_body_limit,
    opened,
    read_json_object,
    routing_error,
)

UNAUTHORIZED = 401
NOT_FOUND = 404
_TEXT_NORMALIZATION = ("auto", "on", "off")
# Their HTTP statuses for our codes where a 400 would mislead.
_THEIR_STATUS = {"unknown_voice": NOT_FOUND, "invalid_voice_name": NOT_FOUND, "unknown_model": NOT_FOUND}
# Body fields accepted and ignored (docs/elevenlabs.md): other models' features, or continuity hints the
# chunker has no use for. Unknown fields are ignored too, as their API does.
_STRING_FIELDS = ("model_id", "language_code", "previous_text", "next_text")
_LATENCY_RANGE = range(0, 5)


async def convert(request: Request) -> Response:
    return await _respond(request, streamed=False, timestamps=False)


async def stream(request: Request) -> Response:
    return await _respond(request, streamed=True, timestamps=False)


async def convert_with_timestamps(request: Request) -> Response:
    return await _respond(request, streamed=False, timestamps=True)


async def stream_with_timestamps(request: Request) -> Response:
    return await _respond(request, streamed=True, timestamps=True)


async def _respond(request: Request, streamed: bool, timestamps: bool) -> Response:
    """Every failure before the first byte answers their way; after it, the stream is cut off."""
    received = time.monotonic()
    state = request.app.state
    service = SpeechService.from_state(state)
    try:
        _authorize(request)
        output = _output_format(request)
        body = await read_json_object(request, json_body_limit(state.settings.max_buffered_text))
        speech_request = _parse(body, request, service, state.settings.max_buffered_text)
        audio = _audio_body(output, service.services.sample_rate, streamed)
        if timestamps:
            audio = TimestampedBody(audio, service.services.sample_rate, lines=streamed)
        speech = await service.prepare(speech_request, audio, received)
        if not streamed:
            data = await finished_audio(request, speech)
            return Response(data, media_type=audio.media_type, headers=speech.headers)
        await opened(request, speech)
    except ElevenLabsError as exc:
        return _error_response(request, exc)
    except ClientError as exc:
        return _error_response(request, ElevenLabsError.from_ours(
            exc.code, exc.message, status=_THEIR_STATUS.get(exc.code, exc.status)))
    return ClosingStreamingResponse(speech.body(), media_type=audio.media_type, headers=speech.headers)


def _authorize(request: Request) -> None:
    api_key = request.app.state.settings.api_key
    keys = [*presented_keys(request.scope), *request.headers.getlist("xi-api-key")]
    if api_key and not key_accepted(api_key, keys):
        raise ElevenLabsError("invalid_api_key", "Invalid API key: send it in the xi-api-key header",
                              status=UNAUTHORIZED)


def _output_format(request: Request) -> OutputFormat:
    query = request.query_params
    latency = query.get("optimize_streaming_latency")
    if latency is not None and not (latency.isdigit() and int(latency) in _LATENCY_RANGE):
        raise ElevenLabsError("invalid_parameters", "optimize_streaming_latency must be an integer from 0 to 4")
    return OutputFormat.parse(query.get("output_format", DEFAULT_OUTPUT_FORMAT), streamed=False)


def _parse(body: dict[str, Any], request: Request, service: SpeechService, max_chars: int) -> SpeechRequest:
    text = body.get("text")
    if not isinstance(text, str) or not text.strip():
        raise ElevenLabsError("invalid_text", "text must be a non-empty string")
    if len(text) > max_chars:
        raise ElevenLabsError("text_too_long", f"text has {len(text)} characters; the limit is {max_chars}")
    for name in _STRING_FIELDS:
        if body.get(name) is not None and not isinstance(body[name], str):
            raise ElevenLabsError("invalid_input", f"{name} must be a string")
    if body.get("apply_text_normalization", "auto") not in (*_TEXT_NORMALIZATION, None):
        raise ElevenLabsError("invalid_input", "apply_text_normalization must be one of "
                                               f"{', '.join(_TEXT_NORMALIZATION)}")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED):
        raise ElevenLabsError("invalid_input", f"seed must be an integer between 0 and {MAX_SEED}")
    settings = generation_settings(body.get("voice_settings"), seed, service.base_generation)
    voice = request.path_params["voice_id"].lower()  # our ids are lower case
    return SpeechRequest(text, voice, settings, model=model_for(body.get("model_id"), service.services.models),
                         language=body.get("language_code") or "")


def _audio_body(output: OutputFormat, source_rate: int, streamed: bool) -> AudioBody:
    """Raw PCM, G.711 and MP3 leave as they are produced; WAV too when streamed (behind an open-ended
    header), and as a complete file, sizes included, otherwise; Ogg Opus is written once all audio exists."""
    cache_name = f"elevenlabs:{output.name}"
    if output.codec == "opus":
        return FileBody("opus", source_rate, output_rate=output.sample_rate)
    if output.codec == "wav" and not streamed:
        return FileBody("wav", source_rate, output_rate=output.sample_rate)
    header = streaming_wav_header(output.sample_rate) if output.codec == "wav" else b""
    return StreamBody(output.encoder(source_rate), output.media_type, cache_name, header)


class TimestampedBody(AudioBody):
    """Their `with-timestamps` bodies around an audio body: `{audio_base64, alignment, normalized_alignment}`,
    as one JSON object once everything is spoken, or (`lines`) one object per line as audio is produced,
    each with the characters whose speech starts in its audio. Character times are estimated as on the
    WebSockets (elevenlabs_common.Aligner), in seconds from the start of the response's audio."""

    def __init__(self, audio: AudioBody, source_rate: int, lines: bool):
        self.media_type = "application/x-ndjson" if lines else "application/json"
        self.progressive = lines and audio.progressive
        self._audio = audio
        self._source_rate = source_rate
        self._lines = lines
        self._aligner = TranscriptAligner()
        self._offset_s = 0.0  # audio before the current piece
        self._pending = b""  # audio not yet in a line (the body's start, or a whole body's audio)
        self._alignments: list[tuple[Alignments, float]] = []  # (alignments, offset) not yet in a line

    @property
    def cache_name(self) -> str:
        return f"{self._audio.cache_name}+timestamps" + ("-lines" if self._lines else "")

    def start(self) -> bytes:
        self._pending = self._audio.start()
        return b""

    def encode(self, pcm: np.ndarray) -> bytes:
        """Audio no text goes with."""
        seconds = pcm.size / self._source_rate
        self._offset_s += seconds
        return self._emit(self._audio.encode(pcm))

    def piece(self, piece: AudioPiece) -> bytes:
        seconds = piece.pcm.size / self._source_rate
        data = self._audio.piece(piece)
        if piece.job.word_starts is not None:
            self._aligner.measure(piece.job.chunk, piece.job.word_starts)
        self._aligned(self._aligner.align(seconds, piece.job.chunk, piece.ends_chunk), seconds)
        return self._emit(data)

    def chunk_done(self, job: ChunkJob) -> bytes:
        """Characters no audio took: all of a chunk with nothing to speak, the rest of one whose end was not
        marked."""
        self._aligned(self._aligner.finish_chunk(job.chunk), 0.0)
        return self._emit(self._audio.chunk_done(job))

    def finish(self) -> bytes:
        data = self._audio.finish()
        if self._lines:
            return self._emit(data)
        self._pending += data
        return orjson.dumps(self._message())

    def _aligned(self, alignments: Alignments, seconds: float) -> None:
        if alignments:
            self._alignments.append((alignments, self._offset_s))
        self._offset_s += seconds

    def _emit(self, data: bytes) -> bytes:
        self._pending += data
        if not self._lines or not (self._pending or self._alignments):
            return b""
        return orjson.dumps(self._message()) + b"\n"

    def _message(self) -> dict[str, Any]:
        """The audio and alignments gathered so far, which are then gone."""
        message = {"audio_base64": base64.b64encode(self._pending).decode("ascii"),
                   "alignment": _merged([(a.caller, offset) for a, offset in self._alignments]),
                   "normalized_alignment": _merged([(a.normalized, offset) for a, offset in self._alignments])}
        self._pending, self._alignments = b"", []
        return message


def _merged(alignments: list[tuple[Alignment | None, float]]) -> dict[str, list] | None:
    """Their alignment object over several (alignment, offset) pieces; None when no piece has characters."""
    fields = [alignment.http_json(offset) for alignment, offset in alignments if alignment is not None]
    if not fields:
        return None
    return {key: [value for field in fields for value in field[key]] for key in fields[0]}


async def routing_error_response(request: Request, exc: Exception) -> Response:
    """No such route under their prefix, or a method their route does not take: their shape."""
    assert isinstance(exc, HTTPException)
    error = routing_error(request, exc)
    return _error_response(request, ElevenLabsError.from_ours(error.code, error.message, status=error.status),
                           exc.headers)


def _error_response(request: Request, error: ElevenLabsError, headers: Mapping[str, str] | None = None
                    ) -> Response:
    request.app.state.metrics.errors.labels(error.error).inc()
    return JSONResponse({"detail": {"status": error.error, "message": error.message}}, status_code=error.status,
                        headers=headers)


routes = [Route("/v1/text-to-speech/{voice_id}", convert, methods=["POST"]),
          Route("/v1/text-to-speech/{voice_id}/stream", stream, methods=["POST"]),
          Route("/v1/text-to-speech/{voice_id}/with-timestamps", convert_with_timestamps, methods=["POST"]),
          Route("/v1/text-to-speech/{voice_id}/stream/with-timestamps", stream_with_timestamps,
                methods=["POST"])]
