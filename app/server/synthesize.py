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
from starlette.responses import Response
from starlette.routing import Route

from app.audio.encode import FILE_FORMATS
from app.engine.types import GenerationSettings
from app.errors import ClientError
from app.server.core.spec import (
    GENERATION_FIELDS,
    PRIORITY_RANGE,
    UNPROCESSABLE,
    check_name,
    generation_from_fields,
    priority_in_range,
)
from app.server.core.speech import OUTPUT_RATE, SpeechRequest, SpeechService
from app.server.http_common import (
    ClosingStreamingResponse,
    client_id,
    finished_audio,
    json_body_limit,
    opened,
    read_json_object,
)
from app.voices.library import DEFAULT_VOICE_ID

_FIELDS = frozenset({"text", "voice", "model", "language", "streaming", "priority", "enable_batching",
                     "response_format"} | GENERATION_FIELDS)


async def synthesize(request: Request) -> Response:
    """Failures are `ClientError`s, answered by the app's exception handlers."""
    received = time.monotonic()
    state = request.app.state
    service = SpeechService.from_state(state)
    body = await read_json_object(request, json_body_limit(state.settings.max_buffered_text))
    speech_request, fmt, streaming = _parse(body, service.base_generation, state.settings.max_buffered_text)
    speech = await service.prepare(speech_request, service.audio_body(fmt, streaming), received,
                                   client_id(request))
    headers = {"X-Sample-Rate": str(OUTPUT_RATE)}
    if streaming:
        await opened(request, speech)
        return ClosingStreamingResponse(speech.body(), media_type=speech.audio.media_type,
                                        headers={**headers, **speech.headers})
    audio = await finished_audio(request, speech)
    return Response(audio, media_type=speech.audio.media_type, headers={**headers, **speech.headers})


def _parse(body: dict[str, Any], base: GenerationSettings, max_chars: int
           ) -> tuple[SpeechRequest, str, bool]:
    def invalid(message: str) -> ClientError:
        return ClientError("invalid_request", message, UNPROCESSABLE)

    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise invalid(f"unknown field(s): {', '.join(unknown)}; accepted: {', '.join(sorted(_FIELDS))}")
    text = body.get("text")
    if not isinstance(text, str) or not text.strip():
        raise invalid("`text` must be a non-empty string")
    if len(text) > max_chars:
        raise ClientError("text_too_long", f"`text` has {len(text)} characters; the limit is {max_chars}",
                          UNPROCESSABLE)
    voice = body.get("voice", DEFAULT_VOICE_ID)
    if not isinstance(voice, str):
        raise invalid("`voice` must be a string (a voice id)")
    for flag in ("streaming", "enable_batching"):
        if not isinstance(body.get(flag, False), bool):
            raise invalid(f"`{flag}` must be true or false")
    priority = body.get("priority", 0)
    if not priority_in_range(priority):
        raise invalid(f"`priority` must be an integer in [{PRIORITY_RANGE[0]}, {PRIORITY_RANGE[1]}]")
    fmt = body.get("response_format", "wav")
    if fmt not in FILE_FORMATS:
        raise invalid(f"`response_format` must be one of {', '.join(FILE_FORMATS)}")
    settings = generation_from_fields(body, base)
    request = SpeechRequest(text, voice, settings, priority, model=check_name(body.get("model", ""), "model"),
                            language=check_name(body.get("language", ""), "language"))
    return request, fmt, body.get("streaming", False)


routes = [Route("/synthesize", synthesize, methods=["POST"])]
