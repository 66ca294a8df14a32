"""Stream a paragraph to a running chatterbox-realtime server token by token, as an LLM would, and save the
spoken reply as a WAV file, printing the server's stats events on the way.

    chatterbox-realtime serve &                      # or: python -m app.cli serve
    python examples/stream_client.py --out reply.wav

Needs only `websockets` and `numpy`. See docs/protocol.md for the protocol.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import struct
import sys
import time
import wave

import numpy as np
from websockets.asyncio.client import connect

PARAGRAPH = ("Thanks for calling! I looked up your order, and it shipped this morning. It should arrive on "
             "Thursday, between nine and noon. If nobody is home, the driver will leave it at the front desk. "
             "Is there anything else I can help you with today?")
CONTEXT = "reply"


def llm_tokens(text: str) -> list[str]:
    """Pieces shaped like LLM tokens: a word with its leading space, long words split in 4-letter parts."""
    return [part for word in re.findall(r"\s*\S+", text) for part in re.findall(r".{1,4}", word, flags=re.S)]


def to_wav(audio: bytes, encoding: str, sample_rate: int, path: str) -> float:
    """Write the received audio as a WAV file; returns its duration in seconds."""
    if encoding == "pcm_f32le":
        samples = np.frombuffer(audio, dtype="<f4")
        header = (b"RIFF" + struct.pack("<I", 36 + len(audio)) + b"WAVE"
                  + b"fmt " + struct.pack("<IHHIIHH", 16, 3, 1, sample_rate, sample_rate * 4, 4, 32)
                  + b"data" + struct.pack("<I", len(audio)))
        with open(path, "wb") as file:
            file.write(header + audio)
        return samples.size / sample_rate
    pcm = mulaw_to_s16(audio) if encoding == "mulaw" else np.frombuffer(audio, dtype="<i2")
    with wave.open(path, "wb") as file:
        file.setnchannels(1)
        file.setsampwidth(2)
        file.setframerate(sample_rate)
        file.writeframes(pcm.astype("<i2").tobytes())
    return pcm.size / sample_rate


def mulaw_to_s16(codes: bytes) -> np.ndarray:
    """G.711 mu-law decoding."""
    u = ~np.frombuffer(codes, dtype=np.uint8).astype(np.int32) & 0xFF
    magnitude = (((u & 0x0F) << 3) + 0x84) << ((u >> 4) & 0x07)
    return np.where(u & 0x80, 0x84 - magnitude, magnitude - 0x84).astype(np.int16)


def describe(stats: dict) -> str:
    return "  ".join(f"{key}={value}" for key, value in stats.items())


async def send_tokens(ws, tokens: list[str], delay_s: float, clock: dict[str, float]) -> None:
    for token in tokens:
        clock.setdefault("first_text", time.monotonic())
        await ws.send(json.dumps({"type": "text", "context_id": CONTEXT, "text": token}))
        await asyncio.sleep(delay_s)
    await ws.send(json.dumps({"type": "end", "context_id": CONTEXT}))


async def run(args: argparse.Namespace) -> int:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    start = {"type": "start", "context_id": CONTEXT, "voice": args.voice,
             "output": {"encoding": args.encoding, "sample_rate": args.sample_rate}}
    if args.chunk_size:
        start["chunking"] = {"chunk_size": args.chunk_size}
    text = open(args.file, encoding="utf-8").read() if args.file else args.text
    audio = bytearray()
    clock: dict[str, float] = {}
    async with connect(args.url, additional_headers=headers, max_size=None, compression=None) as ws:
        ready = json.loads(await ws.recv())
        print(f"connected: engine {ready['engine'].get('engine')} on {ready['engine'].get('device')}")
        await ws.send(json.dumps(start))
        sender = None
        async for message in ws:
            if isinstance(message, bytes):
                clock.setdefault("first_audio", time.monotonic())
                audio += message[4:]  # after the uint32 channel header (one context: one channel)
                continue
            event = json.loads(message)
            kind = event["type"]
            if kind == "started":
                sender = asyncio.create_task(send_tokens(ws, llm_tokens(text), args.token_delay, clock))
            elif kind == "chunk_started":
                print(f"chunk {event['chunk']}: {event['text']!r}")
            elif kind == "chunk_done":
                print(f"  chunk {event['chunk']} done: {describe(event['stats'])}")
            elif kind == "error":
                print(f"error {event['code']}: {event['message']}", file=sys.stderr)
                return 1
            elif kind == "done":
                print(f"done: {describe(event['stats'])}")
                break
        if sender is not None:
            await sender
    seconds = to_wav(bytes(audio), args.encoding, args.sample_rate, args.out)
    if "first_audio" in clock:
        print(f"client-side time to first audio: {(clock['first_audio'] - clock['first_text']) * 1000:.0f} ms")
    print(f"wrote {seconds:.2f} s of audio to {args.out}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="ws://127.0.0.1:8000/v1/stream")
    parser.add_argument("--text", default=PARAGRAPH, help="what to say (default: a customer-service reply)")
    parser.add_argument("--file", help="read the text from this file instead")
    parser.add_argument("--voice", default="default")
    parser.add_argument("--encoding", default="pcm_s16le", choices=("pcm_s16le", "pcm_f32le", "mulaw"))
    parser.add_argument("--sample-rate", type=int, default=24000)
    parser.add_argument("--chunk-size", type=int, help="text-chunk budget in tokens (25-200)")
    parser.add_argument("--token-delay", type=float, default=0.02, help="seconds between tokens (an LLM's pace)")
    parser.add_argument("--api-key", default="")
    parser.add_argument("--out", default="reply.wav")
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
