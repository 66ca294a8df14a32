"""Several models in one server: one engine per loaded model behind one `Engine`, routing each request by
`EngineRequest.model`.

The worker sees a single engine. A step steps every model that has work, so the models share the worker's
thread in turn (each batches its own streams; their KV caches and graphs are their own). A voice is a
`ModelVoices`: each model's conditionals for the same reference, computed together when the reference is
embedded, so one upload serves every loaded model; a model that cannot use a reference (Turbo needs more than
5 s) keeps the reason, and a request for that model with that voice fails with it.
"""

from __future__ import annotations

import tempfile
import zipfile
from collections.abc import Collection, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from app.engine.base import Engine
from app.engine.chatterbox.model_names import MODEL_LANGUAGES
from app.engine.types import EngineError, EngineInfo, EngineOutput, EngineRequest


class ModelVoices(dict[str, Any]):
    """model name -> that model's conditionals for one voice, or the `EngineError` it could not be made with."""

    def for_model(self, model: str) -> Any:
        conditionals = self[model]
        if isinstance(conditionals, EngineError):
            raise conditionals
        return conditionals


class ModelRouter(Engine):
    def __init__(self, engines: Mapping[str, Engine], default_model: str):
        if default_model not in engines:
            raise ValueError(f"the default model {default_model!r} is not among {', '.join(engines)}")
        self.engines = dict(engines)
        self.default_model = default_model
        self._owner: dict[str, str] = {}  # request id -> model
        first = next(iter(self.engines.values())).info
        tags = {model: engine.info.details["tags"] for model, engine in self.engines.items()
                if engine.info.details.get("tags")}
        self.info = EngineInfo(first.name, first.device, first.dtype, first.sample_rate,
                               {"models": list(self.engines), "default_model": default_model, "tags": tags,
                                "languages": {model: list(MODEL_LANGUAGES.get(model, ("en",)))
                                              for model in self.engines}})

    @property
    def voice_key(self) -> str:
        return "-".join((next(iter(self.engines.values())).voice_key, *self.engines))

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(self.engines)

    def model_of(self, request: EngineRequest) -> str:
        return request.model or self.default_model

    # ---- Engine contract ----------------------------------------------------------------------------------

    def add_request(self, request: EngineRequest) -> None:
        model = self.model_of(request)
        engine = self.engines.get(model)
        if engine is None:
            raise EngineError("unknown_model", f"model {model!r} is not loaded; loaded: {', '.join(self.engines)}")
        voice = request.voice.for_model(model) if isinstance(request.voice, ModelVoices) else request.voice
        engine.add_request(_replace_voice(request, voice))
        self._owner[request.request_id] = model

    def abort_request(self, request_id: str) -> None:
        model = self._owner.pop(request_id, None)
        if model is not None:
            self.engines[model].abort_request(request_id)

    def has_unfinished(self) -> bool:
        return any(engine.has_unfinished() for engine in self.engines.values())

    def step(self, only: Collection[str] | None = None) -> list[EngineOutput]:
        outputs: list[EngineOutput] = []
        for model, engine in self.engines.items():
            if not engine.has_unfinished():
                continue
            mine = None if only is None else [rid for rid in only if self._owner.get(rid) == model]
            if mine == []:
                continue
            outputs += engine.step(mine)
        for output in outputs:
            if output.finished:
                self._owner.pop(output.request_id, None)
        return outputs

    def default_voice(self) -> ModelVoices:
        return ModelVoices({model: engine.default_voice() for model, engine in self.engines.items()})

    def embed_voice(self, wav: np.ndarray, sample_rate: int) -> ModelVoices:
        voices = ModelVoices()
        for model, engine in self.engines.items():
            try:
                voices[model] = engine.embed_voice(wav, sample_rate)
            except EngineError as exc:
                voices[model] = exc
        if all(isinstance(voice, EngineError) for voice in voices.values()):
            raise next(iter(voices.values()))
        return voices

    def save_voice(self, voice: Any, path: str) -> None:
        """One file for all models: a zip of each model's own file (and of the reason a model has none)."""
        with zipfile.ZipFile(path, "w") as archive:
            for model, conditionals in voice.items():
                if isinstance(conditionals, EngineError):
                    archive.writestr(f"{model}.error", f"{conditionals.code}\n{conditionals.message}")
                else:
                    archive.writestr(model, _saved_bytes(self.engines[model], conditionals))

    def load_voice(self, path: str) -> ModelVoices:
        voices = ModelVoices()
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            for model, engine in self.engines.items():
                if f"{model}.error" in names:
                    code, message = archive.read(f"{model}.error").decode().split("\n", 1)
                    voices[model] = EngineError(code, message)
                elif model in names:
                    voices[model] = _loaded(engine, archive.read(model))
                else:
                    raise EngineError("voice_error", f"the stored voice has no conditionals for {model}")
        return voices

    def warmup(self) -> None:
        for engine in self.engines.values():
            engine.warmup()

    def optimization_status(self) -> dict[str, Any]:
        return {**self.info.as_dict(),
                "by_model": {model: engine.optimization_status() for model, engine in self.engines.items()}}


def _replace_voice(request: EngineRequest, voice: Any) -> EngineRequest:
    return request if voice is request.voice else replace(request, voice=voice)


def _saved_bytes(engine: Engine, conditionals: Any) -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "voice"
        engine.save_voice(conditionals, str(path))
        return path.read_bytes()


def _loaded(engine: Engine, data: bytes) -> Any:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "voice"
        path.write_bytes(data)
        return engine.load_voice(str(path))
