"""Several models in one server, chosen per context on every protocol: the native `start`, /synthesize, the
OpenAI route's `model`, the ElevenLabs `model_id` (socket and HTTP); a model that is not served is a clear
`unknown_model` error in each protocol's shape. The espeak engine stands in for each model name (one engine per
model behind the router), so which model spoke is read from the metrics' `model` label."""

from __future__ import annotations

import json
from urllib.parse import urlencode

import pytest
from harness import metric_samples, module_server
from stream_session import open_session
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedError

server = module_server(models="standard,turbo", default_model="turbo")
TEXT = "One model or another."


def chunks_by_model(running) -> dict[str, float]:
    samples = metric_samples(running)
    return {model: samples.get(f"chatterbox_chunks_total{{model={model}}}", 0.0)
            for model in ("standard", "turbo", "multilingual")}


class spoken_by:
    """Asserts that what runs inside it is synthesized by `model` and no other."""

    def __init__(self, running, model: str):
        self.running, self.model = running, model

    def __enter__(self) -> None:
        self.before = chunks_by_model(self.running)

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            after = chunks_by_model(self.running)
            grew = {model for model in after if after[model] > self.before[model]}
            assert grew == {self.model}, (self.before, after)


async def test_ready_lists_the_models_and_the_default(server):
    async with open_session(server.ws_url) as session:
        ready = session.ready
    assert ready["engine"]["models"] == ["turbo", "standard"]  # the default first
    assert ready["engine"]["default_model"] == "turbo"
    status = server.get("/optimization-status").json()
    assert status["engine"]["models"] == ["turbo", "standard"]


@pytest.mark.parametrize("model, expected", [("standard", "standard"), ("turbo", "turbo"), (None, "turbo")])
async def test_native_start_picks_the_model(server, model, expected):
    start = {} if model is None else {"model": model}
    with spoken_by(server, expected):
        async with open_session(server.ws_url) as session:
            done = await session.speak("m", TEXT, **start)
    assert done["stats"]["audio_s"] > 0.5


async def test_native_unknown_model_is_an_error_naming_the_served_ones(server):
    async with open_session(server.ws_url) as session:
        await session.send("start", context_id="x", model="multilingual")
        error = await session.until("error", "x")
        assert error["code"] == "unknown_model"
        assert "standard" in error["message"] and "turbo" in error["message"]
        done = await session.speak("ok", TEXT)  # the connection goes on
    assert done["stats"]["audio_s"] > 0.5


@pytest.mark.parametrize("model", ["standard", "turbo"])
def test_synthesize_picks_the_model(server, model):
    with spoken_by(server, model):
        response = server.post("/synthesize", json={"text": TEXT, "model": model, "response_format": "pcm"})
    assert response.status_code == 200 and len(response.content) > 24000


def test_synthesize_unknown_model_in_our_error_shape(server):
    response = server.post("/synthesize", json={"text": TEXT, "model": "nope"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "unknown_model"
    assert server.post("/synthesize", json={"text": TEXT, "model": 7}).status_code == 422


@pytest.mark.parametrize("model, expected", [("chatterbox", "standard"), ("chatterbox-turbo", "turbo"),
                                             ("tts-1", "turbo"), ("gpt-4o-mini-tts", "turbo")])
def test_openai_model_names_map_to_ours(server, model, expected):
    with spoken_by(server, expected):
        response = server.post("/v1/audio/speech", json={"model": model, "input": TEXT, "voice": "alloy",
                                                         "response_format": "pcm"})
    assert response.status_code == 200 and len(response.content) > 24000


def test_openai_model_not_served_is_their_model_not_found(server):
    response = server.post("/v1/audio/speech", json={"model": "chatterbox-multilingual", "input": TEXT,
                                                     "voice": "alloy"})
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "model_not_found" and error["param"] == "model" and "turbo" in error["message"]


@pytest.mark.parametrize("model_id, expected", [("eleven_flash_v2_5", "turbo"), ("eleven_turbo_v2_5", "turbo"),
                                                ("eleven_monolingual_v1", "standard"), ("chatterbox", "standard"),
                                                # not served here: the default, so a framework's default works
                                                ("eleven_multilingual_v2", "turbo")])
def test_elevenlabs_http_model_id(server, model_id, expected):
    with spoken_by(server, expected):
        response = server.post("/v1/text-to-speech/default", params={"output_format": "pcm_24000"},
                               json={"text": TEXT, "model_id": model_id})
    assert response.status_code == 200 and len(response.content) > 24000


def test_elevenlabs_http_our_model_name_not_served_is_their_error(server):
    response = server.post("/v1/text-to-speech/default", json={"text": TEXT, "model_id": "chatterbox-multilingual"})
    assert response.status_code == 404
    assert response.json()["detail"]["status"] == "model_not_found"


@pytest.mark.parametrize("model_id, expected", [("eleven_flash_v2_5", "turbo"), ("chatterbox", "standard")])
async def test_elevenlabs_socket_model_id(server, model_id, expected):
    query = urlencode({"model_id": model_id, "output_format": "pcm_16000"})
    url = f"ws://127.0.0.1:{server.settings.port}/v1/text-to-speech/default/stream-input?{query}"
    audio = 0
    with spoken_by(server, expected):
        async with connect(url, max_size=None) as ws:
            for text in (" ", TEXT + " ", ""):
                await ws.send(json.dumps({"text": text}))
            async for message in ws:
                audio += len(json.loads(message).get("audio") or "")
    assert audio > 0


async def test_elevenlabs_socket_unknown_model_closes_with_their_error(server):
    query = urlencode({"model_id": "chatterbox-multilingual"})
    url = f"ws://127.0.0.1:{server.settings.port}/v1/text-to-speech/default/stream-input?{query}"
    messages = []
    async with connect(url, max_size=None) as ws:
        for text in (" ", TEXT + " "):
            await ws.send(json.dumps({"text": text}))
        with pytest.raises(ConnectionClosedError):
            async for message in ws:
                messages.append(json.loads(message))
    assert messages[-1]["error"] == "model_not_found" and ws.close_code == 1008
