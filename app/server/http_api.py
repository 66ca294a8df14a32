"""POST /synthesize: speak one whole text, as a finished file or as audio streamed while it is produced.

Request (JSON): `text` (required, up to `max_buffered_text` characters), `voice` (id, default "default"),
`streaming` (default false), `response_format` (wav, pcm, flac, mp3, opus; default wav), `priority`
(-1000..1000, higher first), `enable_batching` (accepted for compatibility; every request is batched
continuously with the others, so it changes nothing), and the generation settings `exaggeration`,
`cfg_weight`, `temperature`, `top_p`, `min_p`, `repetition_penalty`, `seed` (a seed makes the result
cacheable). Unknown fields are refused.

Response: the audio at 24 kHz mono. Non-streaming wav is a complete WAV (s16); `pcm` is raw s16le. With
`streaming: true`, wav (behind a header of open-ended length) and pcm leave chunk by chunk as the engine
produces them; flac, mp3 and opus are encoded when synthesis ends and sent then. Headers: `X-Cache`
(hit: served from the response cache; miss: seeded, synthesized and stored; bypass: no seed, or the cache is
off), `X-Engine`, `X-Sample-Rate`, and from a synthesis (not a cache hit) `X-TTFA-Ms` (request to the
engine's first audio; a streaming response's headers wait for it). Non-streaming responses also carry
`X-Synthesis-Ms`, `X-Audio-Seconds` and `X-RTF`. Errors: `{"error": {"code", "message"}}` with 4xx/5xx; a
failure after a streaming response has started cuts the response off (no final chunk).
"""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.audio.encode import FILE_FORMATS
from app.engine.types import EngineError, GenerationSettings
from app.server.http_common import (BadJson, BodyTooLarge, ClientDisconnected, ClosingStreamingResponse,
                                    read_json_object, unless_disconnected)
from app.server.protocol import PRIORITY_RANGE
from app.server.synthesis import OUTPUT_RATE, Speech, SpeechError, SpeechRequest, SpeechService
from app.voices.library import DEFAULT_VOICE_ID

GENERATION_FIELDS = frozenset({"exaggeration", "cfg_weight", "temperature", "top_p", "min_p",
                               "repetition_penalty", "seed"})
_FIELDS = frozenset({"text", "voice", "streaming", "priority", "enable_batching", "response_format"}
                    | GENERATION_FIELDS)
CLIENT_CLOSED_REQUEST = 499  # nobody reads it: the client is gone


def json_body_limit(max_text_chars: int) -> int:
    """Bytes a JSON body may take to carry `max_text_chars` characters: the worst escaping ("\\ud83d\\ude00"
    is 12 bytes for one character) plus room for the other fields."""
    return 12 * max_text_chars + 64 * 1024


def generation_settings(body: dict[str, Any], base: GenerationSettings) -> GenerationSettings:
    """The generation fields present in `body` over `base`; raises `SpeechError` (422) when invalid."""
    try:
        return GenerationSettings.from_mapping({k: v for k, v in body.items() if k in GENERATION_FIELDS},
                                               base=base)
    except EngineError as exc:
        raise SpeechError(exc.code, exc.message, 422) from None


async def finished_audio(request: Request, speech: Speech) -> bytes:
    """The whole body once synthesis is complete; the synthesis stops if the client goes away first."""
    async def run() -> bytes:
        await speech.open()
        return await speech.read_all()

    try:
        return await unless_disconnected(request, run())
    finally:
        speech.close()


async def opened(request: Request, speech: Speech) -> Speech:
    """`speech` with its first audio ready, so a streaming response's headers can carry its timing."""
    try:
        await unless_disconnected(request, speech.open())
    except BaseException:
        speech.close()
        raise
    return speech


async def synthesize(request: Request) -> Response:
    received = time.monotonic()
    state = request.app.state
    service = SpeechService.from_state(state)
    try:
        body = await read_json_object(request, json_body_limit(state.settings.max_buffered_text))
        speech_request, fmt, streaming = _parse(body, service.base_generation, state.settings.max_buffered_text)
        speech = await service.prepare(speech_request, service.audio_body(fmt, streaming), received)
        headers = {"X-Sample-Rate": str(OUTPUT_RATE)}
        if streaming:
            await opened(request, speech)
            return ClosingStreamingResponse(speech.body(), media_type=speech.audio.media_type,
                                            headers={**headers, **speech.headers})
        audio = await finished_audio(request, speech)
        return Response(audio, media_type=speech.audio.media_type, headers={**headers, **speech.headers})
    except SpeechError as exc:
        return error_response(request, exc.code, exc.message, exc.status)
    except BadJson as exc:
        return error_response(request, "bad_json", str(exc), 400)
    except BodyTooLarge as exc:
        return error_response(request, "body_too_large", str(exc), 413)
    except ClientDisconnected:
        return Response(status_code=CLIENT_CLOSED_REQUEST)


def _parse(body: dict[str, Any], base: GenerationSettings, max_chars: int
           ) -> tuple[SpeechRequest, str, bool]:
    def invalid(message: str) -> SpeechError:
        return SpeechError("invalid_request", message, 422)

    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise invalid(f"unknown field(s): {', '.join(unknown)}; accepted: {', '.join(sorted(_FIELDS))}")
    text = body.get("text")
    if not isinstance(text, str) or not text.strip():
        raise invalid("`text` must be a non-empty string")
    if len(text) > max_chars:
        raise SpeechError("text_too_long", f"`text` has {len(text)} characters; the limit is {max_chars}", 422)
    voice = body.get("voice", DEFAULT_VOICE_ID)
    if not isinstance(voice, str):
        raise invalid("`voice` must be a string (a voice id)")
    for flag in ("streaming", "enable_batching"):
        if not isinstance(body.get(flag, False), bool):
            raise invalid(f"`{flag}` must be true or false")
    priority = body.get("priority", 0)
    if isinstance(priority, bool) or not isinstance(priority, int) or not (
            PRIORITY_RANGE[0] <= priority <= PRIORITY_RANGE[1]):
        raise invalid(f"`priority` must be an integer in [{PRIORITY_RANGE[0]}, {PRIORITY_RANGE[1]}]")
    fmt = body.get("response_format", "wav")
    if fmt not in FILE_FORMATS:
        raise invalid(f"`response_format` must be one of {', '.join(FILE_FORMATS)}")
    settings = generation_settings(body, base)
    return SpeechRequest(text, voice, settings, priority), fmt, body.get("streaming", False)


def error_response(request: Request, code: str, message: str, status: int) -> Response:
    request.app.state.metrics.errors.labels(code).inc()
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


routes = [Route("/synthesize", synthesize, methods=["POST"])]
