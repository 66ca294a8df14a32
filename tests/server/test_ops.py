"""Operational routes on a real server: readiness during warm-up, metrics, status, streaming defaults."""

from __future__ import annotations

import threading

import pytest

from app.server.app import STATIC_DIR
from fake_engines import ToneEngine
from harness import metric_samples, module_server, wait_until_async
from stream_session import open_session, refused


async def test_ready_is_503_until_the_engine_is_warm(server_factory):
    gate = threading.Event()
    server = server_factory(engine=ToneEngine(warmup_gate=gate), wait_ready=False)
    try:
        assert server.get("/health").status_code == 200
        response = server.get("/ready")
        assert (response.status_code, response.json()) == (503, {"ready": False, "reason": "warming up"})
        assert (await refused(server.ws_url)).code == 1013  # streams are refused until warm
    finally:
        gate.set()
    await wait_until_async(lambda: server.get("/ready").status_code == 200)
    assert server.get("/ready").json() == {"ready": True}


async def test_metrics_and_status_reflect_a_stream(server_factory):
    server = server_factory()
    async with open_session(server.ws_url) as session:
        await session.ws.send("not json")
        await session.until("error")
        done = await session.speak("m", "Counting what happens. Twice over.")
    assert server.get("/metrics").headers["content-type"].startswith("text/plain")
    values = metric_samples(server)
    assert values["chatterbox_ttfa_seconds_count{model=standard}"] == 1
    assert values["chatterbox_rtf_count{model=standard}"] >= 1
    assert values["chatterbox_speech_tokens_total{model=standard}"] > 0
    assert values["chatterbox_batch_size_count"] > 0
    assert values["chatterbox_errors_total{code=bad_json}"] == 1
    assert values["chatterbox_underruns_total"] == done["stats"]["underruns"]  # the only stream so far
    for gauge in ("chatterbox_active_streams", "chatterbox_queue_depth", "chatterbox_compile_seconds"):
        assert gauge in values

    status = server.get("/optimization-status").json()
    assert status["ready"] is True
    assert status["engine"]["engine"] == "espeak"
    assert status["worker"]["steps"] > 0 and status["worker"]["active_requests"] == 0


async def test_configure_streaming_sets_the_default_chunk_size_of_new_contexts(server_factory):
    server = server_factory()
    response = server.post("/configure-streaming", json={"chunk_size": 120})
    assert (response.status_code, response.json()) == (200, {"chunk_size": 120})
    async with open_session(server.ws_url) as session:
        assert session.ready["defaults"]["chunking"] == {"chunk_size": 120}


shared_server = module_server()


@pytest.mark.parametrize("body", [{"chunk_size": 10}, {"chunk_size": 201}, {"chunk_size": "50"},
                                  {"chunk_size": 50.5}, {}, {"chunk_size": 50, "other": 1}, [50], "{oops"])
def test_configure_streaming_rejects_bad_values_with_422(shared_server, body):
    if isinstance(body, str):
        response = shared_server.post("/configure-streaming", content=body.encode(),
                                      headers={"content-type": "application/json"})
    else:
        response = shared_server.post("/configure-streaming", json=body)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_settings" and error["message"]
    assert shared_server.get("/ready").status_code == 200


def test_configure_streaming_refuses_a_large_body_with_413(shared_server):
    padded = b'{"chunk_size": 60, "pad": "' + b"x" * 1_000_000 + b'"}'
    response = shared_server.post("/configure-streaming", content=padded,
                                  headers={"content-type": "application/json"})
    assert response.status_code == 413 and response.json()["error"]["code"] == "body_too_large"
    chunked = shared_server.post("/configure-streaming", content=iter([padded[:600], padded[600:]]),
                                  headers={"content-type": "application/json"})  # no length
    assert chunked.status_code == 413
    assert shared_server.post("/configure-streaming", json={"chunk_size": 50}).status_code == 200  # control


@pytest.mark.skipif(not (STATIC_DIR / "index.html").is_file(), reason="no demo page in static/")
def test_demo_page_is_served_at_root_even_with_an_api_key(server_factory):
    server = server_factory(api_key="k")
    page = server.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert server.get("/optimization-status").status_code == 401
