"""The voice library routes against a real server (espeak engine): upload, list, use, restart, delete, and
uploads that must be refused without disturbing the server."""

from __future__ import annotations

import httpx
import numpy as np
import openai
import pytest

from app.engine.espeak import EspeakEngine, EspeakVoice, median_f0
from app.server.http_common import BodyTooLarge, limited_receive
from audio_checks import s16le_to_float, sine, sound_file
from harness import make_settings, run_server

RATE = 24000
MAX_UPLOAD = 256 * 1024
RECORD_FIELDS = {"id", "name", "hash", "duration", "created", "builtin"}


@pytest.fixture(scope="module")
def high_voice_recording() -> bytes:
    """About 3 s of speech at a much higher pitch than the default voice."""
    engine = EspeakEngine()
    return sound_file(engine.synthesize("Hello, this is my voice. I speak rather high, as you can hear.",
                                         EspeakVoice(variant="f2", pitch=80)), RATE)


@pytest.fixture(scope="module")
def voices_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("library")


@pytest.fixture(scope="module")
def server(voices_dir):
    settings = make_settings(voices_dir, max_upload_bytes=MAX_UPLOAD)
    with run_server(settings) as running:
        yield running


def upload(server, name: str | None, data: bytes | None, filename: str = "me.wav") -> httpx.Response:
    files = {"file": (filename, data, "audio/wav")} if data is not None else None
    fields = {"name": name} if name is not None else None
    return httpx.post(server.base_url + "/v1/voices", files=files, data=fields, timeout=30)


def speak(server, voice: str) -> np.ndarray:
    response = server.post("/synthesize", json={"text": "Which voice is speaking now?", "voice": voice,
                                                "response_format": "pcm"})
    assert response.status_code == 200, response.text
    return s16le_to_float(response.content)


def voice_ids(server) -> list[str]:
    return [voice["id"] for voice in server.get("/v1/voices").json()["voices"]]


def test_voice_lifecycle_upload_list_speak_restart_delete(server, voices_dir, high_voice_recording):
    created = upload(server, "alice", high_voice_recording)
    assert created.status_code == 201
    record = created.json()
    assert set(record) == RECORD_FIELDS  # the demo page reads `id` (and `name`) from here
    assert (record["id"], record["name"], record["builtin"]) == ("alice", "alice", False)
    assert 2.0 < record["duration"] <= 10.0 and len(record["hash"]) == 64

    listed = server.get("/v1/voices").json()["voices"]
    assert [voice["id"] for voice in listed] == ["default", "alice"]
    assert listed[0]["builtin"] and all(set(voice) == RECORD_FIELDS for voice in listed)
    assert server.get("/v1/voices/alice").json() == record

    default_pcm, alice_pcm = speak(server, "default"), speak(server, "alice")
    assert median_f0(alice_pcm, RATE) > 1.3 * median_f0(default_pcm, RATE)

    with run_server(make_settings(voices_dir, max_upload_bytes=MAX_UPLOAD)) as restarted:
        assert restarted.get("/v1/voices/alice").json() == record
        np.testing.assert_array_equal(speak(restarted, "alice"), alice_pcm)

    assert upload(server, "alice", high_voice_recording).status_code == 409
    deleted = httpx.delete(server.base_url + "/v1/voices/alice")
    assert deleted.status_code == 204 and deleted.content == b""
    assert server.get("/v1/voices/alice").status_code == 404
    assert server.post("/synthesize", json={"text": "Hi.", "voice": "alice"}).json()["error"]["code"] == \
        "unknown_voice"
    assert voice_ids(server) == ["default"]
    assert httpx.delete(server.base_url + "/v1/voices/alice").status_code == 404
    assert httpx.delete(server.base_url + "/v1/voices/default").status_code == 400


def test_an_uploaded_voice_named_like_an_openai_stock_voice_replaces_it(server, high_voice_recording):
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0)

    def openai_pcm(voice: str) -> np.ndarray:
        data = client.audio.speech.create(model="tts-1", voice=voice, input="Which voice?", response_format="pcm")
        return np.frombuffer(data.content, "<i2")

    stock = openai_pcm("nova")
    np.testing.assert_array_equal(stock, openai_pcm("alloy"))  # both are "default"
    assert upload(server, "nova", high_voice_recording).status_code == 201
    try:
        assert not np.array_equal(openai_pcm("nova"), stock)
        np.testing.assert_array_equal(openai_pcm("alloy"), stock)
    finally:
        httpx.delete(server.base_url + "/v1/voices/nova")


def silent(seconds: float) -> bytes:
    return sound_file(np.zeros(int(seconds * RATE), np.float32), RATE)


def tone(seconds: float) -> bytes:
    return sound_file(sine(seconds, hz=150, amplitude=0.3), RATE)


@pytest.mark.parametrize("name, data, status, code", [
    ("corrupt", b"RIFF\x00\x00\x00\x00WAVEthis is not audio at all" * 20, 415, "bad_audio"),
    ("empty", b"", 400, "bad_audio"),
    ("quiet", silent(3.0), 422, "bad_audio"),
    ("short", tone(0.4), 422, "bad_audio"),
    ("over-library-limit", b"\x00" * (MAX_UPLOAD + 1000), 413, "upload_too_large"),
    ("Bad Name!", tone(2.0), 400, "invalid_voice_name"),
    ("default", tone(2.0), 409, "voice_exists"),
    (None, tone(2.0), 400, "invalid_voice_name"),
    ("nofile", None, 400, "bad_request"),
])
def test_bad_uploads_are_refused_and_the_server_keeps_serving(server, name, data, status, code):
    response = upload(server, name, data)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == code and error["message"]  # the demo page shows error.message
    assert voice_ids(server) == ["default"]
    assert speak(server, "default").size > 0


async def test_the_body_is_read_only_up_to_the_limit():
    consumed = 0

    async def receive():
        nonlocal consumed
        consumed += 1
        return {"type": "http.request", "body": b"x" * 16 * 1024, "more_body": True}

    bounded = limited_receive(receive, limit=64 * 1024)
    for _ in range(4):
        await bounded()
    with pytest.raises(BodyTooLarge):
        await bounded()
    assert consumed == 5


def multipart(name: str, data: bytes) -> tuple[bytes, str]:
    boundary = "voiceboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\n{name}\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.wav\"\r\n"
            "Content-Type: audio/wav\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def test_a_huge_upload_is_refused_from_its_length_or_while_it_streams(server):
    body, content_type = multipart("huge", b"\x01" * (4 * MAX_UPLOAD))
    declared = httpx.post(server.base_url + "/v1/voices", content=body, headers={"content-type": content_type})
    assert declared.status_code == 413 and declared.json()["error"]["code"] == "upload_too_large"

    def pieces():  # no Content-Length: chunked transfer; the server must count
        for start in range(0, len(body), 16 * 1024):
            yield body[start:start + 16 * 1024]

    try:
        chunked = httpx.post(server.base_url + "/v1/voices", content=pieces(), timeout=10,
                             headers={"content-type": content_type})
        assert chunked.status_code == 413 and chunked.json()["error"]["code"] == "upload_too_large"
    except httpx.WriteError:
        pass  # the server answered and closed while the client was still sending: refused either way
    assert voice_ids(server) == ["default"]
    assert speak(server, "default").size > 0
