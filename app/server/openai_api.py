"""POST /v1/audio/speech, compatible with OpenAI's speech API (point an OpenAI SDK's base_url at `/v1`).

Honoured:
- `model`: `chatterbox`, `chatterbox-turbo` and `chatterbox-multilingual` name our models (`unknown_model`, 404,
  when that model is not served here); OpenAI's own tts-1, tts-1-hd and gpt-4o-mini-tts(-2025-12-15) mean the
  server's default model.
- `input`: 1-4096 characters.
- `voice`: a voice id of this server (a string, or `{"id": ...}`). OpenAI's stock names (alloy, ash, ballad,
  coral, echo, fable, onyx, nova, sage, shimmer, verse, marin, cedar) speak with the "default" voice unless
  the library holds a voice with that id.
- `response_format`: mp3 (default), opus (Ogg), flac, wav, pcm (24 kHz s16le mono, as OpenAI defines it);
  aac is refused with 400. wav and pcm stream as the audio is produced (wav behind a header of open-ended
  length); mp3, opus and flac are encoded when synthesis ends and sent then.
- `speed` (0.25-4.0): a pitch-preserving time stretch of the finished audio (ffmpeg's `atempo`), so a speed
  other than 1.0 also makes wav and pcm wait for the end of synthesis. Needs ffmpeg on the server.
- `stream_format`: `audio` (default; raw bytes as produced) or `sse`: `speech.audio.delta` events with
  base64 audio of the chosen format, then `speech.audio.done` with `usage` (input_tokens = characters of
  `input`, output_tokens = speech tokens generated (25 per second of audio; 0 for a cached answer)).
Ignored: `instructions` (Chatterbox takes no style prompt; `exaggeration` is the closest control).
Extensions (not in OpenAI's API; e.g. the SDK's `extra_body`): exaggeration, cfg_weight, temperature, top_p,
min_p, repetition_penalty, seed. With a seed, identical requests are answered from the response cache.
Errors are OpenAI-shaped: `{"error": {"message", "type", "param", "code"}}`: every `ClientError` (ours from
the core, or this module's `OpenAIError` with its `param`) goes through one translation table, `_THEIR_PARAM`
and the status class for `type`.
"""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import numpy as np
import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.audio.encode import FfmpegError, ffmpeg_available, run_ffmpeg
from app.errors import ClientError
from app.server.core.spec import GENERATION_FIELDS, generation_from_fields
from app.server.core.speech import INTERNAL_SERVER_ERROR, AudioBody, FileBody, Speech, SpeechRequest, SpeechService
from app.server.http_common import ClosingStreamingResponse, client_id, json_body_limit, opened, read_json_object
from app.voices.library import DEFAULT_VOICE_ID, VoiceError

# Their model names and ours, as our model names ("": the server's default).
MODELS = {"tts-1": "", "tts-1-hd": "", "gpt-4o-mini-tts": "", "gpt-4o-mini-tts-2025-12-15": "",
          "chatterbox": "standard", "chatterbox-turbo": "turbo", "chatterbox-multilingual": "multilingual"}
STOCK_VOICES = frozenset("alloy ash ballad coral echo fable onyx nova sage shimmer verse marin cedar".split())
FORMATS = ("mp3", "opus", "flac", "wav", "pcm")
STREAM_FORMATS = ("audio", "sse")
MAX_INPUT_CHARS = 4096
SPEED_RANGE = (0.25, 4.0)
_FIELDS = frozenset({"model", "input", "voice", "instructions", "response_format", "speed", "stream_format", "language"}
                    | GENERATION_FIELDS)
_ATEMPO_RANGE = (0.5, 2.0)  # what every ffmpeg version's atempo accepts in one stage
_FFMPEG_TIMEOUT_S = 60.0


class OpenAIError(ClientError):
    """A refusal of this adapter's own fields: it names the `param` at fault, as OpenAI's errors do."""

    def __init__(self, message: str, param: str, code: str, status: int = 400):
        super().__init__(code, message, status)
        self.param = param


# Our codes as OpenAI's: their name for the code, the request field at fault, and their status where it
# differs from ours (a bad voice or setting is a bad value in the request: 400).
_THEIR_CODE = {"bad_json": "invalid_json", "body_too_large": "request_too_large", "unknown_model": "model_not_found"}
_THEIR_PARAM = {"unknown_voice": "voice", "invalid_voice_name": "voice", "nothing_to_speak": "input",
                "text_too_long": "input", "unknown_model": "model", "unsupported_language": "language"}
_THEIR_STATUS = {"unknown_voice": 400, "invalid_voice_name": 400, "invalid_settings": 400, "unknown_model": 404}


async def speech(request: Request) -> Response:
    received = time.monotonic()
    service = SpeechService.from_state(request.app.state)
    try:
        body = await read_json_object(request, json_body_limit(MAX_INPUT_CHARS))
        speech_request, fmt, speed, stream_format = _parse(body, service)
        audio = _audio_body(service, fmt, speed)
        prepared = await service.prepare(speech_request, audio, received, client_id(request))
        await opened(request, prepared)
    except ClientError as exc:  # OpenAI's shape, not our routes' one
        return _error_response(request, exc)
    headers = prepared.headers
    if stream_format == "sse":
        usage_chars = len(speech_request.text)
        return ClosingStreamingResponse(_sse_events(prepared, usage_chars), media_type="text/event-stream",
                                        headers={**headers, "Cache-Control": "no-cache"})
    return ClosingStreamingResponse(prepared.body(), media_type=audio.media_type, headers=headers)


def _parse(body: dict[str, Any], service: SpeechService) -> tuple[SpeechRequest, str, float, str]:
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise OpenAIError(f"Unrecognized request argument supplied: {', '.join(unknown)}", param=unknown[0],
                          code="unknown_parameter")
    model = body.get("model")
    if not isinstance(model, str) or model not in MODELS:
        raise OpenAIError(f"The model {model!r} does not exist; use one of {', '.join(MODELS)}", status=404,
                          param="model", code="model_not_found")
    text = body.get("input")
    if not isinstance(text, str) or not text.strip():
        raise OpenAIError("`input` must be a non-empty string", param="input", code="invalid_value")
    if len(text) > MAX_INPUT_CHARS:
        raise OpenAIError(f"`input` has {len(text)} characters; the maximum is {MAX_INPUT_CHARS}", param="input",
                          code="string_above_max_length")
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise OpenAIError("`instructions` must be a string", param="instructions", code="invalid_type")
    fmt = body.get("response_format", "mp3")
    if fmt not in FORMATS:
        raise OpenAIError(f"response_format {fmt!r} is not supported by this server; use one of "
                          f"{', '.join(FORMATS)}", param="response_format", code="unsupported_value")
    stream_format = body.get("stream_format", "audio")
    if stream_format not in STREAM_FORMATS:
        raise OpenAIError(f"stream_format must be one of {', '.join(STREAM_FORMATS)}", param="stream_format",
                          code="invalid_value")
    speed = _speed(body.get("speed", 1.0))
    settings = generation_from_fields(body, service.base_generation)
    language = body.get("language", "")
    if not isinstance(language, str):
        raise OpenAIError("`language` must be a language code such as \"fr\"", param="language", code="invalid_type")
    request = SpeechRequest(text, _voice_id(body.get("voice"), service), settings, model=MODELS[model],
                            language=language)
    return request, fmt, speed, stream_format


def _voice_id(voice: Any, service: SpeechService) -> str:
    if isinstance(voice, dict) and set(voice) == {"id"}:
        voice = voice["id"]
    if not isinstance(voice, str) or not voice:
        raise OpenAIError("`voice` must be a voice id (a string, or an object {\"id\": ...})", param="voice",
                          code="invalid_value")
    if voice.lower() in STOCK_VOICES:
        try:
            return service.services.voices.get(voice.lower()).id
        except VoiceError:
            return DEFAULT_VOICE_ID
    return voice


def _speed(value: Any) -> float:
    low, high = SPEED_RANGE
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise OpenAIError(f"`speed` must be a number from {low} to {high}", param="speed", code="invalid_value")
    if value != 1.0 and not ffmpeg_available():
        raise OpenAIError("this server cannot change the speed (ffmpeg is not installed); use speed 1.0",
                          param="speed", code="unsupported_value")
    return float(value)


def _audio_body(service: SpeechService, fmt: str, speed: float) -> AudioBody:
    if speed == 1.0:
        return service.audio_body(fmt, progressive=True)
    return FileBody(fmt, source_rate=service.services.sample_rate, transform=partial(change_tempo, speed=speed),
                    transform_key=f"speed={speed!r}")


def change_tempo(pcm: np.ndarray, sample_rate: int, speed: float) -> np.ndarray:
    """`pcm` played `speed` times faster at the same pitch, through ffmpeg's atempo (WSOLA) filter, chained
    for factors outside the range one stage accepts."""
    stages, rest = [], speed
    while not _ATEMPO_RANGE[0] <= rest <= _ATEMPO_RANGE[1]:
        step = _ATEMPO_RANGE[1] if rest > 1 else _ATEMPO_RANGE[0]
        stages.append(step)
        rest /= step
    stages.append(rest)
    args = ["-f", "f32le", "-ar", str(sample_rate), "-ac", "1", "-i", "pipe:0",
            "-filter:a", ",".join(f"atempo={stage:.6f}" for stage in stages)]
    try:
        stretched = run_ffmpeg(args, pcm.astype("<f4").tobytes(), _FFMPEG_TIMEOUT_S)
    except FfmpegError as exc:
        raise ClientError("engine_error", f"changing the speed failed: {exc}", INTERNAL_SERVER_ERROR) from None
    return stretched.astype(np.float32)


async def _sse_events(speech: Speech, input_chars: int) -> AsyncIterator[bytes]:
    try:
        async for data in speech.body():
            yield _sse({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode("ascii")})
    except ClientError as exc:  # headers are gone: the failure travels in the stream
        yield _sse({"type": "error", "error": _error_object(exc)})
        return
    output_tokens = speech.timings.speech_tokens
    yield _sse({"type": "speech.audio.done", "usage": {"input_tokens": input_chars, "output_tokens": output_tokens,
                                                       "total_tokens": input_chars + output_tokens}})


def _sse(event: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(event) + b"\n\n"


def _error_object(error: ClientError) -> dict[str, Any]:
    kind = "server_error" if error.status >= 500 else "invalid_request_error"
    param = error.param if isinstance(error, OpenAIError) else _THEIR_PARAM.get(error.code)
    return {"message": error.message, "type": kind, "param": param,
            "code": _THEIR_CODE.get(error.code, error.code)}


def _error_response(request: Request, error: ClientError) -> Response:
    code = _THEIR_CODE.get(error.code, error.code)
    request.app.state.metrics.errors.labels(code).inc()
    return JSONResponse({"error": _error_object(error)}, status_code=_THEIR_STATUS.get(error.code, error.status))


routes = [Route("/v1/audio/speech", speech, methods=["POST"])]
