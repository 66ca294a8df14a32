"""ElevenLabs-compatible text-to-speech WebSockets (docs/elevenlabs.md): `stream-input` (one reply per socket)
and `multi-stream-input` (contexts), as their SDK's `convert_realtime` and the Pipecat and LiveKit plugins use
them, so an agent built for ElevenLabs works against this server by changing only its base URL.

A thin adapter over the speech core (app/server/core): `ElevenLabsConnection` translates their messages into
the core's `ContextSpec` and context calls (text, flush, end, close), `ElevenLabsFraming` turns a context's
audio into their base64 JSON messages with approximate character alignment, and every other part (chunker,
ordered engine submission, stats, limits, slow readers, drain) is the core's. The core's `ClientError`s become
their error messages and close codes through one translation table (elevenlabs_common.py, which the HTTP
routes of elevenlabs_http.py share).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from app.errors import ClientError
from app.server.auth import presented_keys
from app.server.core.close_codes import NORMAL_CLOSURE, POLICY_VIOLATION
from app.server.core.connection import Connection
from app.server.core.context import Framing, StatsSource, StreamContext
from app.server.core.outbox import Payload
from app.server.core.services import Services
from app.server.core.spec import MAX_ID_CHARS, ContextSpec
from app.server.elevenlabs_common import (
    CLOSE_CODES,
    DEFAULT_OUTPUT,
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
from app.text.chunker import TextChunk

SINGLE_PATH = "/v1/text-to-speech/{voice_id}/stream-input"
MULTI_PATH = "/v1/text-to-speech/{voice_id}/multi-stream-input"
DEFAULT_INACTIVITY_S = 20.0
MAX_INACTIVITY_S = 180.0
DEFAULT_CONTEXT = "default"  # the context of messages without a context_id
MESSAGE_SECONDS = 1.0  # longest audio message: long enough that most carry whole words for their alignment
_CLOSE_REASON_BYTES = 123  # the most a WebSocket close reason may hold

_IGNORED_BOOLEANS = ("sync_alignment", "enable_ssml_parsing", "enable_logging")
_TEXT_NORMALIZATION = ("auto", "on", "off")


# ---- query parameters ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Options:
    """What the handshake's query says; apply_text_normalization, optimize_streaming_latency and
    the checked booleans are accepted and have no effect (docs/elevenlabs.md)."""

    output: OutputFormat = DEFAULT_OUTPUT
    inactivity_timeout_s: float = DEFAULT_INACTIVITY_S
    auto_mode: bool = False
    seed: int | None = None
    model_id: str = ""  # theirs or ours, mapped by `model_for` once the served models are known
    language_code: str = ""

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> Options:
        for name in _IGNORED_BOOLEANS:
            if name in query:
                _boolean(query, name)
        normalization = query.get("apply_text_normalization", "auto")
        if normalization not in _TEXT_NORMALIZATION:
            raise _bad_parameter("apply_text_normalization", f"one of {', '.join(_TEXT_NORMALIZATION)}")
        return cls(output=OutputFormat.parse(query.get("output_format", DEFAULT_OUTPUT_FORMAT), streamed=True),
                   inactivity_timeout_s=_inactivity_timeout(query), auto_mode=_boolean(query, "auto_mode"),
                   seed=_seed(query), model_id=query.get("model_id", ""),
                   language_code=query.get("language_code", ""))


def _bad_parameter(name: str, expected: str) -> ElevenLabsError:
    return ElevenLabsError("invalid_parameters", f"query parameter {name} must be {expected}")


def _boolean(query: Mapping[str, str], name: str) -> bool:
    value = query.get(name, "false").lower()
    if value not in ("true", "false"):
        raise _bad_parameter(name, "true or false")
    return value == "true"


def _inactivity_timeout(query: Mapping[str, str]) -> float:
    raw = query.get("inactivity_timeout")
    if raw is None:
        return DEFAULT_INACTIVITY_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value <= MAX_INACTIVITY_S:
        raise _bad_parameter("inactivity_timeout", f"a number of seconds in (0, {MAX_INACTIVITY_S:g}]")
    return value


def _seed(query: Mapping[str, str]) -> int | None:
    raw = query.get("seed")
    if raw is None:
        return None
    if not raw.isdigit() or int(raw) > MAX_SEED:
        raise _bad_parameter("seed", f"an integer between 0 and {MAX_SEED}")
    return int(raw)


def handshake_keys(websocket: WebSocket) -> list[str]:
    """API keys in their places (header or query `xi-api-key`, query `authorization`), besides ours."""
    keys = list(presented_keys(websocket.scope))
    keys += [value for value in (websocket.headers.get("xi-api-key"),) if value]
    for name in ("xi-api-key", "xi_api_key", "authorization"):
        keys += [_bearer(value) for value in websocket.query_params.getlist(name)]
    return keys


def _bearer(value: str) -> str:
    return value[7:].strip() if value[:7].lower() == "bearer " else value.strip()


# ---- client messages ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Message:
    text: str | None = None  # None: absent; "": end of input (single) or keep-alive (multi)
    flush: bool = False
    context_id: str | None = None
    close_context: bool = False
    close_socket: bool = False
    voice_settings: Any = None
    keys: tuple[str, ...] = ()  # API keys it carries

    @classmethod
    def parse(cls, raw: str) -> Message:
        """Their message schemas allow unknown fields; only the ones used here are checked."""
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            data = None
        if not isinstance(data, dict):
            raise ElevenLabsError("invalid_input_message", "Could not parse input message, make sure it is a json "
                                                           "object and follows the schema outlined in protocol.")
        context_id = data.get("context_id", data.get("contextId"))
        if context_id is not None and (not isinstance(context_id, str) or not 1 <= len(context_id)
                                       <= MAX_ID_CHARS):
            raise _bad_field("context_id", f"a string of 1-{MAX_ID_CHARS} characters")
        text = data.get("text")
        if text is not None and not isinstance(text, str):
            raise _bad_field("text", "a string")
        keys = tuple(_bearer(data[name]) for name in ("xi_api_key", "xi-api-key", "authorization")
                     if isinstance(data.get(name), str))
        return cls(text=text, flush=_flag(data, "flush"), context_id=context_id,
                   close_context=_flag(data, "close_context"), close_socket=_flag(data, "close_socket"),
                   voice_settings=data.get("voice_settings"), keys=keys)


def _flag(data: dict[str, Any], name: str) -> bool:
    value = data.get(name)
    if value is not None and not isinstance(value, bool):
        raise _bad_field(name, "a boolean")
    return bool(value)


def _bad_field(name: str, expected: str) -> ElevenLabsError:
    return ElevenLabsError("invalid_input_message", f"field {name} must be {expected}")


# ---- audio messages -----------------------------------------------------------------------------------------

def _websocket_json(alignment: Alignment | None) -> dict[str, Any] | None:
    return None if alignment is None else alignment.websocket_json()


def _dumps(message: dict[str, Any]) -> str:
    return orjson.dumps(message).decode()


def error_message(error: ElevenLabsError) -> str:
    message: dict[str, Any] = {"message": error.message, "error": error.error, "code": error.code}
    if error.context_id is not None:
        message["contextId"] = error.context_id
    return _dumps(message)


class ElevenLabsFraming(Framing):
    """Their server messages: audio as base64 JSON with alignment, `isFinal` when a context is done;
    `contextId` on every message of a multi-context socket."""

    frame_seconds = MESSAGE_SECONDS

    def __init__(self, context_id: str | None):
        self.context_id = context_id  # None on a single-stream socket
        self._aligner = TranscriptAligner()

    def measure(self, chunk: TextChunk, word_starts: list[float]) -> None:
        self._aligner.measure(chunk, word_starts)

    def audio(self, data: bytes, seconds: float, chunk: TextChunk | None, chunk_ends: bool) -> Payload:
        return self._audio_message(base64.b64encode(data).decode("ascii"),
                                   self._aligner.align(seconds, chunk, chunk_ends))

    def chunk_done(self, chunk: TextChunk, stats: StatsSource) -> Payload:
        """Characters of the chunk no audio message took (a chunk with nothing to speak has no audio): an
        alignment-only message, so the transcript has every character the caller sent."""
        aligned = self._aligner.finish_chunk(chunk)
        return self._audio_message("", aligned) if aligned else None

    def done(self, stats: StatsSource) -> Payload:
        if self.context_id is None:
            return self._message(audio=None, isFinal=True, normalizedAlignment=None, alignment=None)
        return self._message(isFinal=True)

    def error(self, code: str, message: str) -> Payload:
        return error_message(ElevenLabsError.from_ours(code, message, self.context_id))

    def _audio_message(self, audio: str, aligned: Alignments) -> Payload:
        return self._message(audio=audio, isFinal=False, normalizedAlignment=_websocket_json(aligned.normalized),
                             alignment=_websocket_json(aligned.caller))

    def _message(self, **fields: Any) -> str:
        if self.context_id is not None:
            fields["contextId"] = self.context_id
        return _dumps(fields)


# ---- the connection -----------------------------------------------------------------------------------------

class ElevenLabsConnection(Connection):
    """One `stream-input` (`multi=False`: one reply, then the socket closes) or `multi-stream-input` socket.

    Every client mistake and failure is reported their way and closes the socket, as theirs does: an
    `{"message", "error", "code"}` message, then the close code it names.
    """

    def __init__(self, websocket: WebSocket, services: Services, multi: bool):
        super().__init__(websocket, services)
        self.multi = multi
        self.voice_id = websocket.path_params["voice_id"].lower()  # our ids are lower case
        self.options = Options()  # until `greet` reads the query
        self._input_closed = False  # end of input (single), close_socket (multi), or a fatal error

    keys_in_first_message = True

    @property
    def idle_timeout_s(self) -> float:
        return self.options.inactivity_timeout_s

    def handshake_keys(self) -> list[str]:
        return handshake_keys(self.ws)

    def message_keys(self, raw: str) -> list[str]:
        try:
            return list(Message.parse(raw).keys)
        except ElevenLabsError:
            return []

    def unauthorized_reply(self) -> str:
        return error_message(ElevenLabsError("invalid_api_key", "missing or invalid API key: send it in the "
                                                                "xi-api-key header, or as xi_api_key in the first "
                                                                "message"))

    async def greet(self) -> None:
        try:
            self.options = Options.parse(self.ws.query_params)
        except ElevenLabsError as exc:
            self._fatal(exc)  # the receive loop ends when the client answers the close

    # ---- messages -------------------------------------------------------------------------------------------

    def on_binary(self) -> None:
        self._fatal(ElevenLabsError("invalid_input_message", "binary frames are not accepted; send JSON text"))

    async def on_text(self, raw: str) -> None:
        if self._input_closed:
            return  # after the end, their server reads nothing more either
        try:
            message = Message.parse(raw)
            if self.multi:
                await self._on_multi(message)
            else:
                await self._on_single(message)
        except ElevenLabsError as exc:
            self._fatal(exc)
        except ClientError as exc:  # the core refused (e.g. text after the end)
            self._fatal(ElevenLabsError.from_ours(exc.code, exc.message, self._context_of(message)))

    async def _on_single(self, message: Message) -> None:
        context = self.contexts.get(DEFAULT_CONTEXT) or await self._open(DEFAULT_CONTEXT, message.voice_settings)
        if message.text == "":
            self._input_closed = True
            context.end()
            return
        self._speak(context, message)

    async def _on_multi(self, message: Message) -> None:
        if message.close_socket:
            self._close_socket()
            return
        context_id = message.context_id or DEFAULT_CONTEXT
        context = self.contexts.get(context_id)
        if message.close_context:
            if context is not None and not context.ended:
                context.end(speak_buffered=False)
            return
        if not message.text:  # a keep-alive (or a flush of nothing) for this context, if it is open
            if context is not None and not context.ended:
                context.touch()
                if message.flush:
                    context.flush()
            return
        if context is not None and context.ended:
            context.abort(None)  # the id is reused: the new context is unrelated to the closing one
            context = None
        self._speak(context or await self._open(context_id, message.voice_settings), message)

    def _speak(self, context: StreamContext, message: Message) -> None:
        context.touch()
        if message.text:
            context.push_text(message.text)
        if context.closed:  # the text failed it (over the buffered-text limit)
            return
        if message.flush:
            context.flush()
        elif message.text and self.options.auto_mode:
            context.release_buffered()  # auto_mode: each message is a whole phrase, spoken as it is

    def _context_of(self, message: Message) -> str | None:
        """The contextId their error messages name: on a multi-stream socket only."""
        return (message.context_id or DEFAULT_CONTEXT) if self.multi else None

    async def _open(self, context_id: str, voice_settings: Any) -> StreamContext:
        generation = generation_settings(voice_settings, self.options.seed, self.services.base_generation)
        spec = ContextSpec(context_id=context_id, voice=self.voice_id, generation=generation,
                           model=model_for(self.options.model_id, self.services.models),
                           language=self.options.language_code)
        encoder = self.options.output.encoder(self.services.sample_rate)
        framing_id = context_id if self.multi else None
        try:
            return await self.open_context(spec, encoder, lambda serial: ElevenLabsFraming(framing_id))
        except ClientError as exc:
            raise self._open_error(exc, framing_id) from None

    def _open_error(self, exc: ClientError, context_id: str | None) -> ElevenLabsError:
        if exc.code == "too_many_contexts":
            limit = self.services.settings.max_contexts_per_connection
            return ElevenLabsError("max_active_conversations", f"Maximum simultaneous contexts per WebSocket "
                                   f"connection exceeded ({limit}). Please close an existing context before "
                                   "opening a new one.", context_id=context_id)
        if exc.code in ("unknown_voice", "invalid_voice_name"):
            return ElevenLabsError("voice_not_found", f"A voice with voice_id {self.voice_id!r} was not found "
                                                      "in this server's voice library.", context_id=context_id)
        return ElevenLabsError.from_ours(exc.code, exc.message, context_id)

    def _close_socket(self) -> None:
        """Speak everything every context holds, send each one's isFinal, then close."""
        self._input_closed = True
        for context in list(self.contexts.values()):
            if not context.ended:
                context.end()
        self._close_when_finished()

    # ---- endings --------------------------------------------------------------------------------------------

    def forget(self, context: StreamContext) -> None:
        super().forget(context)
        if not context.dropped:  # it finished: its isFinal has been sent
            self._close_when_finished()

    def _close_when_finished(self) -> None:
        if self._input_closed and not self.contexts:
            self.outbox.close(NORMAL_CLOSURE, "")

    def context_failed(self, context: StreamContext, code: str, message: str) -> None:
        """The context's framing queued the error; theirs closes the socket on any failure."""
        for other in list(self.contexts.values()):
            other.abort(None)
        self._close_after_error(CLOSE_CODES.get(code, POLICY_VIOLATION), message)

    def _fatal(self, error: ElevenLabsError) -> None:
        self.services.metrics.errors.labels(error.error).inc()
        for context in list(self.contexts.values()):
            context.abort(None)
        self.outbox.send(error_message(error))
        self._close_after_error(error.code, error.message)

    def _close_after_error(self, code: int, message: str) -> None:
        self._input_closed = True
        reason = message.encode()[:_CLOSE_REASON_BYTES].decode(errors="ignore")
        self.outbox.close(code, reason)

    async def check_idle(self, now: float) -> bool:
        """A multi-stream context closes after `inactivity_timeout` without a message for it or audio of it;
        the socket closes when nothing was received or sent for that long (a single-stream socket until
        the end of its input; a multi-stream socket while no context is open)."""
        timeout = self.idle_timeout_s
        if self.multi:
            for context in list(self.contexts.values()):
                if not context.ended and now - context.last_activity > timeout and not context.awaiting_audio():
                    context.end(speak_buffered=False)
        waiting_for_input = not self._input_closed and not (self.multi and self.contexts)
        if not waiting_for_input or now - self.last_activity <= timeout or self.awaiting_audio():
            return False
        self._fatal(ElevenLabsError(
            "input_timeout_exceeded", f"Have not received a new text input within the timeout of {timeout:g} "
                                      "seconds. Streaming input terminated. Please make sure to either feed the "
                                      "input in a timely manner, or to send the end of input text (empty string "
                                      '"") when done.'))
        return True


async def single_stream_endpoint(websocket: WebSocket) -> None:
    await ElevenLabsConnection(websocket, Services.from_state(websocket.app.state), multi=False).serve()


async def multi_stream_endpoint(websocket: WebSocket) -> None:
    await ElevenLabsConnection(websocket, Services.from_state(websocket.app.state), multi=True).serve()


routes = [WebSocketRoute(SINGLE_PATH, single_stream_endpoint),
          WebSocketRoute(MULTI_PATH, multi_stream_endpoint)]
