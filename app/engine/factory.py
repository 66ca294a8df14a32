"""Build the engine that the settings name: one engine per model behind a `ModelRouter`. Imports are local so
the espeak engine needs no model code."""

from __future__ import annotations

import logging

from app.engine.base import Engine
from app.engine.config import EngineConfig
from app.engine.router import ModelRouter
from app.settings import Settings

log = logging.getLogger(__name__)


def build_engine(settings: Settings) -> Engine:
    config = EngineConfig.from_settings(settings)
    engine, why = settings.resolved_engine
    log.info("engine %s (%s), models %s, default %s", engine, why, ", ".join(config.models), config.models[0])
    router = ModelRouter({model: _model_engine(config.for_model(model)) for model in config.models}, config.models[0])
    router.info.details["engine_choice"] = why
    return router


def _model_engine(config: EngineConfig) -> Engine:
    if config.engine == "espeak":
        from app.engine.espeak import EspeakEngine

        return EspeakEngine(config)
    from app.engine.chatterbox.engine import ChatterboxEngine

    return ChatterboxEngine.from_config(config)
