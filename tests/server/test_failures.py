"""Failures stay contained: an engine error, a client that vanishes, a client that stops reading."""

from __future__ import annotations

import asyncio
import socket
import time

from fake_engines import ToneEngine
from harness import metric_samples, wait_until_async
from stream_session import open_session


async def test_engine_error_fails_only_the_affected_context(server_factory):
    server = server_factory(engine=ToneEngine())
    async with open_session(server.ws_url) as session, open_session(server.ws_url) as other:
        await session.start("good")
        await session.start("bad")
        await other.start("elsewhere")
        await session.send("text", context_id="bad", text="This chunk will FAIL in the engine.")
        await session.send("text", context_id="good", text="This one is fine.")
        await other.send("text", context_id="elsewhere", text="So is this one.")
        for s, context_id in ((session, "bad"), (session, "good"), (other, "elsewhere")):
            await s.send("end", context_id=context_id)
        await session.until_all("error", ["bad"])
        await session.until_all("done", ["good"])
        (error,) = session.events("error", "bad")
        assert error["code"] == "engine_error" and "injected failure" in error["message"]
        assert session.events("done", "good")[0]["stats"]["audio_s"] > 0
        assert (await other.until("done", "elsewhere"))["stats"]["audio_s"] > 0
    assert not session.events("done", "bad")


async def test_cancel_aborts_in_flight_requests_at_once(server_factory):
    server = server_factory(engine=ToneEngine(endless=True, step_sleep_s=0.01))
    worker = server.app.state.worker
    async with open_session(server.ws_url) as session:
        channel = await session.start("c")
        await session.send("text", context_id="c", text="First sentence here. Second sentence there.")
        await session.send("flush", context_id="c")
        await session.first_audio(channel)
        assert worker.active_requests == 2  # both chunks synthesize concurrently
        await session.send("cancel", context_id="c")
        cancelled = await session.until("cancelled", "c")
        assert worker.active_requests == 0
        await asyncio.sleep(0.3)  # an endless engine would still be producing audio
        await session.send("start", context_id="later")
        await session.until("started", "later")
    assert not session.frames_after(cancelled, channel)


async def test_disconnect_mid_stream_frees_the_engine(server_factory):
    server = server_factory(engine=ToneEngine(endless=True, step_sleep_s=0.01))
    state = server.app.state
    async with open_session(server.ws_url) as session:
        channel = await session.start("c")
        await session.send("text", context_id="c", text="Keep talking until the client goes away.")
        await session.send("end", context_id="c")
        await session.first_audio(channel)
        assert state.worker.active_requests == 1
    await wait_until_async(lambda: state.worker.active_requests == 0)
    await wait_until_async(lambda: not state.runtime.connections)
    metrics = metric_samples(server)
    assert metrics["chatterbox_active_connections"] == 0 and metrics["chatterbox_active_streams"] == 0


def stalled_socket(port: int) -> socket.socket:
    """A connected socket with a tiny receive buffer, so a client that does not read stalls the server soon."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    return sock


async def test_slow_reader_is_dropped_without_stalling_other_connections(server_factory):
    server = server_factory(send_buffer_s=1.0, send_buffer_bytes=65536, synthetic_tokens_per_char=20)
    async with open_session(server.ws_url, sock=stalled_socket(server.settings.port), max_queue=1,
                            close_timeout=1) as slow:
        channel = await slow.start("s", output={"encoding": "pcm_f32le", "sample_rate": 48000})  # 14.4 s, 2.8 MB
        await slow.send("text", context_id="s", text="Nobody reads this.")
        await slow.send("end", context_id="s")
        await asyncio.sleep(0.5)  # the slow reader's socket is full by now

        started = time.monotonic()
        async with open_session(server.ws_url) as fast:
            await fast.speak("f", "Meanwhile this client is served as usual.")
        assert time.monotonic() - started < 5.0

        # Still not reading: more than send_buffer_s behind real time, the context is dropped.
        await wait_until_async(lambda: server.app.state.runtime.open_contexts == 0, timeout=10)
        error = await slow.until("error", "s", timeout=30)
        assert error["code"] == "slow_consumer"
        assert not slow.frames_after(error, channel)
        assert len(slow.audio(channel)) < 14 * 48000 * 4
