"""What the speech core is asked to speak with: one `ContextSpec` per context (a /v1/stream context, an
ElevenLabs context, a whole-text HTTP synthesis), built by each protocol adapter from its own wire format.

Also the limits and field checks more than one adapter shares (priority, chunk size, the flat generation
fields of the HTTP bodies), so no adapter takes them from another. New per-context choices (a model, a
language) are new fields with defaults here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from app.engine.types import EngineError, GenerationSettings
from app.errors import ClientError
from app.voices.library import DEFAULT_VOICE_ID

UNPROCESSABLE = 422
CHUNK_SIZE_RANGE = (25, 200)
PRIORITY_RANGE = (-1000, 1000)
MAX_ID_CHARS = 128  # context and voice ids
# The generation settings an HTTP body may carry as top-level fields (POST /synthesize, OpenAI's extra_body).
GENERATION_FIELDS = frozenset({"exaggeration", "cfg_weight", "temperature", "top_p", "min_p",
                               "repetition_penalty", "seed"})


@dataclass(frozen=True)
class ContextSpec:
    """One context: who speaks (`voice`) with which model (`model`, "" for the server's default) in which
    language (`language`), how
    (`generation`), in what text chunks (`chunk_size`, None for the server's current default) and how urgently
    (`priority`, higher first). The output encoding is the adapter's (it builds the encoder), since each
    protocol names its formats differently."""

    context_id: str
    voice: str = DEFAULT_VOICE_ID
    generation: GenerationSettings = GenerationSettings()
    chunk_size: int | None = None
    priority: int = 0
    model: str = ""
    language: str = ""  # ISO 639-1 ("": English), checked against the model by `Services.resolve_language`
    alignment: bool = False  # send measured word times per chunk (models that measure them)


def check_name(value: Any, field: str) -> str:
    """A model name or language code as a client sends it: a short string (`Services` checks its meaning)."""
    if not isinstance(value, str) or len(value) > MAX_ID_CHARS:
        raise ClientError("bad_request", f"{field} must be a string of at most {MAX_ID_CHARS} characters",
                          UNPROCESSABLE)
    return value


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_chunk_size(value: Any) -> int:
    """A chunk size in CHUNK_SIZE_RANGE; `ClientError` (bad_request or invalid_settings, 422) otherwise."""
    low, high = CHUNK_SIZE_RANGE
    if not is_int(value):
        raise ClientError("bad_request", "chunk_size must be an integer", UNPROCESSABLE)
    if not low <= value <= high:
        raise ClientError("invalid_settings", f"chunk_size must be between {low} and {high}, got {value}",
                          UNPROCESSABLE)
    return value


def priority_in_range(value: Any) -> bool:
    return is_int(value) and PRIORITY_RANGE[0] <= value <= PRIORITY_RANGE[1]


def generation_from_fields(body: Mapping[str, Any], base: GenerationSettings) -> GenerationSettings:
    """The GENERATION_FIELDS present in `body` over `base`; `ClientError` (422) when invalid."""
    try:
        return GenerationSettings.from_mapping({k: v for k, v in body.items() if k in GENERATION_FIELDS},
                                               base=base)
    except EngineError as exc:
        raise ClientError(exc.code, exc.message, UNPROCESSABLE) from None
