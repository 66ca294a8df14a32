"""Build the engine that the settings name. Imports are local so the espeak engine needs no model code."""

from __future__ import annotations

from app.engine.base import Engine
from app.settings import Settings


def build_engine(settings: Settings) -> Engine:
    if settings.engine == "espeak":
        from app.engine.espeak import EspeakEngine

        return EspeakEngine()
    from app.engine.chatterbox.engine import ChatterboxEngine

    return ChatterboxEngine.from_settings(settings)
