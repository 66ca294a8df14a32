"""SIGTERM on the real `python -m app.cli serve`: drain, let open contexts finish, close with 1001, exit 0."""

from __future__ import annotations

import asyncio
import signal

from harness import make_settings, run_server_process
from stream_session import open_session, refused


async def test_sigterm_lets_the_open_context_finish_then_exits_zero(tmp_path):
    with run_server_process(make_settings(tmp_path, drain_timeout_s=20)) as server:
        async with open_session(server.ws_url) as session:
            channel = await session.start("d")
            await session.send("text", context_id="d", text="The server is asked to stop, while I am talking.")
            await session.first_audio(channel)

            server.process.send_signal(signal.SIGTERM)
            for _ in range(100):
                ready = await asyncio.to_thread(server.get, "/ready")
                if ready.status_code == 503:
                    break
                await asyncio.sleep(0.05)
            assert (ready.status_code, ready.json()) == (503, {"ready": False, "reason": "draining"})
            assert (await asyncio.to_thread(server.get, "/health")).status_code == 200

            assert (await refused(server.ws_url)).code == 1001  # no new connections...
            await session.send("start", context_id="late")  # ...and no new contexts
            assert (await session.until("error", "late"))["code"] == "shutting_down"

            await session.send("text", context_id="d", text=" But I may finish my sentence.")
            await session.send("end", context_id="d")
            done = await session.until("done", "d")
            assert done["stats"]["audio_s"] > 2.0
            assert (await session.until_closed()).code == 1001
        assert await asyncio.to_thread(server.process.wait, 15) == 0


async def test_drain_deadline_closes_lingering_connections_with_1001(tmp_path):
    with run_server_process(make_settings(tmp_path, drain_timeout_s=0.5)) as server:
        async with open_session(server.ws_url) as session:
            await session.start("never-ends")
            await session.send("text", context_id="never-ends", text="I never send end.")
            server.process.send_signal(signal.SIGTERM)
            assert (await session.until_closed()).code == 1001
        assert await asyncio.to_thread(server.process.wait, 15) == 0
