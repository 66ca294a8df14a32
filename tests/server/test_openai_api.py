"""POST /v1/audio/speech through the official `openai` SDK against a real server (espeak engine)."""

from __future__ import annotations

import base64
import io
import wave

import httpx
import numpy as np
import openai
import orjson
import pytest
import soundfile as sf

from app.engine.espeak import median_f0
from audio_checks import s16le_to_float
from harness import make_settings, module_server, run_server

RATE = 24000
TEXT = "Hello from the speech endpoint. It speaks like the one you know."
# What each response_format's bytes decode to: (soundfile format name, sample rate); pcm is headerless.
CONTAINERS = {"wav": ("WAV", RATE), "flac": ("FLAC", RATE), "mp3": ("MP3", RATE), "opus": ("OGG", RATE)}


server = module_server()


@pytest.fixture(scope="module")
def client(server):
    with openai.OpenAI(base_url=server.base_url + "/v1", api_key="not-needed", max_retries=0) as sdk:
        yield sdk


def decode(data: bytes, fmt: str) -> np.ndarray:
    if fmt == "pcm":
        return s16le_to_float(data)
    with sf.SoundFile(io.BytesIO(data)) as sound:
        assert (sound.format, sound.samplerate, sound.channels) == (*CONTAINERS[fmt], 1)
        return sound.read(dtype="float32")


def speak(client, **options) -> bytes:
    return client.audio.speech.create(**{"model": "tts-1", "voice": "alloy", "input": TEXT, **options}).content


@pytest.fixture(scope="module")
def reference_pcm(client) -> np.ndarray:
    return decode(speak(client, response_format="pcm"), "pcm")


@pytest.mark.parametrize("fmt", ["mp3", "opus", "flac", "wav", "pcm"])
def test_every_format_decodes_to_the_same_speech(client, reference_pcm, fmt):
    pcm = decode(speak(client, response_format=fmt), fmt)
    assert len(pcm) == pytest.approx(len(reference_pcm), rel=0.05, abs=0.1 * RATE)  # codecs pad a little
    assert 2.0 < len(pcm) / RATE < 8.0 and np.abs(pcm).max() > 0.1


def test_default_format_is_mp3(client):
    assert decode(speak(client), "mp3").size > RATE


@pytest.mark.parametrize("fmt", ["pcm", "wav", "mp3"])
def test_streaming_response_gives_the_same_audio(client, reference_pcm, fmt):
    with client.audio.speech.with_streaming_response.create(model="gpt-4o-mini-tts", voice="echo", input=TEXT,
                                                             response_format=fmt) as response:
        assert response.headers["content-type"] == {"pcm": "audio/pcm", "wav": "audio/wav",
                                                    "mp3": "audio/mpeg"}[fmt]
        assert float(response.headers["x-ttfa-ms"]) > 0
        data = b"".join(response.iter_bytes())
    pcm = decode(data, fmt)
    if fmt == "mp3":
        assert len(pcm) == pytest.approx(len(reference_pcm), abs=0.1 * RATE)
    else:
        np.testing.assert_array_equal(pcm, reference_pcm)  # stock voices speak with "default"


def test_sse_stream_carries_base64_deltas_then_done_with_usage(client, reference_pcm):
    with client.audio.speech.with_streaming_response.create(model="gpt-4o-mini-tts", voice="nova", input=TEXT,
                                                             response_format="pcm", stream_format="sse") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [orjson.loads(line[len("data: "):]) for line in response.iter_lines() if line.startswith("data: ")]
    *deltas, done = events
    assert deltas and all(event["type"] == "speech.audio.delta" for event in deltas)
    audio = b"".join(base64.b64decode(event["audio"]) for event in deltas)
    np.testing.assert_array_equal(decode(audio, "pcm"), reference_pcm)
    assert done["type"] == "speech.audio.done"
    usage = done["usage"]
    assert usage["input_tokens"] == len(TEXT)
    assert usage["output_tokens"] == pytest.approx(len(reference_pcm) / RATE * 25, abs=3)  # 25 tokens per second
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


def test_model_names_voice_object_and_instructions_change_nothing(client, reference_pcm):
    for options in ({"model": "tts-1-hd"}, {"model": "chatterbox"}, {"voice": {"id": "default"}},
                    {"voice": "shimmer", "instructions": "Speak like a pirate."}):
        np.testing.assert_array_equal(decode(speak(client, response_format="pcm", **options), "pcm"),
                                      reference_pcm)


@pytest.mark.parametrize("speed", [0.25, 0.5, 2.0, 4.0])
def test_speed_stretches_time_and_keeps_the_pitch(client, reference_pcm, speed):
    pcm = decode(speak(client, response_format="wav", speed=speed), "wav")
    assert len(pcm) == pytest.approx(len(reference_pcm) / speed, rel=0.05)
    if speed in (0.5, 2.0):  # the pitch tracker finds too few voiced frames in 4x speech
        # Resampling would scale the pitch by `speed` too; a time stretch keeps it (within the tracker's spread).
        assert median_f0(pcm, RATE) == pytest.approx(median_f0(reference_pcm, RATE), rel=0.25)


def test_wav_sizes_are_real_when_the_body_waits_for_the_end_open_ended_when_it_streams(client, reference_pcm):
    streamed = speak(client, response_format="wav")
    assert streamed[40:44] == b"\xff\xff\xff\xff"  # sent as produced: the length was not known yet
    stretched = speak(client, response_format="wav", speed=2.0)  # the whole body is produced first
    with wave.open(io.BytesIO(stretched)) as reader:
        assert reader.getnframes() == (len(stretched) - 44) // 2
        assert reader.getnframes() == pytest.approx(len(reference_pcm) / 2, rel=0.05)


def test_seeded_requests_are_cached_through_extra_body(client):
    def headers(seed):
        raw = client.audio.speech.with_raw_response.create(model="tts-1", voice="alloy", input="Cache me.",
                                                           response_format="opus", extra_body={"seed": seed})
        return raw.headers["x-cache"]

    assert [headers(5), headers(5), headers(None)] == ["miss", "hit", "bypass"]


@pytest.mark.parametrize("options, error_class, param, code", [
    ({"response_format": "aac"}, openai.BadRequestError, "response_format", "unsupported_value"),
    ({"speed": 4.5}, openai.BadRequestError, "speed", "invalid_value"),
    ({"speed": 0.1}, openai.BadRequestError, "speed", "invalid_value"),
    ({"input": "x" * 4097}, openai.BadRequestError, "input", "string_above_max_length"),
    ({"input": ""}, openai.BadRequestError, "input", "invalid_value"),
    ({"voice": "not-a-voice"}, openai.BadRequestError, "voice", "unknown_voice"),
    ({"model": "whisper-1"}, openai.NotFoundError, "model", "model_not_found"),
    ({"stream_format": "chunks"}, openai.BadRequestError, "stream_format", "invalid_value"),
    ({"extra_body": {"temperature": 99}}, openai.BadRequestError, None, "invalid_settings"),
    ({"extra_body": {"language": "xx"}}, openai.BadRequestError, "language", "unsupported_language"),
    ({"extra_body": {"style_prompt": "calm"}}, openai.BadRequestError, "style_prompt", "unknown_parameter"),
])
def test_errors_come_in_openais_shape(client, options, error_class, param, code):
    with pytest.raises(error_class) as caught:
        speak(client, **options)
    error = caught.value
    assert (error.type, error.param, error.code) == ("invalid_request_error", param, code)
    assert error.body["message"]


def test_error_body_has_all_four_fields(server):
    response = server.post("/v1/audio/speech", json={"model": "tts-1", "input": "Hi.", "voice": "alloy",
                                                     "response_format": "aac"})
    assert response.status_code == 400
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    broken = server.post("/v1/audio/speech", content=b"{", headers={"content-type": "application/json"})
    assert broken.status_code == 400 and broken.json()["error"]["code"] == "invalid_json"


def test_api_key_is_enforced_and_accepted_from_the_sdk(tmp_path):
    with run_server(make_settings(tmp_path, api_key="s3cret")) as server:
        with openai.OpenAI(base_url=server.base_url + "/v1", api_key="wrong", max_retries=0) as wrong:
            with pytest.raises(openai.AuthenticationError):
                wrong.audio.speech.create(model="tts-1", voice="alloy", input="Hi.")
        with openai.OpenAI(base_url=server.base_url + "/v1", api_key="s3cret", max_retries=0) as right:
            assert right.audio.speech.create(model="tts-1", voice="alloy", input="Hi.",
                                             response_format="wav").content[:4] == b"RIFF"
        assert httpx.get(server.base_url + "/v1/voices").status_code == 401
