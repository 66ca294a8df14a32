"""Plain data that crosses the boundary between the server and an engine.

Data flows one way: the server turns text chunks into `EngineRequest`s; engines answer with `EngineOutput`s
carrying float32 PCM at the engine's sample rate.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

SAMPLE_RATE = 24_000  # Chatterbox's S3Gen output rate; every engine speaks at it.
MAX_PROMPT_TOKENS = 250  # Chatterbox's 10 s S3Gen voice reference (DEC_COND_LEN) in 25 Hz speech tokens
MAX_TOKENS = 4000  # most speech tokens one request may ask for (160 s of audio)
EMPTY_PCM = np.zeros(0, dtype=np.float32)


class EngineError(Exception):
    """An error tied to one request; `code` is stable and machine-readable."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    @classmethod
    def wrap(cls, exc: Exception, what: str) -> EngineError:
        """`exc` itself if it is an EngineError, else an `engine_error` saying what failed and why."""
        return exc if isinstance(exc, EngineError) else cls("engine_error", f"{what}: {exc}")


class SettingsError(EngineError):
    def __init__(self, message: str):
        super().__init__("invalid_settings", message)


@dataclass(frozen=True)
class GenerationSettings:
    """Per-request sampling and synthesis settings (Chatterbox's defaults)."""

    temperature: float = 0.8
    top_p: float = 1.0
    min_p: float = 0.05
    repetition_penalty: float = 1.2
    cfg_weight: float = 0.5
    exaggeration: float = 0.5
    seed: int | None = None
    max_new_tokens: int = 1000

    def __post_init__(self) -> None:
        _check_range("temperature", self.temperature, 0.05, 5.0)
        _check_range("top_p", self.top_p, 0.0, 1.0, low_open=True)
        _check_range("min_p", self.min_p, 0.0, 1.0)
        _check_range("repetition_penalty", self.repetition_penalty, 1.0, 5.0)
        _check_range("cfg_weight", self.cfg_weight, 0.0, 3.0)
        _check_range("exaggeration", self.exaggeration, 0.0, 2.0)
        if self.seed is not None and (not isinstance(self.seed, int) or not 0 <= self.seed < 2**63):
            raise SettingsError("seed must be an integer between 0 and 2**63-1")
        if not isinstance(self.max_new_tokens, int) or not 1 <= self.max_new_tokens <= MAX_TOKENS:
            raise SettingsError(f"max_new_tokens must be an integer between 1 and {MAX_TOKENS}")

    @classmethod
    def from_mapping(cls, values: dict[str, Any], base: GenerationSettings | None = None) -> GenerationSettings:
        """Build from client JSON, rejecting unknown keys and wrong types with a clear message."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise SettingsError(f"unknown generation setting(s): {', '.join(unknown)}")
        merged = dict((base or cls()).__dict__)
        for name, value in values.items():
            if value is None and name == "seed":
                merged[name] = None
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise SettingsError(f"{name} must be a number")
            if name in ("seed", "max_new_tokens"):
                if not float(value).is_integer():
                    raise SettingsError(f"{name} must be an integer")
                value = int(value)
            merged[name] = value
        return cls(**merged)

    def cache_key(self) -> tuple:
        return tuple(sorted(self.__dict__.items()))


def _check_range(name: str, value: float, low: float, high: float, low_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise SettingsError(f"{name} must be a number")
    below = value <= low if low_open else value < low
    if below or value > high:
        bracket = "(" if low_open else "["
        raise SettingsError(f"{name} must be in {bracket}{low}, {high}], got {value}")


@dataclass
class EngineRequest:
    """One text chunk to speak with one voice."""

    request_id: str
    text: str
    voice: Any  # engine-specific conditionals, from `Engine.load_voice` / `Engine.embed_voice`
    settings: GenerationSettings = field(default_factory=GenerationSettings)
    priority: int = 0  # higher goes first
    # Monotonic time by which this request's next audio must exist for its listener not to run dry.
    deadline: float = field(default_factory=time.monotonic)
    first_in_context: bool = True  # the first chunk of a reply: favoured to cut time to first audio
    arrival: float = field(default_factory=time.monotonic)
    # Who asked (a connection or API-key id): the scheduler shares decode rows fairly across clients.
    client: str = ""
    # Benchmarks only, never set from a client message: exactly this many speech tokens, stop token ignored.
    fixed_tokens: int | None = None
    model: str = ""  # which loaded model speaks it ("": the server's default)
    language: str = ""  # ISO 639-1 code the text is in ("": English); the server checked the model speaks it


@dataclass
class EngineOutput:
    """New PCM for one request (possibly empty), and whether the request has finished."""

    request_id: str
    pcm: np.ndarray  # float32 mono at SAMPLE_RATE; never overlaps earlier output
    finished: bool = False
    speech_tokens: int = 0  # tokens generated for this request so far
    error: EngineError | None = None
    # On the final output, where the model measures them: (start, end) seconds of each word of the request's
    # text (split at spaces), from the start of its audio.
    word_times: list[tuple[float, float]] | None = None
    # On every output, where the model measures them: the start (seconds) of each word reached so far.
    word_starts: list[float] | None = None

    @classmethod
    def failed(cls, request_id: str, error: EngineError) -> EngineOutput:
        """The last output of a request that failed: no audio, the error."""
        return cls(request_id, EMPTY_PCM, finished=True, error=error)

    @classmethod
    def ended(cls, request_id: str) -> EngineOutput:
        """A final output with no audio (e.g. after a cancel)."""
        return cls(request_id, EMPTY_PCM, finished=True)


@dataclass(frozen=True)
class EngineInfo:
    """What clients and /optimization-status are told about the serving engine."""

    name: str
    device: str
    dtype: str
    sample_rate: int = SAMPLE_RATE
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"engine": self.name, "device": self.device, "dtype": self.dtype,
                "sample_rate": self.sample_rate, **self.details}
