"""What the server's request handlers need from the app: everything lives on `app.state`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.engine.types import GenerationSettings
from app.engine.worker import EngineWorker
from app.metrics import Metrics
from app.server.core.runtime import Runtime
from app.settings import Settings
from app.voices.library import VoiceLibrary


@dataclass
class Services:
    settings: Settings
    runtime: Runtime
    worker: EngineWorker
    engine_info: dict[str, Any]
    sample_rate: int
    voices: VoiceLibrary
    metrics: Metrics
    base_generation: GenerationSettings

    @classmethod
    def from_state(cls, state: Any) -> Services:
        return cls(settings=state.settings, runtime=state.runtime, worker=state.worker,
                   engine_info=state.engine_info.as_dict(), sample_rate=state.engine_info.sample_rate,
                   voices=state.voices, metrics=state.metrics,
                   base_generation=GenerationSettings(max_new_tokens=state.settings.max_new_tokens))
