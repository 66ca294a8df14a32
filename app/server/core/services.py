"""What the server's request handlers need from the app: everything lives on `app.state`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.engine.chatterbox.model_names import DEFAULT_LANGUAGE, MODEL_LANGUAGES
from app.engine.router import ModelVoices
from app.engine.types import EngineError, EngineInfo, GenerationSettings
from app.engine.worker import EngineWorker
from app.errors import ClientError
from app.metrics import Metrics
from app.server.core.runtime import Runtime
from app.server.core.spec import UNPROCESSABLE
from app.settings import Settings, default_model
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
    models: tuple[str, ...]  # the loaded models, the default first

    @property
    def default_model(self) -> str:
        return self.models[0]

    def resolve_model(self, name: str) -> str:
        """The loaded model a client's name means ("": the default); `unknown_model` otherwise."""
        if not name:
            return self.default_model
        if name not in self.models:
            raise ClientError("unknown_model", f"model {name!r} is not served here; models: "
                                               f"{', '.join(self.models)}")
        return name

    def resolve_language(self, model: str, language: str) -> str:
        """The language code `model` speaks the text in ("": English); `unsupported_language` naming what it
        speaks (and which served model speaks the language, if one does) otherwise."""
        code = (language or DEFAULT_LANGUAGE).strip().lower()
        spoken = MODEL_LANGUAGES.get(model, (DEFAULT_LANGUAGE,))
        if code in spoken:
            return code
        others = [other for other in self.models if code in MODEL_LANGUAGES.get(other, ())]
        hint = f"; model {others[0]!r} speaks it" if others else ""
        raise ClientError("unsupported_language", f"model {model!r} does not speak {language!r}; it speaks: "
                                                  f"{', '.join(spoken)}{hint}")

    def tags(self, model: str) -> frozenset[str]:
        """The model's bracketed tags ("[laugh]"), which the chunker keeps whole; none for most models."""
        return frozenset(tag.lower() for tag in self.engine_info.get("tags", {}).get(model, ()))

    async def conditionals(self, voice_id: str, model: str) -> Any:
        """The voice's conditionals (a `VoiceError` if there is no such voice), refused with the model's reason
        when that model cannot speak with it (Turbo needs a reference longer than 5 s)."""
        conditionals = await self.voices.conditionals(voice_id)
        if isinstance(conditionals, ModelVoices):
            try:
                conditionals.for_model(model)
            except EngineError as exc:
                raise ClientError(exc.code, f"voice {voice_id!r}: {exc.message}", UNPROCESSABLE) from None
        return conditionals

    @classmethod
    def from_state(cls, state: Any) -> Services:
        return cls(settings=state.settings, runtime=state.runtime, worker=state.worker,
                   engine_info=state.engine_info.as_dict(), sample_rate=state.engine_info.sample_rate,
                   voices=state.voices, metrics=state.metrics,
                   base_generation=GenerationSettings(max_new_tokens=state.settings.max_new_tokens),
                   models=served_models(state.engine_info, state.settings))


def served_models(info: EngineInfo, settings: Settings) -> tuple[str, ...]:
    """The models the engine serves, the default first (an engine serving one model does not list it)."""
    models = info.details.get("models")
    if not models:
        return (default_model(settings),)
    default = info.details["default_model"]
    return (default, *(model for model in models if model != default))
