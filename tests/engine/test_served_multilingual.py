"""The multilingual model served by a real server (tiny synthetic checkpoint, CPU): a context in one language of
each script family streams audio, through the language's own text preparation and the alignment-guarded
decode; a language the model does not speak is refused before any synthesis."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from harness import metric_samples
from stream_session import open_session
from test_browser import CHROMIUM, run_node

SAMPLES = {  # one language per script family
    "en": "Hello there, how are you?", "ru": "Привет, как дела?", "el": "Γεια σου, τι κάνεις;",
    "ar": "مرحبا، كيف حالك؟", "he": "שלום, מה שלומך?", "hi": "नमस्ते, आप कैसे हैं?", "zh": "你好，你好吗？",
    "ja": "こんにちは、お元気ですか？", "ko": "안녕하세요, 잘 지내세요?",
}


@pytest.fixture(scope="module")
def server(tiny_mtl_checkpoint, tmp_path_factory):
    from harness import make_settings, run_server

    settings = make_settings(tmp_path_factory.mktemp("mtl"), engine="chatterbox", models="multilingual",
                             multilingual_checkpoint=str(tiny_mtl_checkpoint), synthetic_tokens_per_char=0.5,
                             max_batch_size=2, cfm_steps=2, enable_optimizations=False, device="cpu")
    with run_server(settings) as running:
        yield running


@pytest.mark.parametrize("language", list(SAMPLES))
async def test_each_script_family_streams(server, language):
    async with open_session(server.ws_url) as session:
        done = await session.speak("m", SAMPLES[language], language=language)
        started = session.events("chunk_started", "m")
    assert done["stats"]["audio_s"] > 0  # a fixed few tokens per character: short, but audio
    assert "".join(event["text"] for event in started) == SAMPLES[language]  # the caller's own script


def test_status_says_which_language_preparation_runs_and_what_is_skipped(server):
    prepared = server.get("/optimization-status").json()["engine"]["by_model"]["multilingual"]["language_preparation"]
    assert set(prepared) == {"ja", "zh", "he", "ru"}
    for step in prepared.values():
        assert step["active"] == (step["skipped_because"] is None)
    assert prepared["ja"]["active"]  # pykakasi is pinned


def test_unsupported_language_is_refused_before_synthesis(server):
    before = metric_samples(server).get("chatterbox_chunks_total{model=multilingual}", 0)
    response = server.post("/synthesize", json={"text": "Hola.", "language": "xx"})
    assert response.status_code == 400 and response.json()["error"]["code"] == "unsupported_language"
    assert metric_samples(server).get("chatterbox_chunks_total{model=multilingual}", 0) == before


def bare(words: list[str]) -> list[str]:
    return [word.strip(".?!,।").lower() for word in words]


@pytest.mark.parametrize("language", ["en", "ru", "hi"])
async def test_alignment_events_time_every_word_in_order(server, language):
    """Opt-in `alignment`: per chunk, measured times for each word spoken, in order, monotone, inside the chunk's
    audio; none without the opt-in."""
    async with open_session(server.ws_url) as session:
        channel = await session.start("a", language=language, alignment=True)
        await session.send("text", context_id="a", text=SAMPLES[language])
        await session.send("end", context_id="a")
        done = await session.until("done", "a")
        aligned = session.events("alignment", "a")
        chunks = session.events("chunk_done", "a")
        await session.speak("b", SAMPLES[language], language=language)
        assert session.events("alignment", "b") == []
    assert len(aligned) == len(chunks) >= 1 and done["stats"]["audio_s"] > 0
    spoken = [word["word"] for event in aligned for word in event["words"]]
    assert bare(spoken) == bare(SAMPLES[language].split())  # every word, in order
    for event in aligned:
        starts = [word["start_ms"] for word in event["words"]]
        assert event["measured"] is True and starts == sorted(starts) and starts[0] == 0
        assert all(word["start_ms"] <= word["end_ms"] for word in event["words"])
    assert len(session.audio(channel)) > 0


async def test_elevenlabs_transcripts_follow_the_measured_word_starts(server):
    """ElevenLabs messages on the multilingual model: the caller's characters exactly, both transcripts in every
    message with audio, laid out by the measured word starts."""
    from urllib.parse import urlencode

    from websockets.asyncio.client import connect

    text = SAMPLES["ru"]
    query = urlencode({"model_id": "eleven_multilingual_v2", "language_code": "ru", "output_format": "pcm_16000"})
    url = f"ws://127.0.0.1:{server.settings.port}/v1/text-to-speech/default/stream-input?{query}"
    messages = []
    async with connect(url, max_size=None) as ws:
        for piece in (" ", text + " ", ""):
            await ws.send(json.dumps({"text": piece}))
        async for message in ws:
            messages.append(json.loads(message))
    aligned = [m for m in messages if m.get("alignment")]
    assert "".join(c for m in aligned for c in m["alignment"]["chars"]) == " " + text + " "
    for message in messages:
        if message.get("audio"):
            assert (message["alignment"] is None) == (message["normalizedAlignment"] is None)


@pytest.mark.skipif(shutil.which("node") is None or not Path(CHROMIUM).exists(), reason="needs node and Chromium")
def test_demo_page_shows_measured_word_times_on_its_timeline(server):
    """The demo page asks for word times; on the multilingual model its timeline marks each word's start."""
    text = SAMPLES["ru"]
    result = run_node("demo.spec.mjs", "--url", server.base_url + "/", "--chromium", CHROMIUM, "--timeout", "60000",
                      "--words-text", text, "--words-language", "ru")
    assert result.returncode == 0, result.stderr[-4000:]
    shown = json.loads(result.stdout.strip().splitlines()[-1])
    words = [entry.rsplit(" ", 1)[0] for line in shown["words"] for entry in line.split(" · ")]
    assert bare(words) == bare(text.split()) and shown["ticks"] == len(words)
