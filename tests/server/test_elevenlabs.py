"""ElevenLabs-compatible `stream-input` and `multi-stream-input` end to end: real uvicorn, the espeak engine,
a client written from their published protocol (plain `websockets`), and their own Python SDK."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import shutil
from typing import Any, AsyncIterator, Callable
from urllib.parse import urlencode

import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from app.audio.encode import StreamEncoder, decode_audio
from app.engine.types import GenerationSettings
from app.server.elevenlabs import ElevenLabsError, generation_settings
from app.text.normalize import normalize_stream
from audio_checks import mulaw_expand, sine, sound_file
from fake_engines import ToneEngine
from harness import (Deadline, RunningServer, make_settings, module_server, run_server,
                     self_signed_certificate)

TEXT = ("Streaming speech should start quickly. The server splits a reply into chunks, and it speaks each one "
        "as soon as it is ready.")
ESPEAK_CHARS_PER_SECOND = 14.0  # espeak-ng at its default 175 words per minute, roughly
RECV_TIMEOUT_S = 20.0
MAX_CONTEXTS = 2
API_KEY = "secret-key"
FINAL_SINGLE = {"audio": None, "isFinal": True, "normalizedAlignment": None, "alignment": None}


def pieces(text: str) -> list[str]:
    """Their clients send words, each ending with a space."""
    return [word + " " for word in text.split()]


# ---- a client written from their protocol -------------------------------------------------------------------

class Socket:
    """Records every server message in order, and the close code."""

    def __init__(self, ws: ClientConnection):
        self.ws = ws
        self.messages: list[dict[str, Any]] = []
        self.close_code: int | None = None

    async def send(self, **fields: Any) -> None:
        with contextlib.suppress(ConnectionClosed):  # the server may close first; `recv` reports it
            await self.ws.send(json.dumps(fields))

    async def recv(self, timeout: float = RECV_TIMEOUT_S) -> dict[str, Any] | None:
        """The next message; None once the server has closed the socket."""
        try:
            raw = await asyncio.wait_for(self.ws.recv(), timeout)
        except ConnectionClosed:
            self.close_code = self.ws.close_code
            return None
        message = json.loads(raw)
        self.messages.append(message)
        return message

    async def until(self, done: Callable[["Socket"], bool], timeout: float = RECV_TIMEOUT_S) -> None:
        deadline = Deadline(timeout)
        while not done(self):
            if await self.recv(deadline.left()) is None:
                raise AssertionError(f"closed with {self.close_code} before the condition held: {self.messages}")

    async def until_closed(self, timeout: float = RECV_TIMEOUT_S) -> int | None:
        deadline = Deadline(timeout)
        while await self.recv(deadline.left()) is not None:
            pass
        return self.close_code

    def of(self, context_id: str | None) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("contextId") == context_id]

    def audio(self, context_id: str | None = None) -> bytes:
        return b"".join(base64.b64decode(m["audio"]) for m in self.of(context_id) if m.get("audio"))

    def chars(self, context_id: str | None = None, field: str = "alignment") -> str:
        """The transcript: `alignment` (the caller's characters) or `normalizedAlignment`."""
        return "".join("".join(m[field]["chars"]) for m in self.of(context_id) if m.get(field))

    def final(self, context_id: str | None = None) -> bool:
        return any(m.get("isFinal") for m in self.of(context_id))


def socket_url(server: RunningServer, kind: str, voice: str = "default", **query: Any) -> str:
    url = f"ws://127.0.0.1:{server.settings.port}/v1/text-to-speech/{voice}/{kind}"
    return f"{url}?{urlencode(query)}" if query else url


@contextlib.asynccontextmanager
async def open_socket(server: RunningServer, kind: str = "stream-input", voice: str = "default",
                      headers: dict[str, str] | None = None, **query: Any) -> AsyncIterator[Socket]:
    async with connect(socket_url(server, kind, voice, **query), additional_headers=headers, max_size=None,
                       open_timeout=10) as ws:
        yield Socket(ws)


async def speak(server: RunningServer, text: str, voice: str = "default", **query: Any) -> Socket:
    """One whole reply on a single-stream socket: init, the text, end of input; read until the close."""
    async with open_socket(server, voice=voice, **query) as socket:
        await socket.send(text=" ")
        await socket.send(text=text + " ")
        await socket.send(text="")
        assert await socket.until_closed() == 1000
    assert socket.messages[-1] == FINAL_SINGLE
    return socket


def spoken(text: str) -> str:
    return normalize_stream(text).strip()


def assert_well_formed_alignment(message: dict[str, Any], bytes_per_second: int) -> None:
    """Both transcripts (the caller's characters, the normalized ones) span the message's audio."""
    assert (message["alignment"] is None) == (message["normalizedAlignment"] is None)
    for alignment in (message["alignment"], message["normalizedAlignment"]):
        if alignment is None:
            continue
        starts, durations = alignment["charStartTimesMs"], alignment["charDurationsMs"]
        assert len(alignment["chars"]) == len(starts) == len(durations) > 0
        assert starts[0] == 0 and starts == sorted(starts) and min(durations) >= 0
        message_ms = len(base64.b64decode(message["audio"])) / bytes_per_second * 1000
        assert starts[-1] + durations[-1] == pytest.approx(message_ms, abs=1)


def closing_error(socket: Socket) -> dict[str, Any]:
    """Their failures: one error message, then the close with the code it names."""
    error = socket.messages[-1]
    assert set(error) >= {"message", "error", "code"} and error["message"], socket.messages
    assert error["code"] == socket.close_code
    return error


server = module_server(max_contexts_per_connection=MAX_CONTEXTS, max_message_bytes=16384)


# ---- single stream ------------------------------------------------------------------------------------------

async def test_single_stream_speaks_the_pieces_then_sends_is_final_and_closes(server):
    async with open_socket(server, output_format="pcm_16000", model_id="eleven_flash_v2_5") as socket:
        await socket.send(text=" ", voice_settings={"stability": 0.5, "similarity_boost": 0.8, "style": 0.0,
                                                    "use_speaker_boost": True, "speed": 1.0},
                          generation_config={"chunk_length_schedule": [50, 90, 120, 150]})
        for piece in pieces(TEXT):
            await socket.send(text=piece, try_trigger_generation=False)
        await socket.send(text="")
        assert await socket.until_closed() == 1000

    *audio, final = socket.messages
    assert final == FINAL_SINGLE
    assert audio and all(m["audio"] and m["isFinal"] is False and "contextId" not in m for m in audio)
    for message in audio:
        assert_well_formed_alignment(message, bytes_per_second=32000)
    pcm = socket.audio()
    assert len(pcm) % 2 == 0
    expected_s = len(TEXT) / ESPEAK_CHARS_PER_SECOND
    assert 0.6 * expected_s < len(pcm) / 32000 < 1.6 * expected_s
    assert socket.chars().strip() == spoken(TEXT)  # every character aligned once, in order


FIDELITY_TEXT = "It's 3:30 p.m. --help https://x.io Wait..."


def llm_tokens(text: str) -> list[str]:
    """Tokens as an LLM streams them: words with their leading space, punctuation and digits on their own."""
    return re.findall(r" ?[A-Za-z']+| ?[0-9]+| ?[^A-Za-z0-9\s]|\s+", text)


async def test_alignment_is_the_callers_text_character_for_character(server):
    tokens = llm_tokens(FIDELITY_TEXT)
    assert "".join(tokens) == FIDELITY_TEXT
    async with open_socket(server, output_format="pcm_16000") as socket:
        await socket.send(text=" ")
        for token in tokens:
            await socket.send(text=token)
        await socket.send(text="")
        assert await socket.until_closed() == 1000
    assert socket.chars() == " " + FIDELITY_TEXT  # the init message's space is the caller's too
    assert socket.chars(field="normalizedAlignment").strip() == spoken(FIDELITY_TEXT)  # what the model heard
    for message in socket.messages[:-1]:
        if message["audio"]:
            assert_well_formed_alignment(message, bytes_per_second=32000)


async def test_a_chunk_with_nothing_to_speak_still_has_its_characters_aligned(server):
    async with open_socket(server, output_format="pcm_16000") as socket:
        await socket.send(text=" ")
        await socket.send(text="Hello there", flush=True)
        await socket.send(text=" ?!")  # bare punctuation, spoken as its own chunk at the end: no audio
        await socket.send(text="")
        assert await socket.until_closed() == 1000
    silent = [m for m in socket.messages if m.get("audio") == ""]
    assert silent and all(m["alignment"]["charDurationsMs"] == [0] * len(m["alignment"]["chars"]) for m in silent)
    assert socket.chars() == " Hello there ?!"
    assert socket.chars(field="normalizedAlignment").strip() == spoken("Hello there ?!")


async def test_every_pcm_rate_carries_the_same_audio(server):
    rates = (8000, 16000, 22050, 24000, 32000, 44100, 48000)  # 32 kHz: Pipecat's pcm_32000
    samples = {rate: len((await speak(server, TEXT, output_format=f"pcm_{rate}")).audio()) // 2
               for rate in rates}
    for rate in rates:
        assert samples[rate] == pytest.approx(samples[24000] * rate / 24000, abs=2), rate


async def test_ulaw_8000_is_g711_mu_law_of_the_8_khz_audio(server):
    linear = np.frombuffer((await speak(server, TEXT, output_format="pcm_8000")).audio(), dtype="<i2")
    codes = np.frombuffer((await speak(server, TEXT, output_format="ulaw_8000")).audio(), dtype=np.uint8)
    assert len(codes) == len(linear)  # one byte a sample
    decoded = mulaw_expand(codes)
    step = 1 << (((~codes.astype(np.int32)) >> 4 & 7) + 4)  # twice the quantization step of each code's segment
    assert np.all(np.abs(decoded - linear) <= step)


async def test_alaw_8000_is_g711_a_law_of_the_8_khz_audio(server):
    linear = np.frombuffer((await speak(server, TEXT, output_format="pcm_8000")).audio(), dtype="<i2")
    codes = np.frombuffer((await speak(server, TEXT, output_format="alaw_8000")).audio(), dtype=np.uint8)
    assert len(codes) == len(linear)  # one byte a sample
    expected = StreamEncoder("alaw", 8000, source_rate=8000).encode(linear / 32767.0)
    np.testing.assert_array_equal(codes, np.frombuffer(expected, dtype=np.uint8))


@pytest.mark.parametrize("output_format, rate, kbps", [("mp3_44100_128", 44100, 128), ("mp3_22050_32", 22050, 32)])
async def test_mp3_formats_stream_one_decodable_mp3(server, output_format, rate, kbps):
    pcm_s = len((await speak(server, TEXT, output_format="pcm_24000")).audio()) / 48000
    mp3 = (await speak(server, TEXT, output_format=output_format)).audio()
    decoded, decoded_rate = decode_audio(mp3)
    assert decoded_rate == rate
    assert len(decoded) / rate == pytest.approx(pcm_s, abs=0.15)  # plus LAME's start delay and end padding
    assert len(mp3) == pytest.approx(kbps * 125 * pcm_s, rel=0.15)


async def test_flush_speaks_the_buffered_text_and_keeps_the_socket_open(server):
    async with open_socket(server, output_format="pcm_24000") as socket:
        await socket.send(text=" ")
        await socket.send(text="Hello there my ")
        await socket.send(text="friend ", flush=True)
        await socket.until(lambda s: s.chars().strip() == "Hello there my friend")
        assert not socket.final()
        await socket.send(text="Goodbye now. ")
        await socket.send(text="")
        assert await socket.until_closed() == 1000
    assert socket.chars().strip() == spoken("Hello there my friend Goodbye now.")
    assert socket.messages[-1] == FINAL_SINGLE


async def test_auto_mode_speaks_each_message_whole_without_a_flush(server):
    async with open_socket(server, output_format="pcm_24000", auto_mode="true") as socket:
        await socket.send(text=" ")
        await socket.send(text="Hello world. ")
        await socket.until(lambda s: s.chars().strip() == "Hello world.")
        assert not socket.final()


def test_voice_settings_map_to_generation_settings():
    base = GenerationSettings()
    assert generation_settings(None, None, base) == base
    mapped = generation_settings({"stability": 1.0, "style": 1.0, "similarity_boost": 0.2, "speed": 1.2,
                                  "use_speaker_boost": False}, 7, base)
    assert mapped.temperature == pytest.approx(0.4) and mapped.exaggeration == pytest.approx(1.5)
    assert mapped.seed == 7 and mapped.cfg_weight == base.cfg_weight
    assert generation_settings({"stability": 0.0}, None, base).temperature == pytest.approx(1.2)
    with pytest.raises(ElevenLabsError):
        generation_settings({"speed": 2.0}, None, base)


async def test_their_voice_id_names_the_library_voice_uploaded_under_it_in_lower_case(server_factory):
    server = server_factory(engine=ToneEngine())
    wav = sound_file(sine(2.0, hz=180, amplitude=0.3), 24000)
    uploaded = server.post("/v1/voices", data={"name": "21m00tcm4tlvdq8ikwam"},
                           files={"file": ("voice.wav", wav, "audio/wav")})
    assert uploaded.status_code == 201, uploaded.text
    socket = await speak(server, "Hello there.", voice="21m00Tcm4TlvDq8ikWAM", output_format="pcm_24000")
    assert socket.audio()


# ---- multi-context ------------------------------------------------------------------------------------------

async def test_two_interleaved_contexts_flush_close_and_close_socket(server):
    texts = {"a": "The first voice talks about the weather today.",
             "b": "Meanwhile the second one reads the evening news"}
    async with open_socket(server, "multi-stream-input", output_format="pcm_22050") as socket:
        for context_id in texts:
            await socket.send(text=" ", context_id=context_id, voice_settings={"stability": 0.6})
        for piece_a, piece_b in zip(pieces(texts["a"]), pieces(texts["b"])):
            await socket.send(text=piece_a, context_id="a")
            await socket.send(text=piece_b, context_id="b")
        await socket.send(context_id="a", flush=True)
        await socket.until(lambda s: s.chars("a").strip() == texts["a"])
        assert not socket.final("a")  # a flush is not the end of the context
        await socket.send(context_id="a", close_context=True)
        await socket.until(lambda s: s.final("a"))
        await socket.send(close_socket=True)  # b's last word was never flushed: close_socket speaks it too
        assert await socket.until_closed() == 1000

    for context_id, text in texts.items():
        messages = socket.of(context_id)
        assert messages[-1] == {"isFinal": True, "contextId": context_id}
        assert [m for m in messages if m.get("isFinal")] == messages[-1:]  # nothing after isFinal
        for message in messages[:-1]:
            assert message["isFinal"] is False and message["audio"]
            assert_well_formed_alignment(message, bytes_per_second=44100)
        assert socket.chars(context_id).strip() == text
        assert len(socket.audio(context_id)) / 44100 > 0.3 * len(text) / ESPEAK_CHARS_PER_SECOND
    assert all("contextId" in m for m in socket.messages)


async def test_close_context_drops_text_that_was_never_flushed(server):
    async with open_socket(server, "multi-stream-input", output_format="pcm_24000") as socket:
        await socket.send(text="First sentence here. ", context_id="c", flush=True)
        await socket.until(lambda s: s.chars("c").strip() == "First sentence here.")
        await socket.send(text="Second part that is never ", context_id="c")
        await socket.send(context_id="c", close_context=True)
        await socket.until(lambda s: s.final("c"))
        await socket.send(text="Still here. ", context_id="c", flush=True)  # a new, unrelated context
        await socket.until(lambda s: s.chars("c").strip().endswith("Still here."))
    assert "Second" not in socket.chars("c")


async def test_context_cap_is_refused_their_way(server):
    async with open_socket(server, "multi-stream-input", output_format="pcm_24000") as socket:
        for context_id in ("one", "two", "three"):
            await socket.send(text=" ", context_id=context_id)
        assert await socket.until_closed() == 1008
    error = closing_error(socket)
    assert error["error"] == "max_active_conversations" and error["contextId"] == "three"
    assert f"({MAX_CONTEXTS})" in error["message"]


async def test_inactive_context_closes_and_an_idle_socket_times_out(server):
    async with open_socket(server, "multi-stream-input", output_format="pcm_24000", inactivity_timeout=1) as socket:
        await socket.send(text=" ", context_id="idle")
        await socket.send(text=" ", context_id="kept")
        for _ in range(5):  # 2 s of keep-alives for one context only
            await socket.send(text="", context_id="kept")
            await asyncio.sleep(0.4)
        await socket.until(lambda s: s.final("idle"), timeout=1)
        assert not socket.final("kept")
        assert await socket.until_closed(timeout=5) == 1008  # "kept" closes, then the socket with nothing open
    assert socket.final("kept")
    assert closing_error(socket)["error"] == "input_timeout_exceeded"


async def test_single_stream_without_input_times_out(server):
    async with open_socket(server, inactivity_timeout=1) as socket:
        await socket.send(text=" ")
        assert await socket.until_closed(timeout=5) == 1008
    assert closing_error(socket)["error"] == "input_timeout_exceeded"


# ---- refusals -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, error", [
    ("{not json", "invalid_input_message"),
    ("[1, 2]", "invalid_input_message"),
    (json.dumps({"text": 5}), "invalid_input_message"),
    (json.dumps({"text": "Hi ", "flush": "yes"}), "invalid_input_message"),
    (json.dumps({"text": " ", "voice_settings": {"stability": 3}}), "invalid_voice_settings"),
    (b"\x00\x01", "invalid_input_message"),
])
async def test_bad_message_gets_their_error_and_closes_1008(server, raw, error):
    async with open_socket(server, output_format="pcm_24000") as socket:
        await socket.ws.send(raw)
        assert await socket.until_closed() == 1008
    assert closing_error(socket)["error"] == error


@pytest.mark.parametrize("voice, query, error", [
    ("default", {"output_format": "opus_48000_64"}, "invalid_output_format"),
    ("default", {"output_format": "wav_16000"}, "invalid_output_format"),  # HTTP only
    ("default", {"output_format": "pcm_12345"}, "invalid_output_format"),
    ("default", {"inactivity_timeout": 500}, "invalid_parameters"),
    ("default", {"auto_mode": "maybe"}, "invalid_parameters"),
    ("21m00Tcm4TlvDq8ikWAM", {}, "voice_not_found"),
])
async def test_bad_handshake_gets_their_error_and_closes_1008(server, voice, query, error):
    async with open_socket(server, "multi-stream-input", voice=voice, **query) as socket:
        await socket.send(text=" ", context_id="x")
        assert await socket.until_closed() == 1008
    assert closing_error(socket)["error"] == error


async def test_message_over_the_size_limit_closes_1009(server):
    async with open_socket(server) as socket:
        await socket.send(text="word " * 4000)
        assert await socket.until_closed() == 1009


async def test_engine_failure_is_reported_and_closes_1011(server_factory):
    server = server_factory(engine=ToneEngine())
    async with open_socket(server, "multi-stream-input", output_format="pcm_24000") as socket:
        await socket.send(text=f"This will {ToneEngine.FAIL_MARKER} now. ", context_id="f", flush=True)
        assert await socket.until_closed() == 1011
    error = closing_error(socket)
    assert error["error"] == "engine_error" and error["contextId"] == "f"


# ---- API keys -----------------------------------------------------------------------------------------------

keyed_server = module_server(api_key=API_KEY)


@pytest.mark.parametrize("headers, query, first_message", [
    ({"xi-api-key": API_KEY}, {}, {}),
    ({}, {"xi-api-key": API_KEY}, {}),
    ({}, {}, {"xi_api_key": API_KEY}),
    ({"Authorization": f"Bearer {API_KEY}"}, {}, {}),
])
async def test_api_key_in_any_of_their_places_or_ours(keyed_server, headers, query, first_message):
    async with open_socket(keyed_server, headers=headers, output_format="pcm_24000", **query) as socket:
        await socket.send(text=" ", **first_message)
        await socket.send(text="Hello. ")
        await socket.send(text="")
        assert await socket.until_closed() == 1000
    assert socket.audio() and socket.messages[-1] == FINAL_SINGLE


@pytest.mark.parametrize("first_message", [{}, {"xi_api_key": "wrong"}])
async def test_missing_or_wrong_api_key_closes_1008(keyed_server, first_message):
    async with open_socket(keyed_server, headers={"xi-api-key": "wrong"}, output_format="pcm_24000") as socket:
        await socket.send(text=" ", **first_message)
        assert await socket.until_closed() == 1008
    assert closing_error(socket)["error"] == "invalid_api_key"
    assert not socket.audio()


# ---- their Python SDK ---------------------------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command for a test certificate")
def test_their_sdk_convert_realtime_works_by_changing_the_base_url(tmp_path, monkeypatch):
    from elevenlabs import VoiceSettings
    from elevenlabs.client import ElevenLabs

    cert, key = self_signed_certificate(tmp_path)  # the SDK always connects with wss://
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the SDK's wss client trusts the default CA store
    settings = make_settings(tmp_path, api_key=API_KEY, ssl_certfile=str(cert), ssl_keyfile=str(key))
    with run_server(settings) as tls_server:
        client = ElevenLabs(base_url=tls_server.base_url, api_key=API_KEY)
        pcm = b"".join(client.text_to_speech.convert_realtime(
            voice_id="default", text=iter(re.findall(r"\S+ ?", TEXT)), model_id="eleven_flash_v2_5",
            output_format="pcm_24000", voice_settings=VoiceSettings(stability=0.5, similarity_boost=0.75)))
        mp3 = b"".join(client.text_to_speech.convert_realtime(voice_id="default", text=iter(["Hello there."])))
    expected_s = len(TEXT) / ESPEAK_CHARS_PER_SECOND
    assert len(pcm) % 2 == 0 and 0.6 * expected_s < len(pcm) / 48000 < 1.6 * expected_s
    decoded, rate = decode_audio(mp3)  # their default output format, mp3_44100_128
    assert rate == 44100 and len(decoded) / rate > 0.3
