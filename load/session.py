"""One simulated user: a WebSocket connection that streams LLM replies token by token and listens to them."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from app.audio.encode import BYTES_PER_SAMPLE
from app.server.native_protocol import split_frame
from load.metrics import ReplyRecord
from load.replies import REPLY_POOL, TokenTiming, tokenize, truncate_at_word

CONNECT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class SessionConfig:
    url: str
    api_key: str | None = None
    timing: TokenTiming = TokenTiming()
    replies_per_session: int | None = 3  # used when step_seconds is None
    step_seconds: float | None = None  # keep starting replies until this much of the step has passed
    reply_chars: int = 0  # cap each reply (0: whole paragraphs)
    think_s: float = 0.5  # mean pause between a reply's `done` and the next reply
    stagger_s: float = 1.0  # sessions start spread over this window, not all in the same instant
    reply_timeout_s: float = 60.0
    voice: str = "default"
    chunk_size: int | None = None
    encoding: str = "pcm_s16le"
    sample_rate: int = 24_000


class SessionRunner:
    """Speaks replies one after another on one connection; each reply is its own context."""

    def __init__(self, index: int, config: SessionConfig, rng: random.Random):
        self.index = index
        self.config = config
        self.records: list[ReplyRecord] = []
        self.errors: list[str] = []  # failures outside any reply: connecting, a close between replies
        self._rng = rng
        self._by_context: dict[str, ReplyRecord] = {}
        self._by_channel: dict[int, ReplyRecord] = {}
        self._finished: dict[str, asyncio.Event] = {}
        self._closing = False
        self._connection_lost = False

    async def run(self) -> None:
        await asyncio.sleep(self._rng.uniform(0, self.config.stagger_s))
        started_at = time.monotonic()
        try:
            async with connect(self.config.url, **self._connect_options()) as ws:
                await self._expect_ready(ws)
                reader = asyncio.create_task(self._read(ws))
                try:
                    await self._speak_replies(ws, started_at)
                finally:
                    self._closing = True
                    reader.cancel()
        except InvalidStatus as exc:
            self.errors.append(f"http_{exc.response.status_code}")
        except (OSError, TimeoutError, ConnectionClosed):
            self.errors.append("connect_failed")

    def _connect_options(self) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.config.api_key}"} if self.config.api_key else None
        # Audio does not deflate well, and compressing it would cost both ends CPU the test should not spend.
        return {"additional_headers": headers, "compression": None, "max_size": 2**24,
                "open_timeout": CONNECT_TIMEOUT_S, "proxy": None}

    async def _expect_ready(self, ws: ClientConnection) -> None:
        hello = _parse_event(await asyncio.wait_for(ws.recv(), CONNECT_TIMEOUT_S))
        if hello is None or hello.get("type") != "ready":
            raise ConnectionError(f"expected a ready event, got {hello!r}")

    async def _speak_replies(self, ws: ClientConnection, started_at: float) -> None:
        count = 0
        while self._wants_another_reply(count, started_at):
            if count:
                await asyncio.sleep(self._rng.uniform(0, 2 * self.config.think_s))
            record = await self._speak_reply(ws, f"s{self.index}-r{count}")
            count += 1
            if self._connection_lost or "timeout" in record.errors:  # the connection's state is unknown
                return

    def _wants_another_reply(self, count: int, started_at: float) -> bool:
        if self.config.step_seconds is not None:
            return time.monotonic() - started_at < self.config.step_seconds
        return count < (self.config.replies_per_session or 0)

    async def _speak_reply(self, ws: ClientConnection, context_id: str) -> ReplyRecord:
        text = truncate_at_word(self._rng.choice(REPLY_POOL), self.config.reply_chars)
        record = ReplyRecord(session=self.index, context_id=context_id, text_chars=len(text))
        finished = asyncio.Event()
        self.records.append(record)
        self._by_context[context_id] = record
        self._finished[context_id] = finished
        try:
            await _send(ws, self._start_message(context_id))
            await self._stream_tokens(ws, record, text)
            if not record.finished:
                record.end_sent_at = time.monotonic()
                await _send(ws, {"type": "end", "context_id": context_id})
            await asyncio.wait_for(finished.wait(), self.config.reply_timeout_s)
        except TimeoutError:
            record.errors.append("timeout")
        except ConnectionClosed:
            self._on_connection_lost(ws.close_code)
        return record

    def _start_message(self, context_id: str) -> dict[str, Any]:
        message: dict[str, Any] = {
            "type": "start",
            "context_id": context_id,
            "voice": self.config.voice,
            "output": {"encoding": self.config.encoding, "sample_rate": self.config.sample_rate},
        }
        if self.config.chunk_size is not None:
            message["chunking"] = {"chunk_size": self.config.chunk_size}
        return message

    async def _stream_tokens(self, ws: ClientConnection, record: ReplyRecord, text: str) -> None:
        """Send tokens on an absolute schedule, so event-loop delays do not slow the simulated LLM down."""
        due = time.monotonic()
        for token in tokenize(text):
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if record.finished:  # the server failed this context; a real client would stop feeding it
                return
            record.on_text_sent(token, time.monotonic())
            await _send(ws, {"type": "text", "context_id": record.context_id, "text": token})
            due += self.config.timing.next_gap(self._rng)

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for message in ws:
                now = time.monotonic()
                if isinstance(message, bytes):
                    self._on_audio(message, now)
                elif (event := _parse_event(message)) is not None:
                    self._on_event(event, now)
                else:
                    self.errors.append("bad_event")
        except ConnectionClosed:
            pass
        if not self._closing:
            self._on_connection_lost(ws.close_code)

    def _on_audio(self, frame: bytes, now: float) -> None:
        channel, payload = split_frame(frame)
        record = self._by_channel.get(channel)
        if record is None:
            self.errors.append("audio_on_unknown_channel")
            return
        record.on_audio(len(payload), now)

    def _on_event(self, event: dict[str, Any], now: float) -> None:
        kind = event.get("type")
        record = self._by_context.get(event.get("context_id") or "")
        if record is None:
            if kind == "error":
                self.errors.append(str(event.get("code")))
            return
        if kind == "started":
            self._by_channel[event["channel"]] = record
            record.bytes_per_s = BYTES_PER_SAMPLE[event["encoding"]] * event["sample_rate"]
        elif kind == "chunk_started" and event.get("chunk") == 0:
            record.on_first_chunk_started(event.get("text", ""), now)
        elif kind == "done":
            record.server_stats = event.get("stats") or {}
            record.done_at = now
            if record.audio_s <= 0:
                record.errors.append("no_audio")
            self._finished[record.context_id].set()
        elif kind in ("error", "cancelled"):  # we never cancel, so a cancellation is the server's doing
            record.errors.append(str(event.get("code", kind)))
            self._finished[record.context_id].set()

    def _on_connection_lost(self, close_code: int | None) -> None:
        """Charge an unexpected close once: to the replies it cut off, else to the session."""
        if self._connection_lost:
            return
        self._connection_lost = True
        reason = f"closed_{close_code}"
        open_replies = [r for r in self.records if not r.finished]
        for record in open_replies:
            record.errors.append(reason)
            self._finished[record.context_id].set()
        if not open_replies:
            self.errors.append(reason)


def _parse_event(message: str | bytes) -> dict[str, Any] | None:
    try:
        event = orjson.loads(message)
    except orjson.JSONDecodeError:
        return None
    return event if isinstance(event, dict) else None


async def _send(ws: ClientConnection, message: dict[str, Any]) -> None:
    await ws.send(orjson.dumps(message).decode())
