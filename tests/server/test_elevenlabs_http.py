"""ElevenLabs-compatible HTTP text-to-speech end to end: real uvicorn, the espeak engine, their own Python SDK
(`convert`, `stream`, `convert_with_timestamps`, `stream_with_timestamps` with `base_url` at our server) and
raw httpx for what the SDK hides (error bodies, headers, WAV sizes, unknown routes)."""

from __future__ import annotations

import base64
import io
import wave

import httpx
import numpy as np
import pytest
from elevenlabs import ElevenLabs
from elevenlabs.core.api_error import ApiError

from app.audio.encode import decode_audio
from app.text.normalize import normalize_stream
from harness import module_server

API_KEY = "secret-key"
TEXT = "Hello there. The server speaks this reply in chunks, and it times every character."
TIMEOUT_S = 60.0

server = module_server(api_key=API_KEY)


def sdk(server) -> ElevenLabs:
    return ElevenLabs(base_url=server.base_url, api_key=API_KEY, timeout=TIMEOUT_S)


def post(server, path: str, body: dict, key: str | None = API_KEY, **params) -> httpx.Response:
    headers = {} if key is None else {"xi-api-key": key}
    return httpx.post(f"{server.base_url}{path}", json=body, params=params, headers=headers, timeout=TIMEOUT_S)


def pcm_seconds(data: bytes, rate: int) -> float:
    return len(data) / 2 / rate


# ---- their SDK ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["convert", "stream"])
def test_sdk_audio_in_every_default_format(server, method):
    client = sdk(server)
    call = getattr(client.text_to_speech, method)
    mp3 = b"".join(call(voice_id="default", text=TEXT))  # their default: mp3_44100_128
    pcm, rate = decode_audio(mp3)
    assert rate == 44100 and pcm.size / rate > 2.0 and np.abs(pcm).max() > 0.05
    for fmt, rate in [("pcm_16000", 16000), ("pcm_32000", 32000), ("pcm_44100", 44100)]:
        data = b"".join(call(voice_id="default", text=TEXT, output_format=fmt))
        assert len(data) % 2 == 0 and 2.0 < pcm_seconds(data, rate) < 20.0, fmt
    for fmt in ("ulaw_8000", "alaw_8000"):
        data = b"".join(call(voice_id="default", text=TEXT, output_format=fmt))
        assert 2.0 < len(data) / 8000 < 20.0, fmt


def test_sdk_convert_with_timestamps_aligns_every_character(server):
    result = sdk(server).text_to_speech.convert_with_timestamps(voice_id="default", text=TEXT,
                                                                output_format="pcm_24000")
    audio = base64.b64decode(result.audio_base_64)
    duration = pcm_seconds(audio, 24000)
    alignment = result.alignment
    assert "".join(alignment.characters) == TEXT
    starts, ends = alignment.character_start_times_seconds, alignment.character_end_times_seconds
    assert starts == sorted(starts) and all(s <= e for s, e in zip(starts, ends))
    assert ends[-1] == pytest.approx(duration, abs=0.05)
    assert "".join(result.normalized_alignment.characters) == normalize_stream(TEXT)


def test_sdk_stream_with_timestamps_lines(server):
    chunks = list(sdk(server).text_to_speech.stream_with_timestamps(voice_id="default", text=TEXT,
                                                                    output_format="pcm_16000"))
    assert len(chunks) > 1  # streamed as produced, not one object at the end
    audio = b"".join(base64.b64decode(chunk.audio_base_64) for chunk in chunks)
    chars = [c for chunk in chunks if chunk.alignment for c in chunk.alignment.characters]
    assert "".join(chars) == TEXT
    starts = [t for chunk in chunks if chunk.alignment for t in chunk.alignment.character_start_times_seconds]
    assert starts == sorted(starts)  # times from the start of the response's audio, not of each line
    assert starts[-1] < pcm_seconds(audio, 16000)


FIDELITY_TEXT = "It's 3:30 p.m. --help https://x.io Wait..."


@pytest.mark.parametrize("method", ["convert_with_timestamps", "stream_with_timestamps"])
def test_alignment_is_the_callers_text_normalized_alignment_what_was_spoken(server, method):
    result = getattr(sdk(server).text_to_speech, method)(voice_id="default", text=FIDELITY_TEXT,
                                                         output_format="pcm_16000")
    parts = [result] if method == "convert_with_timestamps" else list(result)
    caller = "".join(c for part in parts if part.alignment for c in part.alignment.characters)
    normalized = "".join(c for part in parts if part.normalized_alignment
                         for c in part.normalized_alignment.characters)
    assert caller == FIDELITY_TEXT
    assert normalized == normalize_stream(FIDELITY_TEXT)


def test_sdk_sees_their_error_shape(server):
    with pytest.raises(ApiError) as caught:
        b"".join(sdk(server).text_to_speech.convert(voice_id="nobody", text=TEXT))
    assert caught.value.status_code == 404
    assert caught.value.body["detail"]["status"] == "voice_not_found"


# ---- raw HTTP -----------------------------------------------------------------------------------------------

def test_body_fields_they_send_are_accepted(server):
    body = {"text": TEXT, "model_id": "eleven_flash_v2_5", "language_code": "en", "seed": 7,
            "voice_settings": {"stability": 0.5, "similarity_boost": 0.75, "style": 0.0, "speed": 1.0,
                               "use_speaker_boost": True},
            "previous_text": "Earlier.", "next_text": "Later.", "apply_text_normalization": "auto",
            "pronunciation_dictionary_locators": [], "unknown_future_field": 1}
    response = post(server, "/v1/text-to-speech/default", body, output_format="pcm_22050",
                    optimize_streaming_latency=3)
    assert response.status_code == 200 and pcm_seconds(response.content, 22050) > 2.0
    again = post(server, "/v1/text-to-speech/default", body, output_format="pcm_22050",
                 optimize_streaming_latency=3)
    assert again.content == response.content  # the seed makes it reproducible


@pytest.mark.parametrize("path", ["/v1/text-to-speech/default", "/v1/text-to-speech/default/stream"])
def test_wav_sizes_real_when_whole_open_ended_when_streamed(server, path):
    response = post(server, path, {"text": TEXT}, output_format="wav_16000")
    assert response.status_code == 200 and response.headers["content-type"] == "audio/wav"
    samples = (len(response.content) - 44) // 2
    with wave.open(io.BytesIO(response.content)) as reader:
        frames = reader.getnframes()
        assert reader.getframerate() == 16000
    if path.endswith("/stream"):
        assert frames > 10 * samples  # open-ended: the length was not known when the header left
    else:
        assert frames == samples  # Python's wave reads the real duration


def test_opus_is_a_whole_ogg_file(server):
    response = post(server, "/v1/text-to-speech/default/stream", {"text": TEXT}, output_format="opus_48000_64")
    assert response.status_code == 200 and response.content[:4] == b"OggS"
    pcm, rate = decode_audio(response.content)
    assert rate == 48000 and pcm.size / rate > 2.0


@pytest.mark.parametrize("key", [None, "wrong"])
def test_key_required_in_their_header(server, key):
    response = post(server, "/v1/text-to-speech/default", {"text": TEXT}, key=key)
    assert response.status_code == 401
    assert response.json()["detail"]["status"] == "invalid_api_key"


def test_our_key_header_works_too(server):
    response = httpx.post(f"{server.base_url}/v1/text-to-speech/default", json={"text": "Hi."},
                          headers={"Authorization": f"Bearer {API_KEY}"}, params={"output_format": "pcm_8000"},
                          timeout=TIMEOUT_S)
    assert response.status_code == 200 and response.content


@pytest.mark.parametrize("body,params,status,name", [
    ({"text": TEXT}, {"output_format": "flac_44100"}, 400, "invalid_output_format"),
    ({"text": TEXT}, {"output_format": "pcm_12345"}, 400, "invalid_output_format"),
    ({"text": TEXT}, {"optimize_streaming_latency": "9"}, 400, "invalid_parameters"),
    ({"text": ""}, {}, 400, "invalid_text"),
    ({"text": 5}, {}, 400, "invalid_text"),
    ({"text": TEXT, "voice_settings": {"stability": 3}}, {}, 400, "invalid_voice_settings"),
    ({"text": TEXT, "seed": -1}, {}, 400, "invalid_input"),
    ({"text": TEXT, "model_id": 3}, {}, 400, "invalid_input"),
])
def test_bad_requests_answer_their_way(server, body, params, status, name):
    for path in ("/v1/text-to-speech/default", "/v1/text-to-speech/default/stream/with-timestamps"):
        response = post(server, path, body, **params)
        assert response.status_code == status, response.text
        assert response.json()["detail"]["status"] == name
        assert response.json()["detail"]["message"]


def test_not_json_answers_their_way(server):
    response = httpx.post(f"{server.base_url}/v1/text-to-speech/default/stream", content=b"{not json",
                          headers={"xi-api-key": API_KEY, "content-type": "application/json"}, timeout=TIMEOUT_S)
    assert response.status_code == 400 and response.json()["detail"]["status"] == "invalid_input_message"


# ---- unknown routes -----------------------------------------------------------------------------------------

def test_unknown_routes_and_methods_answer_json(server):
    headers = {"xi-api-key": API_KEY, "Authorization": f"Bearer {API_KEY}"}
    missing = httpx.get(f"{server.base_url}/no/such/route", headers=headers)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    wrong_method = httpx.get(f"{server.base_url}/synthesize", headers=headers)
    assert wrong_method.status_code == 405 and wrong_method.json()["error"]["code"] == "method_not_allowed"
    theirs = httpx.get(f"{server.base_url}/v1/text-to-speech/default/stream", headers=headers)
    assert theirs.status_code == 405 and theirs.json()["detail"]["status"] == "method_not_allowed"
    their_missing = httpx.post(f"{server.base_url}/v1/text-to-speech/default/nope", headers=headers, json={})
    assert their_missing.status_code == 404 and their_missing.json()["detail"]["status"] == "not_found"
    page = httpx.get(f"{server.base_url}/")  # the demo page is still served
    assert page.status_code == 200 and "html" in page.headers["content-type"]
