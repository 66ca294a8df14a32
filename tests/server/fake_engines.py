"""A tiny deterministic Engine for the tests that need to inject failures, pacing or a slow warm-up."""

from __future__ import annotations

import threading
import time
from collections.abc import Collection

import numpy as np

from app.engine.base import Engine
from app.engine.types import SAMPLE_RATE, EngineError, EngineInfo, EngineOutput, EngineRequest


class ToneEngine(Engine):
    """Speaks `seconds_per_char` of a tone per character, `step_s` of it per step (each step taking
    `step_sleep_s`). `endless` requests never finish; text containing FAIL fails with an engine error."""

    info = EngineInfo(name="tone", device="cpu", dtype="float32")
    FAIL_MARKER = "FAIL"

    def __init__(self, seconds_per_char: float = 0.05, step_s: float = 0.1, step_sleep_s: float = 0.0,
                 endless: bool = False, warmup_gate: threading.Event | None = None):
        self.seconds_per_char = seconds_per_char
        self.step_samples = int(step_s * SAMPLE_RATE)
        self.step_sleep_s = step_sleep_s
        self.endless = endless
        self.warmup_gate = warmup_gate
        self.running: dict[str, tuple[EngineRequest, int]] = {}  # id -> (request, samples produced)

    def add_request(self, request: EngineRequest) -> None:
        self.running[request.request_id] = (request, 0)

    def abort_request(self, request_id: str) -> None:
        self.running.pop(request_id, None)

    def has_unfinished(self) -> bool:
        return bool(self.running)

    def step(self, only: Collection[str] | None = None) -> list[EngineOutput]:
        time.sleep(self.step_sleep_s)
        outputs = []
        for request_id, (request, produced) in list(self.running.items()):
            if only is not None and request_id not in only:
                continue
            if self.FAIL_MARKER in request.text:
                del self.running[request_id]
                outputs.append(EngineOutput(request_id, np.zeros(0, np.float32), finished=True,
                                            error=EngineError("engine_error", "injected failure")))
                continue
            target = float("inf") if self.endless else round(len(request.text) * self.seconds_per_char * SAMPLE_RATE)
            count = int(min(self.step_samples, target - produced))
            t = (produced + np.arange(count)) / SAMPLE_RATE
            pcm = (0.2 * np.sin(2 * np.pi * 220.0 * t)).astype(np.float32)
            produced += count
            finished = produced >= target
            if finished:
                del self.running[request_id]
            else:
                self.running[request_id] = (request, produced)
            outputs.append(EngineOutput(request_id, pcm, finished=finished, speech_tokens=produced // 960))
        return outputs

    def default_voice(self) -> str:
        return "tone"

    def embed_voice(self, wav: np.ndarray, sample_rate: int) -> str:
        return "tone"

    def save_voice(self, voice: str, path: str) -> None:
        with open(path, "w") as file:
            file.write(voice)

    def load_voice(self, path: str) -> str:
        with open(path) as file:
            return file.read()

    def warmup(self) -> None:
        if self.warmup_gate is not None:
            self.warmup_gate.wait(30)
