"""The `/v1/stream` wire format (docs/protocol.md): client-message parsing and validation into the core's
`ContextSpec`, and event builders.

Pure functions only: nothing here touches a socket, so every rule of the protocol is testable in isolation.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import orjson

from app.audio.encode import StreamEncoder
from app.engine.types import EngineError, GenerationSettings
from app.errors import ClientError
from app.server.core.spec import MAX_ID_CHARS, PRIORITY_RANGE, ContextSpec, check_chunk_size, is_int
from app.voices.library import DEFAULT_VOICE_ID

PROTOCOL_VERSION = 1
DEFAULT_CONTEXT = "default"
DEFAULT_ENCODING = "pcm_s16le"
DEFAULT_SAMPLE_RATE = 24_000
_FRAME_HEADER = struct.Struct("<I")


class ProtocolError(ClientError):
    """A client mistake reported as an `error` event naming the context it concerns; the connection stays
    open."""

    def __init__(self, code: str, message: str, context_id: str | None = None):
        super().__init__(code, message)
        self.context_id = context_id


@dataclass(frozen=True)
class OutputFormat:
    encoding: str = DEFAULT_ENCODING
    sample_rate: int = DEFAULT_SAMPLE_RATE


@dataclass(frozen=True)
class Start:
    spec: ContextSpec
    output: OutputFormat = OutputFormat()

    @property
    def context_id(self) -> str:
        return self.spec.context_id


@dataclass(frozen=True)
class Text:
    context_id: str
    text: str


@dataclass(frozen=True)
class Control:
    """flush, cancel or end: they carry nothing but the context."""

    type: str
    context_id: str


ClientMessage = Start | Text | Control

_FIELDS = {
    "start": {"type", "context_id", "voice", "model", "language", "alignment", "output", "generation", "chunking",
              "priority"},
    "text": {"type", "context_id", "text"},
    "flush": {"type", "context_id"},
    "cancel": {"type", "context_id"},
    "end": {"type", "context_id"},
}


def parse_message(raw: str, base_generation: GenerationSettings) -> ClientMessage:
    """Parse one client text frame. `base_generation` carries the server's caps (max_new_tokens)."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError("bad_json", f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ProtocolError("bad_json", "a message must be a JSON object")
    context_id = _context_id(data)
    kind = data.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("bad_request", "missing string field `type`", context_id)
    if kind not in _FIELDS:
        raise ProtocolError("unknown_type", f"unknown message type {kind!r}; expected one of "
                                            f"{', '.join(_FIELDS)}", context_id)
    unknown = sorted(set(data) - _FIELDS[kind])
    if unknown:
        raise ProtocolError("bad_request", f"unknown field(s) in {kind}: {', '.join(unknown)}", context_id)
    if kind == "start":
        return _parse_start(data, context_id, base_generation)
    if kind == "text":
        text = data.get("text")
        if not isinstance(text, str):
            raise ProtocolError("bad_request", "text: field `text` must be a string", context_id)
        return Text(context_id, text)
    return Control(kind, context_id)


def _context_id(data: dict[str, Any]) -> str:
    value = data.get("context_id", DEFAULT_CONTEXT)
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_ID_CHARS:
        raise ProtocolError("bad_request", f"context_id must be a string of 1-{MAX_ID_CHARS} characters")
    return value


def _parse_start(data: dict[str, Any], context_id: str, base: GenerationSettings) -> Start:
    def fail(code: str, message: str) -> ProtocolError:
        return ProtocolError(code, f"start: {message}", context_id)

    voice = data.get("voice", DEFAULT_VOICE_ID)
    if not isinstance(voice, str) or not 1 <= len(voice) <= MAX_ID_CHARS:
        raise fail("bad_request", f"voice must be a string of 1-{MAX_ID_CHARS} characters")
    priority = data.get("priority", 0)
    if not is_int(priority):
        raise fail("bad_request", "priority must be an integer")
    if not PRIORITY_RANGE[0] <= priority <= PRIORITY_RANGE[1]:
        raise fail("invalid_settings", f"priority must be in [{PRIORITY_RANGE[0]}, {PRIORITY_RANGE[1]}]")
    names = {}
    for field in ("model", "language"):
        names[field] = data.get(field, "")
        if not isinstance(names[field], str) or len(names[field]) > MAX_ID_CHARS:
            raise fail("bad_request", f"{field} must be a string of at most {MAX_ID_CHARS} characters")
    alignment = data.get("alignment", False)
    if not isinstance(alignment, bool):
        raise fail("bad_request", "alignment must be true or false")
    spec = ContextSpec(context_id=context_id, voice=voice, alignment=alignment,
                       generation=_parse_generation(data.get("generation", {}), base, fail),
                       chunk_size=_parse_chunking(data.get("chunking", {}), fail), priority=priority, **names)
    return Start(spec, output=_parse_output(data.get("output", {}), fail))


def _parse_output(value: Any, fail) -> OutputFormat:
    fields = _object(value, "output", {"encoding", "sample_rate"}, fail)
    encoding = fields.get("encoding", DEFAULT_ENCODING)
    sample_rate = fields.get("sample_rate", DEFAULT_SAMPLE_RATE)
    if not isinstance(encoding, str):
        raise fail("bad_request", "output.encoding must be a string")
    if not is_int(sample_rate):
        raise fail("bad_request", "output.sample_rate must be an integer")
    try:
        StreamEncoder.validate(encoding, sample_rate)
    except ValueError as exc:
        raise fail("invalid_settings", f"output: {exc}") from None
    return OutputFormat(encoding, sample_rate)


def _parse_generation(value: Any, base: GenerationSettings, fail) -> GenerationSettings:
    if not isinstance(value, dict):
        raise fail("bad_request", "generation must be an object")
    try:
        settings = GenerationSettings.from_mapping(value, base=base)
    except EngineError as exc:
        raise fail(exc.code, f"generation: {exc.message}") from None
    if settings.max_new_tokens > base.max_new_tokens:
        raise fail("invalid_settings", f"generation: max_new_tokens is capped at {base.max_new_tokens} "
                                       "by this server")
    return settings


def _parse_chunking(value: Any, fail) -> int | None:
    fields = _object(value, "chunking", {"chunk_size"}, fail)
    if "chunk_size" not in fields:
        return None
    try:
        return check_chunk_size(fields["chunk_size"])
    except ClientError as exc:
        raise fail(exc.code, exc.message) from None


def _object(value: Any, name: str, allowed: set[str], fail) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise fail("bad_request", f"{name} must be an object")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise fail("bad_request", f"unknown field(s) in {name}: {', '.join(unknown)}")
    return value


# ---- server -> client -------------------------------------------------------------------------------------

def event(kind: str, **fields: Any) -> str:
    # default=str: engine details may hold values JSON has no type for (a dtype, a path)
    return orjson.dumps({"type": kind, **fields}, option=orjson.OPT_SERIALIZE_NUMPY, default=str).decode()


def ready_event(engine: dict[str, Any], limits: dict[str, Any], defaults: dict[str, Any]) -> str:
    return event("ready", protocol=PROTOCOL_VERSION, engine=engine, limits=limits, defaults=defaults)


def started_event(context_id: str, channel: int, output: OutputFormat) -> str:
    return event("started", context_id=context_id, channel=channel, encoding=output.encoding,
                 sample_rate=output.sample_rate)


def chunk_started_event(context_id: str, chunk: int, text: str) -> str:
    return event("chunk_started", context_id=context_id, chunk=chunk, text=text)


def alignment_event(context_id: str, chunk: int, words: list[str], times: list[tuple[float, float]]) -> str:
    """Measured word times of a chunk's audio (ms from its first sample): the words the model spoke, each with
    the time the aligned attention heads reached it."""
    spoken = [{"word": word, "start_ms": round(start * 1000), "end_ms": round(end * 1000)}
              for word, (start, end) in zip(words, times)]
    return event("alignment", context_id=context_id, chunk=chunk, words=spoken, measured=True)


def chunk_done_event(context_id: str, chunk: int, stats: dict[str, Any]) -> str:
    return event("chunk_done", context_id=context_id, chunk=chunk, stats=stats)


def flushed_event(context_id: str) -> str:
    return event("flushed", context_id=context_id)


def cancelled_event(context_id: str) -> str:
    return event("cancelled", context_id=context_id)


def done_event(context_id: str, stats: dict[str, Any]) -> str:
    return event("done", context_id=context_id, stats=stats)


def error_event(code: str, message: str, context_id: str | None = None) -> str:
    fields: dict[str, Any] = {"code": code, "message": message}
    if context_id is not None:
        fields["context_id"] = context_id
    return event("error", **fields)


def audio_frame(channel: int, payload: bytes) -> bytes:
    """Binary frame: uint32 little-endian channel, then audio (the header keeps f32 payloads 4-byte aligned)."""
    return _FRAME_HEADER.pack(channel) + payload


def split_frame(frame: bytes) -> tuple[int, bytes]:
    """The inverse of `audio_frame` (for clients and tests)."""
    return _FRAME_HEADER.unpack_from(frame)[0], frame[_FRAME_HEADER.size:]
