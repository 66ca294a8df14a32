"""What ElevenLabs' two transports share (their WebSockets in elevenlabs.py, their HTTP text-to-speech in
elevenlabs_http.py; one protocol, so both import this module): their paths, output formats, voice settings,
errors, and the character alignment laid over the audio.
"""

from __future__ import annotations

import itertools
import re
from collections import deque
from dataclasses import dataclass
from typing import Any

from app.audio.encode import SAMPLE_RATES, AudioEncoder, Mp3StreamEncoder, StreamEncoder
from app.engine.types import EngineError, GenerationSettings
from app.server.core.close_codes import GOING_AWAY, INTERNAL_ERROR, POLICY_VIOLATION
from app.server.core.pipeline import SPEECH_CHARS_PER_SECOND
from app.text.chunker import TextChunk

# Their text-to-speech routes: the WebSockets (stream-input, multi-stream-input) and the HTTP ones.
_PATHS = re.compile(r"/v1/text-to-speech/[^/]+(/(multi-)?stream-input|/stream|/with-timestamps"
                    r"|/stream/with-timestamps)?")

THEIR_PREFIX = "/v1/text-to-speech/"
DEFAULT_OUTPUT_FORMAT = "mp3_44100_128"  # theirs
MAX_SEED = 4_294_967_295

# Our error codes as theirs; the close code (WebSockets) is 1008 unless CLOSE_CODES says otherwise.
_ERROR_NAMES = {"too_many_contexts": "max_active_conversations", "unknown_voice": "voice_not_found",
                "invalid_voice_name": "voice_not_found", "bad_json": "invalid_input_message",
                "bad_request": "invalid_input_message", "unknown_model": "model_not_found"}
CLOSE_CODES = {"engine_error": INTERNAL_ERROR, "internal_error": INTERNAL_ERROR, "shutting_down": GOING_AWAY}


# Their model ids as the model that fits them best here. A model that is not served falls back to the server's
# default, so the model_id a framework sends by default works on any server; our own names (which a client only
# sends on purpose) must be served.
_THEIR_MODELS = {"eleven_flash_v2_5": "turbo", "eleven_flash_v2": "turbo", "eleven_turbo_v2_5": "turbo",
                 "eleven_turbo_v2": "turbo", "eleven_multilingual_v2": "multilingual",
                 "eleven_multilingual_v1": "multilingual", "eleven_v3": "multilingual",
                 "eleven_monolingual_v1": "standard", "eleven_english_sts_v2": "standard"}
_OUR_MODELS = {"chatterbox": "standard", "chatterbox-turbo": "turbo", "chatterbox-multilingual": "multilingual"}


def model_for(model_id: Any, served: tuple[str, ...]) -> str:
    """Our model name for their `model_id` ("": the server's default)."""
    if not isinstance(model_id, str) or not model_id:
        return ""
    if model_id in _OUR_MODELS:
        return _OUR_MODELS[model_id]
    preferred = _THEIR_MODELS.get(model_id, "")
    return preferred if preferred in served else ""


def is_under_their_prefix(path: str) -> bool:
    """Their API's paths (existing or not): unknown routes and methods there answer their way."""
    return path.startswith(THEIR_PREFIX)


def is_elevenlabs_path(path: str) -> bool:
    """These routes check API keys themselves: their clients send `xi-api-key`, or the key in a message."""
    return _PATHS.fullmatch(path) is not None


class ElevenLabsError(Exception):
    """A failure reported their way. WebSockets: `{"message", "error", "code"}`, then the socket closes with
    `code`. HTTP: `{"detail": {"status": error, "message"}}` with `status`."""

    def __init__(self, error: str, message: str, code: int = POLICY_VIOLATION, context_id: str | None = None,
                 status: int = 400):
        super().__init__(message)
        self.error = error
        self.message = message
        self.code = code
        self.context_id = context_id
        self.status = status

    @classmethod
    def from_ours(cls, code: str, message: str, context_id: str | None = None,
                  status: int = 400) -> ElevenLabsError:
        return cls(_ERROR_NAMES.get(code, code), message, CLOSE_CODES.get(code, POLICY_VIOLATION), context_id,
                   status)


# ---- output formats -----------------------------------------------------------------------------------------

# Their MP3 formats; LAME takes any of these rates and bitrates.
MP3_FORMATS = frozenset({"mp3_22050_32", "mp3_24000_48", "mp3_44100_32", "mp3_44100_64", "mp3_44100_96",
                         "mp3_44100_128", "mp3_44100_192"})
OPUS_FORMATS = frozenset(f"opus_48000_{kbps}" for kbps in (32, 64, 96, 128, 192))
_G711 = {"ulaw_8000": "mulaw", "alaw_8000": "alaw"}
_MEDIA_TYPES = {"mp3": "audio/mpeg", "pcm": "audio/pcm", "ulaw": "audio/basic", "alaw": "audio/x-alaw-basic",
                "wav": "audio/wav", "opus": "audio/ogg"}


@dataclass(frozen=True)
class OutputFormat:
    """One of their `output_format`s: pcm_RATE (s16le), wav_RATE, ulaw_8000, alaw_8000, mp3_RATE_KBPS,
    opus_48000_KBPS (Ogg Opus; written once the audio is complete, so only where a whole body is sent)."""

    name: str
    codec: str  # "pcm", "wav", "ulaw", "alaw", "mp3" or "opus"
    sample_rate: int
    kbps: int | None = None  # mp3 and opus

    @classmethod
    def parse(cls, name: str, streamed: bool) -> OutputFormat:
        """`streamed`: the audio must be encoded as it is produced (their WebSockets)."""
        codec, _, rest = name.partition("_")
        rate, _, kbps = rest.partition("_")
        supported = ((codec in ("pcm", "wav") and not kbps and rate.isdigit() and int(rate) in SAMPLE_RATES
                      and not (streamed and codec == "wav"))
                     or name in _G711 or name in MP3_FORMATS or (name in OPUS_FORMATS and not streamed))
        if not supported:
            raise ElevenLabsError("invalid_output_format", f"output_format {name!r} is not supported here; use "
                                                           f"one of {', '.join(output_format_names(streamed))}")
        return cls(name, codec, int(rate), int(kbps) if kbps else None)

    @property
    def media_type(self) -> str:
        return _MEDIA_TYPES[self.codec]

    def encoder(self, source_rate: int) -> AudioEncoder:
        """The stream encoder of every codec but opus (wav: its samples, without the header)."""
        if self.codec == "mp3":
            return Mp3StreamEncoder(self.sample_rate, self.kbps or 128, source_rate)
        return StreamEncoder(_G711.get(self.name, "pcm_s16le"), self.sample_rate, source_rate)


def output_format_names(streamed: bool) -> list[str]:
    names = [f"pcm_{rate}" for rate in SAMPLE_RATES] + sorted(_G711) + sorted(MP3_FORMATS)
    return names if streamed else names + [f"wav_{rate}" for rate in SAMPLE_RATES] + sorted(OPUS_FORMATS)


DEFAULT_OUTPUT = OutputFormat(DEFAULT_OUTPUT_FORMAT, "mp3", 44100, 128)


# ---- voice settings -----------------------------------------------------------------------------------------

_NEUTRAL_STABILITY = 0.5  # their default
_TEMPERATURE_PER_STABILITY = 0.8  # stability 0 -> temperature 1.2, 0.5 -> 0.8 (ours), 1 -> 0.4
_EXAGGERATION_PER_STYLE = 1.0  # style 0 (their default) -> exaggeration 0.5 (neutral), 1 -> 1.5
_VOICE_SETTING_RANGES = {"stability": (0.0, 1.0), "similarity_boost": (0.0, 1.0), "style": (0.0, 1.0),
                         "speed": (0.7, 1.2)}


def generation_settings(voice_settings: Any, seed: int | None, base: GenerationSettings) -> GenerationSettings:
    """Their voice settings as ours where the meaning carries over: stability (how much a generation varies)
    sets the sampling temperature, style sets Chatterbox's exaggeration. similarity_boost, use_speaker_boost
    and speed are checked and ignored."""
    settings = voice_settings or {}
    if not isinstance(settings, dict):
        raise ElevenLabsError("invalid_input_message", "voice_settings must be an object")
    for name, (low, high) in _VOICE_SETTING_RANGES.items():
        value = settings.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not low <= value <= high):
            raise ElevenLabsError("invalid_voice_settings", f"voice_settings.{name} must be a number in "
                                                            f"[{low:g}, {high:g}]")
    if not isinstance(settings.get("use_speaker_boost", False), (bool, type(None))):
        raise ElevenLabsError("invalid_voice_settings", "voice_settings.use_speaker_boost must be a boolean")
    changes: dict[str, Any] = {} if seed is None else {"seed": seed}
    if settings.get("stability") is not None:
        changes["temperature"] = base.temperature + (_NEUTRAL_STABILITY - settings["stability"]) \
            * _TEMPERATURE_PER_STABILITY
    if settings.get("style") is not None:
        changes["exaggeration"] = base.exaggeration + settings["style"] * _EXAGGERATION_PER_STYLE
    try:
        return GenerationSettings.from_mapping(changes, base=base)
    except EngineError as exc:
        raise ElevenLabsError("invalid_voice_settings", exc.message) from None


# ---- alignment ----------------------------------------------------------------------------------------------

_WORD = re.compile(r"\S+\s*|\s+")  # a word with the spaces after it (or leading spaces)
_SPOKEN_WORD = re.compile(r"\S+")


@dataclass(frozen=True)
class Alignment:
    """Characters over one stretch of audio `seconds` long, sharing it evenly (starts relative to it)."""

    chars: str
    seconds: float

    def starts_ms(self) -> list[int]:
        total_ms = self.seconds * 1000.0
        return [round(i * total_ms / len(self.chars)) for i in range(len(self.chars))]

    def websocket_json(self) -> dict[str, Any]:
        """Their WebSocket field: times in whole milliseconds, relative to the message."""
        starts = self.starts_ms()
        ends = [*starts[1:], round(self.seconds * 1000.0)]
        return {"chars": list(self.chars), "charStartTimesMs": starts,
                "charDurationsMs": [end - start for start, end in zip(starts, ends)]}

    def http_json(self, offset_s: float) -> dict[str, Any]:
        """Their HTTP field: seconds from the start of the response's audio."""
        step = self.seconds / len(self.chars)
        starts = [round(offset_s + i * step, 3) for i in range(len(self.chars))]
        return {"characters": list(self.chars), "character_start_times_seconds": starts,
                "character_end_times_seconds": [*starts[1:], round(offset_s + self.seconds, 3)]}


@dataclass(frozen=True)
class Alignments:
    """One message's characters twice over the same audio: the caller's own (their `alignment`) and the
    normalized ones the model spoke (their `normalizedAlignment`)."""

    caller: Alignment | None
    normalized: Alignment | None

    def __bool__(self) -> bool:
        return self.caller is not None or self.normalized is not None


class _Words:
    """One text of a chunk as words (each with the spaces after it), by where in the text each starts."""

    def __init__(self, text: str) -> None:
        self.chars = len(text)
        self._words = deque((match.start() / max(1, len(text)), match.group()) for match in _WORD.finditer(text))

    def started(self, fraction: float) -> str:
        """The words started by `fraction` of the chunk, except its last: that one goes with the chunk's end."""
        return "".join(self._words.popleft()[1] for _ in range(self._count_started(fraction)))

    def has_started(self, fraction: float) -> bool:
        return self._count_started(fraction) > 0

    def rest(self) -> str:
        rest = "".join(word for _, word in self._words)
        self._words.clear()
        return rest

    def _count_started(self, fraction: float) -> int:
        count = 0
        for start, _ in itertools.islice(self._words, max(0, len(self._words) - 1)):
            if start >= fraction:
                break
            count += 1
        return count


class TranscriptAligner:
    """Approximate character timings for a reply's audio messages (we do not measure them), for both texts of
    each chunk: the caller's own (`source`) and the normalized one the model spoke.

    Each chunk's text is laid over its audio by when each word starts: measured, where the model's aligned heads
    report word starts (`measure`, the multilingual model), else estimated at a speaking rate learnt from the
    reply's previous chunks. A word goes with the first message during which it starts (by the fraction of the
    chunk spoken, the same for both texts), and the chunk's last message takes every word left (or
    `finish_chunk` does, when its end was not marked). A message with audio carries both texts or neither
    (each text keeps its last word for the chunk's end), so one transcript never runs ahead of the other. Within
    a message its characters share its duration evenly, so a message's timings start at 0 and end at its own
    length, and every character is sent exactly once, in order.
    """

    def __init__(self) -> None:
        self._rate = SPEECH_CHARS_PER_SECOND  # normalized characters per second of audio
        self._index: int | None = None  # the chunk being spoken
        self._spoken_s = 0.0
        self._caller = _Words("")
        self._normalized = _Words("")
        self._word_offsets: list[int] = []  # where each word of the chunk's normalized text starts
        self._measured: list[float] | None = None  # measured word starts (seconds) of the chunk, so far

    def align(self, seconds: float, chunk: TextChunk | None, chunk_ends: bool) -> Alignments:
        """The characters due with `seconds` of `chunk`'s audio (none for an encoder's held-back tail, whose
        chunk's characters went with the chunk)."""
        if chunk is None:
            return Alignments(None, None)
        self._follow(chunk)
        self._spoken_s += seconds
        if chunk_ends:
            self._learn_rate()
            return self._alignments(self._caller.rest(), self._normalized.rest(), seconds)
        spoken = self._spoken_fraction()
        if not (self._caller.has_started(spoken) and self._normalized.has_started(spoken)):
            return Alignments(None, None)
        return self._alignments(self._caller.started(spoken), self._normalized.started(spoken), seconds)

    def measure(self, chunk: TextChunk, word_starts: list[float]) -> None:
        """The measured starts of `chunk`'s words reached so far (its normalized words, in order)."""
        self._follow(chunk)
        self._measured = word_starts

    def _spoken_fraction(self) -> float:
        """How far into the chunk's text the audio so far has spoken: past the last word measured to have
        started, or at the estimated rate."""
        if self._measured is None:
            return self._spoken_s * self._rate / max(1, self._normalized.chars)
        started = sum(start < self._spoken_s for start in self._measured[:len(self._word_offsets)])
        if not started:
            return 0.0
        # Up to where the first word not started yet begins: everything before it has been spoken.
        following = self._word_offsets[started] if started < len(self._word_offsets) else self._normalized.chars
        return following / max(1, self._normalized.chars)

    def finish_chunk(self, chunk: TextChunk) -> Alignments:
        """`chunk`'s audio is over: the characters not sent yet are due now, at no duration (all of them for a
        chunk that had no audio, having nothing to speak; the rest of one whose last audio was not marked)."""
        self._follow(chunk)
        return self._alignments(self._caller.rest(), self._normalized.rest(), 0.0)

    @staticmethod
    def _alignments(caller: str, normalized: str, seconds: float) -> Alignments:
        return Alignments(Alignment(caller, seconds) if caller else None,
                          Alignment(normalized, seconds) if normalized else None)

    def _follow(self, chunk: TextChunk) -> None:
        if chunk.index != self._index:
            self._index = chunk.index
            self._spoken_s = 0.0
            self._caller, self._normalized = _Words(chunk.source), _Words(chunk.text)
            self._word_offsets = [match.start() for match in _SPOKEN_WORD.finditer(chunk.text)]
            self._measured = None

    def _learn_rate(self) -> None:
        if self._spoken_s > 0 and self._normalized.chars:
            self._rate = (self._rate + self._normalized.chars / self._spoken_s) / 2
