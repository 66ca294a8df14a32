"""The contract every engine meets, shaped like an LLM engine (add requests, step, collect outputs).

An engine is synchronous and single-owner: only the `EngineWorker` thread calls it, so it may keep device
state without locks. One `step()` advances every running request by one unit of work (a batched decode step
for Chatterbox) and returns whatever new audio exists. An engine never modifies the requests it is handed.

Failures: an exception from `step()` means nothing it would have returned was lost (work that can fail runs
before any request's progress is committed); the worker then retries with `step(only={id})` one request at a
time to find and fail the culprit while every other request goes on.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection
from typing import Any

import numpy as np

from app.engine.types import EngineInfo, EngineOutput, EngineRequest


class Engine(ABC):
    info: EngineInfo

    @abstractmethod
    def add_request(self, request: EngineRequest) -> None:
        """Queue a request; it starts on a later `step()`."""

    @abstractmethod
    def abort_request(self, request_id: str) -> None:
        """Drop a request and free its resources before the next step; unknown ids are ignored."""

    @abstractmethod
    def step(self, only: Collection[str] | None = None) -> list[EngineOutput]:
        """Advance running requests (only those listed in `only`, if given) by one unit of work."""

    @abstractmethod
    def has_unfinished(self) -> bool:
        """True while any request is queued or running."""

    @abstractmethod
    def default_voice(self) -> Any:
        """Conditionals of the built-in voice."""

    @abstractmethod
    def embed_voice(self, wav: np.ndarray, sample_rate: int) -> Any:
        """Conditionals computed from a mono float32 reference recording."""

    @abstractmethod
    def save_voice(self, voice: Any, path: str) -> None:
        """Write conditionals to `path` (the caller makes the write atomic)."""

    @abstractmethod
    def load_voice(self, path: str) -> Any:
        """Read conditionals written by `save_voice`."""

    @property
    def voice_key(self) -> str:
        """Names the format of this engine's saved voices: the voice library keeps one folder per key."""
        return self.info.name

    def warmup(self) -> None:
        """Compile and capture whatever the engine needs before it is ready; default: nothing."""

    def optimization_status(self) -> dict[str, Any]:
        return self.info.as_dict()
