"""LiveKit Agents' TTS plugins against our server, run in the frameworks' virtualenv (.venv-frameworks). Prints one
JSON object: what each turn produced.

    python drive_livekit.py SERVICE BASE_URL      SERVICE: elevenlabs-stream | elevenlabs-synthesize | openai

Turns: a reply (pushed as LLM tokens for `stream()`, whole for `synthesize()`), a long reply closed after its
first audio (an interruption: LiveKit closes the stream), then a second reply on the same TTS object. No room and
no audio device: the plugins are driven through their own stream/synthesize APIs.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from typing import Any

import aiohttp
from livekit.agents import APIConnectOptions

API_KEY = os.environ.get("CBR_API_KEY", "unused")  # the server's key, when it has one
TURN_TIMEOUT_S = 30.0
TOKEN_GAP_S = 0.02  # an LLM streaming about 50 tokens per second
FIRST = "Streaming speech starts quickly. Then it keeps going until the reply ends."
LONG = " ".join(["This long reply is interrupted by the caller before it can finish."] * 6)
SECOND = "A second turn on the same service works as well."
NO_RETRY = APIConnectOptions(max_retry=0, timeout=10)  # a failure shows as itself, not after retries


def build_tts(kind: str, base_url: str, session: aiohttp.ClientSession):
    if kind.startswith("elevenlabs"):
        from livekit.plugins import elevenlabs

        return elevenlabs.TTS(api_key=API_KEY, base_url=base_url + "/v1", voice_id="default", http_session=session)
    if kind == "openai":
        from livekit.plugins import openai

        return openai.TTS(api_key=API_KEY, base_url=base_url + "/v1")
    raise SystemExit(f"unknown service {kind}")


def open_reply(tts, kind: str, text: str):
    """A stream of SynthesizedAudio for one reply: stream() fed token by token, or synthesize()."""
    if kind != "elevenlabs-stream":
        return tts.synthesize(text, conn_options=NO_RETRY)
    stream = tts.stream(conn_options=NO_RETRY)

    async def feed() -> None:
        for token in re.findall(r"\s*\S+", text):
            stream.push_text(token)
            await asyncio.sleep(TOKEN_GAP_S)
        stream.end_input()

    stream.feeder = asyncio.create_task(feed())  # kept alive with the stream
    return stream


async def run_turn(tts, kind: str, text: str) -> dict[str, Any]:
    turn: dict[str, Any] = {"audio_bytes": 0, "sample_rates": [], "error": None, "text": text}
    reply = open_reply(tts, kind, text)
    try:
        async with asyncio.timeout(TURN_TIMEOUT_S):
            async for audio in reply:
                turn["audio_bytes"] += len(audio.frame.data.tobytes())
                turn["sample_rates"] = sorted({*turn["sample_rates"], audio.frame.sample_rate})
    except Exception as exc:  # the turn's failure is the result
        turn["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        await reply.aclose()
    return turn


async def run_interrupted(tts, kind: str) -> dict[str, Any]:
    turn: dict[str, Any] = {"heard": False, "error": None}
    reply = open_reply(tts, kind, LONG)
    try:
        async with asyncio.timeout(TURN_TIMEOUT_S):
            async for _ in reply:
                turn["heard"] = True
                break
    except Exception as exc:
        turn["error"] = f"{type(exc).__name__}: {exc}"
    await reply.aclose()  # what LiveKit's agent does when the user interrupts
    return turn


async def main(kind: str, base_url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session:
        tts = build_tts(kind, base_url, session)
        try:
            return {"sample_rate": tts.sample_rate, "first": await run_turn(tts, kind, FIRST),
                    "interrupted": await run_interrupted(tts, kind), "second": await run_turn(tts, kind, SECOND)}
        finally:
            await tts.aclose()


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2]))))
