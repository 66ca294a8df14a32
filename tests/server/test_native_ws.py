"""/v1/stream end to end: real uvicorn, real `websockets` client, the espeak engine."""

from __future__ import annotations

import asyncio
import re

import pytest

from app.audio.encode import SAMPLE_RATES, STREAM_ENCODINGS
from stream_session import Frame, open_session

PARAGRAPH = ("Streaming speech should start quickly. The server splits a reply into chunks, speaks each one as "
             "soon as it is ready, and keeps the listener's buffer full, so nobody hears a gap between "
             "sentences. When the reply ends, the last words are spoken too.")
ESPEAK_WORDS_PER_SECOND = 175 / 60  # espeak-ng's default rate
BYTES_PER_SAMPLE = {"pcm_s16le": 2, "pcm_f32le": 4, "mulaw": 1, "alaw": 1}
# Load-test knob: every chunk is exactly ceil(len(text) x this) speech tokens; espeak pads or cuts to them.
ONE_SECOND_PER_HELLO = 4.1  # "Hello." -> 25 tokens x 40 ms


def tokens_of(text: str) -> list[str]:
    """LLM-like pieces that split words anywhere: runs of 1-4 characters."""
    return re.findall(r".{1,4}", text, flags=re.S)


def joined(texts: list[str]) -> str:
    return "".join(texts).strip()




async def test_chunk_started_texts_are_the_callers_text_character_for_character(server_factory):
    text = "It's 3:30 p.m. --help https://x.io Wait..."
    server = server_factory()
    async with open_session(server.ws_url) as session:
        await session.start("t")
        for token in tokens_of(text):
            await session.send("text", context_id="t", text=token)
        await session.send("end", context_id="t")
        await session.until("done", "t")
    assert "".join(event["text"] for event in session.events("chunk_started", "t")) == text


async def test_paragraph_streamed_token_by_token_comes_back_as_plausible_audio(server_factory):
    server = server_factory()
    async with open_session(server.ws_url) as session:
        channel = await session.start("p")
        for token in tokens_of(PARAGRAPH):
            await session.send("text", context_id="p", text=token)
            await asyncio.sleep(0.005)
        await session.send("end", context_id="p")
        done = await session.until("done", "p")

    seconds = len(session.audio(channel)) / 2 / 24000
    expected = len(PARAGRAPH.split()) / ESPEAK_WORDS_PER_SECOND
    assert 0.6 * expected < seconds < 1.6 * expected
    started = session.events("chunk_started", "p")
    assert len(started) >= 2  # a paragraph is spoken in several chunks
    assert "".join(event["text"] for event in started) == PARAGRAPH
    assert [e["chunk"] for e in started] == [e["chunk"] for e in session.events("chunk_done", "p")]
    stats = done["stats"]
    assert stats["audio_s"] == pytest.approx(seconds, abs=0.01)
    assert stats["chunks"] == len(started)
    assert 0 < stats["ttfa_from_release_ms"] <= stats["ttfa_ms"]
    assert 0 < stats["rtf"] < 1  # espeak is far faster than real time
    for event in session.events("chunk_done", "p"):
        chunk = event["stats"]
        assert chunk["audio_s"] > 0 and chunk["ttfa_ms"] >= 0 and chunk["synthesis_ms"] >= 0
        assert chunk["rtf"] == pytest.approx(chunk["synthesis_ms"] / 1000 / chunk["audio_s"], rel=0.05, abs=2e-4)


async def test_every_encoding_and_rate_gives_the_right_bytes_per_second(server_factory):
    formats = [(encoding, rate) for encoding in STREAM_ENCODINGS for rate in SAMPLE_RATES]
    server = server_factory(max_contexts_per_connection=len(formats), synthetic_tokens_per_char=ONE_SECOND_PER_HELLO)
    async with open_session(server.ws_url) as session:
        channels = {}
        for encoding, rate in formats:
            context_id = f"{encoding}-{rate}"
            channels[context_id] = await session.start(context_id, output={"encoding": encoding,
                                                                           "sample_rate": rate})
            await session.send("text", context_id=context_id, text="Hello.")
            await session.send("end", context_id=context_id)
        await session.until_all("done", list(channels))
    for encoding, rate in formats:
        payload = session.audio(channels[f"{encoding}-{rate}"])
        width = BYTES_PER_SAMPLE[encoding]
        assert len(payload) % width == 0
        assert abs(len(payload) // width - rate) <= 2, (encoding, rate, len(payload))


async def test_flush_speaks_buffered_text_without_waiting_for_a_boundary(server_factory):
    server = server_factory()
    async with open_session(server.ws_url) as session:
        channel = await session.start("f")
        await session.send("text", context_id="f", text="Hello there my")
        await session.send("flush", context_id="f")
        await session.until("flushed", "f")
        assert [e["text"] for e in session.events("chunk_started", "f")] == ["Hello there my"]
        assert session.events("chunk_done", "f")  # the chunk's audio was all sent before `flushed`
        heard = len(session.audio(channel))
        assert heard > 0
        await session.send("text", context_id="f", text=" friend.")
        await session.send("end", context_id="f")
        await session.until("done", "f")
    assert len(session.audio(channel)) > heard


async def test_cancel_mid_stream_stops_audio_and_frees_the_engine(server_factory):
    server = server_factory(synthetic_tokens_per_char=40)  # 1760 tokens: 70 s of audio
    worker = server.app.state.worker
    async with open_session(server.ws_url) as session:
        channel = await session.start("c", output={"encoding": "pcm_f32le", "sample_rate": 48000})
        await session.send("text", context_id="c", text="This reply is interrupted. It goes on and on.")
        await session.send("end", context_id="c")
        await session.first_audio(channel)
        await session.send("cancel", context_id="c")
        cancelled = await session.until("cancelled", "c")
        # Anything still in flight would arrive before the reply to a later request on the same socket.
        await session.speak("after", "Still here.")
    assert not session.frames_after(cancelled, channel)
    assert len(session.audio(channel)) < 70 * 48000 * 4
    assert not session.events("done", "c")
    assert worker.active_requests == 0


async def test_two_interleaved_contexts_keep_their_own_channels_and_text(server_factory):
    texts = {"a": "The first voice talks about the weather today.",
             "b": "Meanwhile the second one reads the evening news."}
    server = server_factory()
    async with open_session(server.ws_url) as session:
        channels = {context_id: await session.start(context_id) for context_id in texts}
        pieces = {context_id: tokens_of(text) for context_id, text in texts.items()}
        for step in range(max(map(len, pieces.values()))):
            for context_id, tokens in pieces.items():
                if step < len(tokens):
                    await session.send("text", context_id=context_id, text=tokens[step])
        for context_id in texts:
            await session.send("end", context_id=context_id)
        await session.until_all("done", list(texts))
    assert channels["a"] != channels["b"]
    for context_id, text in texts.items():
        started = session.events("chunk_started", context_id)
        assert "".join(e["text"] for e in started) == text
        assert len(session.audio(channels[context_id])) / 2 / 24000 > 1.0


async def test_twenty_concurrent_connections_all_get_audio(server_factory):
    server = server_factory()

    async def one_client(number: int) -> float:
        async with open_session(server.ws_url) as session:
            done = await session.speak("c", f"Client number {number} says hello.")
            assert len(session.audio(1)) > 0
            return done["stats"]["audio_s"]

    durations = await asyncio.gather(*(one_client(n) for n in range(20)))
    assert all(seconds > 0.5 for seconds in durations)


async def test_text_to_an_unknown_context_opens_it_with_defaults(server_factory):
    server = server_factory()
    async with open_session(server.ws_url) as session:
        await session.send("text", text="Implicit start.")
        started = await session.until("started", "default")
        assert (started["encoding"], started["sample_rate"]) == ("pcm_s16le", 24000)
        await session.send("end")
        await session.until("done", "default")
    frames = [item for item in session.log if isinstance(item, Frame)]
    assert frames and {frame.channel for frame in frames} == {started["channel"]}


@pytest.mark.parametrize("whole", [True, False], ids=["default", "control-without-deadline-floor"])
async def test_a_sentence_before_a_tool_call_is_one_chunk_at_three_tokens_a_second(server_factory, whole):
    """The everyday agent pattern: "Let me check that for you." then silence while a tool runs. Fed at an LLM's
    slow 3 tokens a second, it is spoken whole once the pause shows the sentence is over (the sentence hold),
    not in pieces by the chunker's deadline (the control lets the deadline cut anywhere: fragments)."""
    server = server_factory() if whole else server_factory(deadline_min_chars=0)
    sentence, after = "Let me check that for you.", " I found two flights to Boston."
    async with open_session(server.ws_url) as session:
        await session.start("t")
        for token in tokens_of(sentence):
            await session.send("text", context_id="t", text=token)
            await asyncio.sleep(1 / 3)
        await asyncio.sleep(2.0)  # the tool call
        first = await session.until("chunk_started", "t")
        for token in tokens_of(after):
            await session.send("text", context_id="t", text=token)
        await session.send("end", context_id="t")
        await session.until("done", "t")
    started = session.events("chunk_started", "t")
    assert "".join(event["text"] for event in started) == sentence + after
    assert (first["text"] == sentence) == whole, started
