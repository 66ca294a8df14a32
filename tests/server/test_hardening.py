"""No client can starve, stall or exhaust the server for the others (issue 11, server side), against the real
server: keyless sockets with a key set, clients that never read, slow readers, floods of chunks, clients
waiting on the engine, per-key caps, non-JSON bodies, voice ids, MP3 off the event loop.

Each test asserts what the OTHER clients see (they connect, get their audio, within a stated bound) and has
a control where it makes sense.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from app.audio.encode import Mp3StreamEncoder
from app.server.core.outbox import REPLY_SHARE
from fake_engines import ToneEngine
from harness import Deadline, RunningServer, module_server, wait_until_async
from stream_session import Frame, Session, open_session, refused

KEY = "hardening-key"
KEY_HEADERS = {"X-API-Key": KEY}
JSON = {"content-type": "application/json"}
# Time to first audio an innocent client must get while another floods the server (espeak engine, 2 CPU cores
# shared with the test client and the flooder): the flood's own chunks must not queue ahead of it.
FLOOD_TTFA_BOUND_S = 1.0


def elevenlabs_url(server: RunningServer, multi: bool = True) -> str:
    kind = "multi-stream-input" if multi else "stream-input"
    return f"ws://127.0.0.1:{server.settings.port}/v1/text-to-speech/default/{kind}"


def small_socket(server: RunningServer, receive_buffer: int = 8192) -> socket.socket:
    """A client socket with a small kernel receive buffer, so a client that stops reading backs the server up
    within a second."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.connect(("127.0.0.1", server.settings.port))
    return sock


def the_connection(server: RunningServer) -> Any:
    (connection,) = server.app.state.runtime.connections
    return connection


async def read_to_close(ws: Any) -> list[dict[str, Any]]:
    """Every JSON message until the server closes (whatever the code)."""
    messages = []
    with contextlib.suppress(ConnectionClosed):
        async for message in ws:
            messages.append(json.loads(message))
    return messages


class HeldEngine(ToneEngine):
    """A ToneEngine whose steps wait for `release` (or 20 s): requests stay queued in the engine meanwhile."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def step(self):  # type: ignore[no-untyped-def]
        self.release.wait(20)
        return super().step()


@contextlib.asynccontextmanager
async def release_at_exit(engine: HeldEngine) -> Any:
    try:
        yield
    finally:
        engine.release.set()


# ---- authentication before admission ------------------------------------------------------------------------

async def test_keyless_sockets_take_no_connection_slot_from_authorized_clients(server_factory):
    server = server_factory(api_key=KEY, max_connections=4, auth_timeout_s=4.0)
    # 4 wait for a first message in a pool of their own; the rest are told to try again later.
    keyless = await asyncio.gather(*(connect(elevenlabs_url(server), open_timeout=10) for _ in range(264)))
    try:
        async with open_session(server.ws_url, additional_headers=KEY_HEADERS) as session:
            done = await session.speak("a", "Authorized clients still get their audio.")
            assert done["stats"]["audio_s"] > 0.5
        # The limit still holds for authorized sockets (control): the fifth is told to try again later.
        async with contextlib.AsyncExitStack() as stack:
            for _ in range(4):
                await stack.enter_async_context(open_session(server.ws_url, additional_headers=KEY_HEADERS))
            assert (await refused(server.ws_url, additional_headers=KEY_HEADERS)).code == 1013
        # Keyless sockets end with 1013 at once while the pool is full, or with 1008 once their deadline passed.
        deadline = Deadline(20)
        codes = []
        for ws in keyless:
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await asyncio.wait_for(ws.recv(), deadline.left())
            assert closed.value.rcvd is not None
            codes.append(closed.value.rcvd.code)
        assert set(codes) == {1008, 1013} and codes.count(1013) >= 200
    finally:
        for ws in keyless:
            await ws.close()


async def test_a_key_in_the_first_message_is_accepted_and_a_wrong_one_refused(server_factory):
    server = server_factory(api_key=KEY, auth_timeout_s=3.0)
    async with connect(elevenlabs_url(server, multi=False)) as ws:
        await ws.send(json.dumps({"text": " ", "xi_api_key": KEY}))
        await ws.send(json.dumps({"text": "Hello there. "}))
        await ws.send(json.dumps({"text": ""}))
        messages = [json.loads(message) async for message in ws]
        assert messages[-1]["isFinal"] is True and any(m.get("audio") for m in messages)
    async with connect(elevenlabs_url(server, multi=False)) as ws:
        await ws.send(json.dumps({"text": " ", "xi_api_key": "wrong"}))
        messages = await read_to_close(ws)
        assert messages == [{"message": messages[0]["message"], "error": "invalid_api_key", "code": 1008}]
        assert ws.close_code == 1008
    assert not server.app.state.runtime.connections  # neither holds a slot now


# ---- bounded memory per connection --------------------------------------------------------------------------

async def test_a_client_that_floods_bad_messages_and_never_reads_is_closed_with_bounded_replies(server_factory):
    limit = 65536
    server = server_factory(max_send_queue_bytes=limit, send_buffer_bytes=4096)
    async with connect(server.ws_url, sock=small_socket(server), max_queue=1, close_timeout=1) as ws:
        await wait_until_async(lambda: len(server.app.state.runtime.connections) == 1)
        connection = the_connection(server)
        most_queued = 0
        with contextlib.suppress(ConnectionClosed, TimeoutError):
            for _ in range(200_000):
                await asyncio.wait_for(ws.send("not json " * 20), 1.0)
                most_queued = max(most_queued, connection.outbox.queued_bytes)
                if connection.outbox.closing:
                    break
        assert connection.outbox.closing, "the flood never filled the reply queue"
        assert most_queued <= limit // REPLY_SHARE
        ready, *errors = await read_to_close(ws)  # now it reads
        assert ready["type"] == "ready" and errors and {error["code"] for error in errors} == {"bad_json"}
        assert ws.close_code == 1008 and "not read" in ws.close_reason
    await wait_until_async(lambda: not server.app.state.runtime.connections)


async def test_a_client_that_reads_its_replies_may_send_as_many_bad_messages(server_factory):
    """Control: the bound is on replies waiting to be read, not on mistakes."""
    server = server_factory(max_send_queue_bytes=65536)
    async with open_session(server.ws_url) as session:
        for _ in range(5):
            for _ in range(200):
                await session.ws.send("not json " * 20)
            for _ in range(200):
                assert (await session.recv())["code"] == "bad_json"  # type: ignore[index]
        assert (await session.speak("ok", "Still open."))["stats"]["audio_s"] > 0


async def test_a_context_over_its_share_gets_slow_consumer_and_the_others_go_on(server_factory):
    """Nobody reads for two seconds while one context produces far more than the queue holds: that context
    alone is dropped with `slow_consumer`; the other one's audio and `done` arrive, and keepalive pings (every
    0.5 s, unanswered meanwhile) do not close the connection with 1011."""
    server = server_factory(max_send_queue_bytes=256 * 1024, send_buffer_bytes=4096, ping_interval_s=0.5,
                            send_buffer_s=5.0)
    async with connect(server.ws_url, sock=small_socket(server), max_queue=1, max_size=None) as ws:
        session = Session(ws)
        assert (await session.recv())["type"] == "ready"  # type: ignore[index]
        big = await session.start("big", output={"encoding": "pcm_f32le", "sample_rate": 48000})
        small = await session.start("small", output={"encoding": "pcm_s16le", "sample_rate": 8000})
        await session.send("text", context_id="big", text="A long reply that nobody reads in time. " * 20)
        await session.send("end", context_id="big")
        await session.send("text", context_id="small", text="A short reply.")
        await session.send("end", context_id="small")
        await asyncio.sleep(2.0)  # not reading
        error = await session.until("error", "big", timeout=20)
        assert error["code"] == "slow_consumer"
        if not session.events("done", "small"):
            await session.until("done", "small", timeout=20)
        assert not session.frames_after(error, big)
        assert not session.events("done", "big")
        assert len(session.audio(small)) > 0.5 * 8000 * 2
        assert ws.close_code is None  # still open: no 1011 keepalive timeout
        assert (await session.speak("after", "And it goes on."))["stats"]["audio_s"] > 0


# ---- a client waiting for its audio is not idle -------------------------------------------------------------

async def test_a_client_waiting_for_the_engine_is_not_idle(server_factory):
    engine = HeldEngine()
    server = server_factory(engine=engine, idle_timeout_s=1.0)
    async with open_session(server.ws_url) as waiting, open_session(server.ws_url) as silent, \
            release_at_exit(engine):
        channel = await waiting.start("w")
        await waiting.send("text", context_id="w", text="Held in the engine.")
        await waiting.send("end", context_id="w")
        # Control: a connection with nothing pending is closed as idle meanwhile.
        assert (await silent.until("error", timeout=5))["code"] == "idle_timeout"
        assert (await silent.until_closed(5)).code == 1000  # type: ignore[union-attr]
        await asyncio.sleep(1.0)  # the waiting client has now sent nothing for twice its idle limit
        engine.release.set()
        await waiting.until("done", "w", timeout=10)
        assert waiting.audio(channel) and not waiting.events("error")


# ---- per-client limits on volume ----------------------------------------------------------------------------

async def test_a_context_over_the_request_quota_fails_and_its_connection_goes_on(server_factory):
    engine = HeldEngine()
    server = server_factory(engine=engine, max_running_requests_per_connection=2,
                            max_queued_requests_per_connection=3)
    async with open_session(server.ws_url) as session, release_at_exit(engine):
        await session.start("flood")
        for word in ["one", "two", "three", "four", "five", "six"]:  # the sixth is one too many
            await session.send("text", context_id="flood", text=word + " ")
            await session.send("flush", context_id="flood")
        error = await session.until("error", "flood", timeout=5)
        assert error["code"] == "too_many_requests"
        assert server.app.state.worker.active_requests == 0  # the context's requests were all withdrawn
        channel = await session.start("next")  # the failed context's share is free again
        await session.send("text", context_id="next", text="Next one.")
        await session.send("end", context_id="next")
        engine.release.set()
        await session.until("done", "next", timeout=10)
        assert session.audio(channel)


async def test_the_quota_holds_a_connections_extra_chunks_back_in_order(server_factory):
    """Control: within the quota nothing fails; chunks beyond the running limit wait and are spoken in order."""
    server = server_factory(max_running_requests_per_connection=1, max_queued_requests_per_connection=10)
    async with open_session(server.ws_url) as session:
        await session.start("c")
        words = ["alpha", "bravo", "charlie", "delta", "echo"]
        for word in words:
            await session.send("text", context_id="c", text=word + " ")
            await session.send("flush", context_id="c")
        await session.send("end", context_id="c")
        await session.until("done", "c")
        assert [e["text"].strip() for e in session.events("chunk_started", "c")] == words
        assert not session.events("error")


async def test_per_key_context_cap_spans_connections(server_factory):
    server = server_factory(api_key=KEY, max_contexts_per_key=2)
    async with open_session(server.ws_url, additional_headers=KEY_HEADERS) as first, \
            open_session(server.ws_url, additional_headers=KEY_HEADERS) as second:
        await first.start("a")
        await first.start("b")
        await second.send("start", context_id="c")
        assert (await second.until("error", "c"))["code"] == "too_many_contexts"
        await first.send("cancel", context_id="a")
        await first.until("cancelled", "a")
        await second.start("c")  # a slot of the key is free again


async def test_a_flood_of_one_word_chunks_does_not_delay_another_clients_first_audio(server_factory):
    server = server_factory()
    worker = server.app.state.worker
    most_in_engine = 0
    flushed = 0

    async def watch_engine() -> None:
        nonlocal most_in_engine
        while True:
            most_in_engine = max(most_in_engine, worker.active_requests)
            await asyncio.sleep(0.005)

    async def flood(session: Session) -> None:
        nonlocal flushed
        for _ in range(4000):
            await session.send("text", context_id="f", text="word ")
            await session.send("flush", context_id="f")
            flushed += 1

    async def drain(session: Session) -> None:
        with contextlib.suppress(ConnectionClosed, TimeoutError):
            while True:
                await session.recv(30)

    async with open_session(server.ws_url) as flooder, open_session(server.ws_url) as victim:
        channel = await victim.start("v")
        watcher = asyncio.create_task(watch_engine())
        reader = asyncio.create_task(drain(flooder))
        flooding = asyncio.create_task(flood(flooder))
        await wait_until_async(lambda: flushed >= 3000, timeout=30)  # deep into the flood
        sent = time.monotonic()
        await victim.send("text", context_id="v", text="Am I heard?")
        await victim.send("flush", context_id="v")
        frame = await victim.first_audio(channel, timeout=10)
        ttfa = time.monotonic() - sent
        await flooding
        for task in (watcher, reader):
            task.cancel()
    assert isinstance(frame, Frame)
    assert ttfa < FLOOD_TTFA_BOUND_S, f"first audio after {ttfa:.2f} s"
    limit = server.settings.max_running_requests_per_connection
    assert most_in_engine <= limit + 1  # the flooder's running quota, plus the victim's chunk


# ---- HTTP: JSON only, voice ids -----------------------------------------------------------------------------

http_server = module_server()


@pytest.mark.parametrize("path", ["/synthesize", "/v1/audio/speech", "/configure-streaming"])
@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_json_routes_refuse_other_content_types(http_server, path, content_type):
    body = json.dumps({"text": "Hi.", "input": "Hi.", "model": "tts-1", "chunk_size": 50}).encode()
    headers = {} if content_type is None else {"content-type": content_type}
    response = http_server.post(path, content=body, headers=headers)
    assert response.status_code == 415
    error = response.json()["error"]
    assert error["code"] in ("unsupported_media_type",) and "application/json" in error["message"]


def test_json_routes_take_json_with_a_charset(http_server):
    """Control for the test above."""
    headers = {"content-type": "application/json; charset=utf-8"}
    assert http_server.post("/synthesize", content=b'{"text": "Hi."}', headers=headers).status_code == 200


@pytest.mark.parametrize("voice", ["default\n", "default\r\n", " default"])
def test_voice_ids_must_match_whole(http_server, voice):
    response = http_server.post("/synthesize", json={"text": "Hi.", "voice": voice})
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_voice_name"
    assert http_server.post("/synthesize", json={"text": "Hi.", "voice": "default"}).status_code == 200


# ---- CPU-heavy encoding off the event loop ------------------------------------------------------------------

async def test_mp3_streams_are_encoded_off_the_event_loop(server_factory, monkeypatch):
    threads: list[str] = []
    encode = Mp3StreamEncoder.encode

    def recording_encode(self, pcm):  # type: ignore[no-untyped-def]
        threads.append(threading.current_thread().name)
        return encode(self, pcm)

    monkeypatch.setattr(Mp3StreamEncoder, "encode", recording_encode)
    server = server_factory()
    async with connect(elevenlabs_url(server, multi=False)) as ws:
        for text in (" ", "One sentence spoken in several pieces. And a second one. ", ""):
            await ws.send(json.dumps({"text": text}))
        messages = [json.loads(message) async for message in ws]
    assert messages[-1]["isFinal"] is True
    assert threads and not any(name.startswith("uvicorn-") for name in threads)


# ---- hostile text cannot hold the event loop ----------------------------------------------------------------

# How long one client message may hold the event loop (every other client waits that long). The quadratic
# markdown-link pattern held it about 1.5 s for one such message; linear patterns take milliseconds.
LOOP_HOLD_BOUND_S = 0.5
HOSTILE_TEXTS = ["](" * 9990, "." * 19_990 + "x", "[" * 19_990, "a" * 19_990]


async def test_hostile_text_does_not_hold_the_event_loop_for_the_others(server_factory):
    server = server_factory()
    worst = 0.0
    done = False

    async def probe_health() -> None:
        """The longest gap between two answers to a client polling /health. The server runs in this process,
        so a held loop (and the GIL a regex holds) shows as a gap wherever it falls between two polls."""
        nonlocal worst
        async with httpx.AsyncClient(base_url=server.base_url) as client:
            last = time.monotonic()
            while not done:
                assert (await client.get("/health")).status_code == 200
                now = time.monotonic()
                worst, last = max(worst, now - last), now
                await asyncio.sleep(0.01)

    async with open_session(server.ws_url) as attacker:
        prober = asyncio.create_task(probe_health())
        await asyncio.sleep(0.2)
        for i, text in enumerate(HOSTILE_TEXTS):
            await attacker.start(f"h{i}")
            await attacker.send("text", context_id=f"h{i}", text=text)
            await attacker.send("cancel", context_id=f"h{i}")
        async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
            for text in HOSTILE_TEXTS[:3]:  # they say (almost) nothing; the last would be read out in full
                response = await client.post("/synthesize", json={"text": text, "response_format": "pcm"})
                assert response.status_code in (200, 422)
        done = True
        await prober
    assert worst < LOOP_HOLD_BOUND_S, f"/health went unanswered for {worst:.2f} s behind hostile text"
