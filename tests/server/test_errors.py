"""Bad input and limits: each gets its error event (or close code), and the connection keeps working."""

from __future__ import annotations

import json

import pytest

from harness import module_server
from stream_session import open_session, refused

MAX_TEXT = 200
MAX_MESSAGE = 4096


server = module_server(max_contexts_per_connection=2, max_buffered_text=MAX_TEXT, max_message_bytes=MAX_MESSAGE)


async def still_works(session) -> None:
    done = await session.speak("check", "Still working.")
    assert done["stats"]["audio_s"] > 0


@pytest.mark.parametrize("raw, code, context_id", [
    ("{not json", "bad_json", None),
    ("[1, 2, 3]", "bad_json", None),
    (json.dumps({"type": "sing", "context_id": "x"}), "unknown_type", "x"),
    (json.dumps({"type": "start", "context_id": "x", "generation": {"temperature": 50}}), "invalid_settings", "x"),
    (json.dumps({"type": "start", "context_id": "x", "output": {"encoding": "opus"}}), "invalid_settings", "x"),
    (json.dumps({"type": "start", "context_id": "x", "voice": "nobody"}), "unknown_voice", "x"),
    (json.dumps({"type": "flush", "context_id": "ghost"}), "unknown_context", "ghost"),
    (json.dumps({"type": "cancel", "context_id": "ghost"}), "unknown_context", "ghost"),
    (json.dumps({"type": "end", "context_id": "ghost"}), "unknown_context", "ghost"),
    (json.dumps({"type": "text", "context_id": "x", "text": ["a"]}), "bad_request", "x"),
])
async def test_bad_message_gets_an_error_event_and_the_connection_stays_open(server, raw, code, context_id):
    async with open_session(server.ws_url) as session:
        await session.ws.send(raw)
        error = await session.until("error")
        assert error["code"] == code and error.get("context_id") == context_id and error["message"]
        await still_works(session)


async def test_binary_frame_is_refused_with_an_event(server):
    async with open_session(server.ws_url) as session:
        await session.ws.send(b"\x00\x01")
        assert (await session.until("error"))["code"] == "binary_not_supported"
        await still_works(session)


async def test_more_contexts_than_the_limit_are_refused(server):
    async with open_session(server.ws_url) as session:
        await session.start("a")
        await session.start("b")
        await session.send("start", context_id="c")
        error = await session.until("error", "c")
        assert error["code"] == "too_many_contexts"
        await session.send("cancel", context_id="a")
        await session.until("cancelled", "a")
        await still_works(session)  # a slot is free again


async def test_buffered_text_over_the_limit_cancels_the_context(server):
    async with open_session(server.ws_url) as session:
        await session.start("t")
        await session.send("text", context_id="t", text="word " * (MAX_TEXT // 5 + 1))
        assert (await session.until("error", "t"))["code"] == "text_too_long"
        await session.send("end", context_id="t")
        assert (await session.until("error", "t"))["code"] == "unknown_context"  # it was closed
        await still_works(session)


async def test_message_over_the_size_limit_closes_with_1009(server):
    async with open_session(server.ws_url) as session:
        await session.send("text", context_id="big", text="x" * MAX_MESSAGE)
        assert (await session.until_closed()).code == 1009


async def test_connections_over_the_limit_are_closed_with_1013(server_factory):
    server = server_factory(max_connections=2)
    async with open_session(server.ws_url), open_session(server.ws_url):
        assert (await refused(server.ws_url)).code == 1013
    async with open_session(server.ws_url) as session:  # a slot frees when a client leaves
        await still_works(session)


async def test_idle_connection_gets_an_event_then_close_1000(server_factory):
    server = server_factory(idle_timeout_s=0.5)
    async with open_session(server.ws_url) as session:
        error = await session.until("error", timeout=5)
        assert error["code"] == "idle_timeout"
        closed = await session.until_closed(timeout=5)
    assert (closed.code, closed.reason) == (1000, "idle timeout")
    assert session.log[-1] is error  # nothing came between the event and the close


KEY = "s3cret-key"


keyed_server = module_server(api_key=KEY)


class TestApiKey:

    @pytest.mark.parametrize("how", ["bearer", "x-api-key", "query", "subprotocol"])
    async def test_each_way_of_presenting_the_key_is_accepted(self, keyed_server, how):
        kwargs, url = {}, keyed_server.ws_url
        if how == "bearer":
            kwargs["additional_headers"] = {"Authorization": f"Bearer {KEY}"}
        elif how == "x-api-key":
            kwargs["additional_headers"] = {"X-API-Key": KEY}
        elif how == "query":
            url += f"?api_key={KEY}"
        else:
            kwargs["subprotocols"] = ["chatterbox", f"api-key.{KEY}"]
        async with open_session(url, **kwargs) as session:
            if how == "subprotocol":
                assert session.ws.subprotocol == "chatterbox"  # the key-less one offered: never the key
            await still_works(session)

    @pytest.mark.parametrize("headers", [{}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer wrong"}])
    async def test_missing_or_wrong_key_closes_with_1008(self, keyed_server, headers):
        assert (await refused(keyed_server.ws_url, additional_headers=headers)).code == 1008

    def test_http_routes_need_the_key_but_probes_and_metrics_do_not(self, keyed_server):
        for path in ("/health", "/ready", "/metrics"):  # kubelet and Prometheus cannot present a key
            assert keyed_server.get(path).status_code == 200
        for path in ("/optimization-status", "/v1/voices"):
            refused_response = keyed_server.get(path)
            assert refused_response.status_code == 401
            assert refused_response.json() == {"error": {"code": "unauthorized",
                                                         "message": "missing or invalid API key"}}
            assert keyed_server.get(path, headers={"X-API-Key": "nope"}).status_code == 401
            assert keyed_server.get(path, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
        assert keyed_server.get(f"/optimization-status?api_key={KEY}").status_code == 200
        assert keyed_server.post("/configure-streaming", json={"chunk_size": 60}).status_code == 401
