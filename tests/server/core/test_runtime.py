"""The runtime's one registry of open streams: the gauge, admission refusals, and what a drain waits for,
stops and closes (no server: the runtime alone)."""

from __future__ import annotations

import asyncio

from app.metrics import Metrics
from app.server.core.runtime import Runtime
from app.text.chunker import ChunkerConfig


class FakeConnection:
    def __init__(self) -> None:
        self.closed_with: tuple[int, str] | None = None

    async def close(self, code: int, reason: str) -> None:
        self.closed_with = (code, reason)


def active_streams(metrics: Metrics) -> float:
    return metrics.registry.get_sample_value("chatterbox_active_streams")


def test_refusal_names_warming_up_then_nothing_then_shutting_down():
    runtime = Runtime(ChunkerConfig(), metrics=Metrics())
    assert (runtime.refusal().code, runtime.refusal().status) == ("warming_up", 503)
    runtime.mark_ready()
    assert runtime.refusal() is None
    runtime.draining = True
    assert (runtime.refusal().code, runtime.refusal().status) == ("shutting_down", 503)


def test_a_stream_counts_once_however_often_it_is_closed():
    metrics = Metrics()
    runtime = Runtime(ChunkerConfig(), metrics=metrics)
    first, second = runtime.open_stream(stop=lambda: None), runtime.open_stream(stop=lambda: None)
    assert (runtime.open_contexts, active_streams(metrics)) == (2, 2)
    first.close()
    first.close()
    assert (runtime.open_contexts, active_streams(metrics)) == (1, 1)
    second.close()
    assert (runtime.open_contexts, active_streams(metrics)) == (0, 0)


async def test_drain_returns_when_the_last_stream_closes_without_stopping_it():
    runtime = Runtime(ChunkerConfig(), metrics=Metrics())
    stopped: list[str] = []
    stream = runtime.open_stream(stop=lambda: stopped.append("stopped"))
    connection = FakeConnection()
    runtime.connections.add(connection)
    drain = asyncio.create_task(runtime.drain(timeout_s=10))
    await asyncio.sleep(0.05)
    assert not drain.done() and runtime.draining  # it waits for the open stream
    stream.close()
    await asyncio.wait_for(drain, 2)
    assert stopped == [] and connection.closed_with == (1001, "server shutting down")


async def test_drain_past_its_deadline_stops_what_is_still_open():
    runtime = Runtime(ChunkerConfig(), metrics=Metrics())
    stopped: list[str] = []
    runtime.open_stream(stop=lambda: stopped.append("stopped"))
    await asyncio.wait_for(runtime.drain(timeout_s=0.05), 2)
    assert stopped == ["stopped"]
