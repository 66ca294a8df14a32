"""Pipecat's own TTS services against our server, run in the frameworks' virtualenv (.venv-frameworks: Pipecat pins
soundfile and soxr below ours). Prints one JSON object: what each turn produced.

    python drive_pipecat.py SERVICE BASE_URL SAMPLE_RATE     SERVICE: elevenlabs | elevenlabs-token |
                                                                      elevenlabs-http | openai

Turns: a reply streamed as LLM tokens, a long reply interrupted after its first audio, then a second reply.
The services run in a real pipeline (no transport, no audio device): frames are collected after the service.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from typing import Any

import aiohttp
from loguru import logger
from pipecat.frames.frames import (ErrorFrame, Frame, InterruptionFrame, LLMFullResponseEndFrame,
                                   LLMFullResponseStartFrame, LLMTextFrame, TTSAudioRawFrame, TTSStoppedFrame,
                                   TTSTextFrame)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.runner import PipelineRunner
from pipecat.pipeline.task import PipelineParams, PipelineTask
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.services.tts_service import TextAggregationMode

API_KEY = os.environ.get("CBR_API_KEY", "unused")  # the server's key, when it has one
TURN_TIMEOUT_S = 30.0
TOKEN_GAP_S = 0.02  # an LLM streaming about 50 tokens per second
LATE_WINDOW_S = 3.0  # how long audio of an interrupted reply is watched for
FIRST = "Streaming speech starts quickly. Then it keeps going until the reply ends."
LONG = " ".join(["This long reply is interrupted by the caller before it can finish."] * 6)
SECOND = "A second turn on the same service works as well."


class Recorder(FrameProcessor):
    """Records what passes (downstream after the service, or errors coming upstream to the front)."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: list[Frame] = []
        self.changed = asyncio.Event()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, (TTSAudioRawFrame, TTSStoppedFrame, TTSTextFrame, ErrorFrame, InterruptionFrame)):
            self.frames.append(frame)
            self.changed.set()
        await self.push_frame(frame, direction)

    async def wait_for(self, condition, timeout: float = TURN_TIMEOUT_S) -> bool:
        async def loop() -> None:
            while not condition():
                self.changed.clear()
                await self.changed.wait()
        try:
            await asyncio.wait_for(loop(), timeout)
            return True
        except asyncio.TimeoutError:
            return False


def build_service(kind: str, base_url: str, session: aiohttp.ClientSession):
    ws_url = base_url.replace("http://", "ws://").replace("https://", "wss://")
    if kind in ("elevenlabs", "elevenlabs-token"):
        from pipecat.services.elevenlabs.tts import ElevenLabsTTSService

        mode = TextAggregationMode.TOKEN if kind == "elevenlabs-token" else TextAggregationMode.SENTENCE
        return ElevenLabsTTSService(api_key=API_KEY, url=ws_url, text_aggregation_mode=mode,
                                    settings=ElevenLabsTTSService.Settings(voice="default"))
    if kind == "elevenlabs-http":
        from pipecat.services.elevenlabs.tts import ElevenLabsHttpTTSService

        return ElevenLabsHttpTTSService(api_key=API_KEY, base_url=base_url, aiohttp_session=session,
                                        settings=ElevenLabsHttpTTSService.Settings(voice="default"))
    if kind == "openai":
        from pipecat.services.openai.tts import OpenAITTSService

        return OpenAITTSService(api_key=API_KEY, base_url=base_url + "/v1")
    raise SystemExit(f"unknown service {kind}")


async def speak(task: PipelineTask, text: str) -> None:
    await task.queue_frame(LLMFullResponseStartFrame())
    for token in re.findall(r"\s*\S+", text):
        await task.queue_frame(LLMTextFrame(token))
        await asyncio.sleep(TOKEN_GAP_S)
    await task.queue_frame(LLMFullResponseEndFrame())


def summary(frames: list[Frame]) -> dict[str, Any]:
    audio = [f for f in frames if isinstance(f, TTSAudioRawFrame)]
    return {"audio_bytes": sum(len(f.audio) for f in audio), "sample_rates": sorted({f.sample_rate for f in audio}),
            "words": " ".join(f.text for f in frames if isinstance(f, TTSTextFrame)),
            "stopped": any(isinstance(f, TTSStoppedFrame) for f in frames),
            "errors": [str(f.error) for f in frames if isinstance(f, ErrorFrame)]}


async def run_turn(task: PipelineTask, out: Recorder, errors: Recorder, text: str) -> dict[str, Any]:
    start, error_start = len(out.frames), len(errors.frames)
    await speak(task, text)
    finished = await out.wait_for(lambda: any(isinstance(f, TTSStoppedFrame) for f in out.frames[start:]))
    turn = summary(out.frames[start:] + errors.frames[error_start:])
    turn.update(finished=finished, text=text)
    return turn


async def run_interrupted(task: PipelineTask, out: Recorder, errors: Recorder) -> dict[str, Any]:
    start = len(out.frames)
    speaking = asyncio.create_task(speak(task, LONG))
    heard = await out.wait_for(lambda: any(isinstance(f, TTSAudioRawFrame) for f in out.frames[start:]))
    speaking.cancel()  # the caller speaks: the LLM's reply stops, and the pipeline is interrupted
    await task.queue_frame(InterruptionFrame())
    await out.wait_for(lambda: any(isinstance(f, InterruptionFrame) for f in out.frames[start:]))
    interrupted_at = next(i for i in range(start, len(out.frames)) if isinstance(out.frames[i], InterruptionFrame))
    context_id = next(f.context_id for f in out.frames[start:] if isinstance(f, TTSAudioRawFrame))
    await asyncio.sleep(LATE_WINDOW_S)  # whatever audio of the interrupted reply still arrives shows up here
    late = [f for f in out.frames[interrupted_at:] if isinstance(f, TTSAudioRawFrame) and f.context_id == context_id]
    turn = summary(out.frames[start:interrupted_at] + errors.frames)
    turn.update(heard=heard, late_audio_bytes=sum(len(f.audio) for f in late))
    return turn


async def main(kind: str, base_url: str, sample_rate: int) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session:
        errors, out = Recorder(), Recorder()
        task = PipelineTask(Pipeline([errors, build_service(kind, base_url, session), out]),
                            params=PipelineParams(audio_out_sample_rate=sample_rate))
        runner = PipelineRunner(handle_sigint=False)
        running = asyncio.create_task(runner.run(task))
        try:
            first = await run_turn(task, out, errors, FIRST)
            interrupted = await run_interrupted(task, out, errors)
            second = await run_turn(task, out, errors, SECOND)
        finally:
            await task.cancel()
            await asyncio.wait_for(running, 10)
    return {"first": first, "interrupted": interrupted, "second": second}


if __name__ == "__main__":
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))))
