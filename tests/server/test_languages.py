"""A language per context on every protocol: the native `start`, /synthesize, the OpenAI route (`language`,
as the SDK's `extra_body` sends it) and the ElevenLabs `language_code` (socket and HTTP). The multilingual
model speaks its 23 languages, the English-only models English; anything else is a clear
`unsupported_language` error listing what the model speaks (the espeak engine stands in for each model and
really speaks the language, so French audio differs from English audio)."""

from __future__ import annotations

import json
from urllib.parse import urlencode

import pytest
from harness import module_server
from stream_session import open_session
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedError

from app.engine.chatterbox.model_names import SUPPORTED_LANGUAGES

server = module_server(models="multilingual,standard")
TEXT = "Bonjour tout le monde, merci beaucoup."


def synthesize(running, **fields):
    return running.post("/synthesize", json={"text": TEXT, "response_format": "pcm", **fields})


def test_the_language_changes_what_is_spoken(server):
    french, english = synthesize(server, language="fr"), synthesize(server, language="en")
    assert french.status_code == english.status_code == 200
    assert french.content != english.content  # espeak read it with the French voice


@pytest.mark.parametrize("language", SUPPORTED_LANGUAGES)
async def test_native_start_speaks_every_supported_language(server, language):
    async with open_session(server.ws_url) as session:
        done = await session.speak("l", "1 2 3.", language=language)
    assert done["stats"]["audio_s"] > 0.2


async def test_native_unsupported_language_lists_the_supported_ones(server):
    async with open_session(server.ws_url) as session:
        await session.send("start", context_id="x", language="xx")
        error = await session.until("error", "x")
        assert error["code"] == "unsupported_language" and "ar, da, de" in error["message"]
        await session.send("start", context_id="y", language="fr", model="standard")
        error = await session.until("error", "y")
        assert error["code"] == "unsupported_language"
        assert "it speaks: en" in error["message"] and "'multilingual' speaks it" in error["message"]
        done = await session.speak("ok", TEXT, language="fr")  # the connection goes on
    assert done["stats"]["audio_s"] > 0.5


def test_synthesize_language_errors_in_our_shape(server):
    response = synthesize(server, language="xx")
    assert response.status_code == 400 and response.json()["error"]["code"] == "unsupported_language"
    assert synthesize(server, language=["fr"]).status_code == 422
    assert synthesize(server, language="FR").status_code == 200  # codes are case-insensitive


def test_openai_language_extra_field(server):
    body = {"model": "chatterbox-multilingual", "input": TEXT, "voice": "alloy", "response_format": "pcm"}
    french = server.post("/v1/audio/speech", json={**body, "language": "fr"})
    english = server.post("/v1/audio/speech", json=body)
    assert french.status_code == english.status_code == 200 and french.content != english.content
    refused = server.post("/v1/audio/speech", json={**body, "model": "chatterbox", "language": "fr"})
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "unsupported_language"
    assert refused.json()["error"]["param"] == "language"


def test_elevenlabs_http_language_code_is_honoured(server):
    def post(**body):
        return server.post("/v1/text-to-speech/default", params={"output_format": "pcm_24000"},
                           json={"text": TEXT, "model_id": "eleven_multilingual_v2", **body})

    french, english = post(language_code="fr"), post(language_code="en")
    assert french.status_code == english.status_code == 200 and french.content != english.content
    refused = post(language_code="xx")
    assert refused.status_code == 400 and refused.json()["detail"]["status"] == "unsupported_language"


async def test_elevenlabs_socket_language_code(server):
    async def speak(**query) -> list[dict]:
        url = (f"ws://127.0.0.1:{server.settings.port}/v1/text-to-speech/default/stream-input?"
               f"{urlencode({'output_format': 'pcm_16000', **query})}")
        messages = []
        async with connect(url, max_size=None) as ws:
            for text in (" ", TEXT + " ", ""):
                await ws.send(json.dumps({"text": text}))
            try:
                async for message in ws:
                    messages.append(json.loads(message))
            except ConnectionClosedError:
                pass
        return messages

    french = "".join(m.get("audio") or "" for m in await speak(language_code="fr"))
    english = "".join(m.get("audio") or "" for m in await speak(language_code="en"))
    assert french and english and french != english
    refused = await speak(language_code="xx")
    assert refused[-1]["error"] == "unsupported_language"
