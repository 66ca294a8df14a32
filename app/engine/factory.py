"""Build the engine that the settings name: one engine per model behind a `ModelRouter`. Imports are local so
the espeak engine needs no model code."""

from __future__ import annotations

from app.engine.base import Engine
from app.engine.config import EngineConfig
from app.engine.router import ModelRouter
from app.settings import Settings


def build_engine(settings: Settings) -> Engine:
    config = EngineConfig.from_settings(settings)
    return ModelRouter({model: _model_engine(config.for_model(model)) for model in config.models}, config.models[0])


def _model_engine(config: EngineConfig) -> Engine:
    if config.engine == "espeak":
        from app.engine.espeak import EspeakEngine

        return EspeakEngine(config)
    from app.engine.chatterbox.engine import ChatterboxEngine

    return ChatterboxEngine.from_config(config)
