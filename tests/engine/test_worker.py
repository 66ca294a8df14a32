"""The engine worker with a fake engine: any exception from any engine entry point fails only the request it
concerns; the thread lives on; cancellation frees the engine's slot."""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from typing import Any

import numpy as np
import pytest
from harness import wait_until_async

from app.engine.base import Engine
from app.engine.types import EngineError, EngineInfo, EngineOutput, EngineRequest
from app.engine.worker import EngineWorker

PIECES = 3  # outputs per request


class FakeEngine(Engine):
    """Every request yields PIECES one-sample outputs, one per step; text names a fault to raise."""

    info = EngineInfo(name="fake", device="cpu", dtype="float32")

    def __init__(self) -> None:
        self.running: dict[str, list] = {}  # request id -> [request, pieces emitted]
        self.aborted: list[str] = []
        self.steps = 0

    def add_request(self, request: EngineRequest) -> None:
        if request.text == "raise in add":
            raise RuntimeError("add exploded")
        self.running[request.request_id] = [request, 0]

    def abort_request(self, request_id: str) -> None:
        self.aborted.append(request_id)
        entry = self.running.pop(request_id, None)
        if entry is not None and entry[0].text == "raise in abort":
            raise RuntimeError("abort exploded")

    def step(self, only: Collection[str] | None = None) -> list[EngineOutput]:
        self.steps += 1
        chosen = [entry for request_id, entry in self.running.items() if only is None or request_id in only]
        if any(request.text == "raise in step" for request, _ in chosen):
            raise RuntimeError("step exploded")  # before any request advanced, as the contract asks
        outputs = []
        for entry in chosen:
            entry[1] += 1
            outputs.append(EngineOutput(entry[0].request_id, np.ones(1, np.float32), finished=entry[1] >= PIECES))
        for output in outputs:
            if output.finished:
                del self.running[output.request_id]
        return outputs

    def has_unfinished(self) -> bool:
        return bool(self.running)

    def default_voice(self) -> Any:
        return None

    def embed_voice(self, wav: np.ndarray, sample_rate: int) -> Any:
        return None

    def save_voice(self, voice: Any, path: str) -> None:
        pass

    def load_voice(self, path: str) -> Any:
        return None


@pytest.fixture
async def worker():
    engine = FakeEngine()
    worker = EngineWorker(engine)
    worker.start()
    yield worker
    await worker.stop()


async def collect(handle) -> list[EngineOutput]:
    return [output async for output in handle]


async def outcome(handle) -> str | int:
    """The error code a request ended with, or how many outputs it produced."""
    try:
        return len(await asyncio.wait_for(collect(handle), timeout=10))
    except EngineError as error:
        return error.code


@pytest.mark.parametrize("fault", ["raise in add", "raise in step"])
async def test_a_failing_entry_point_fails_only_its_request(worker, fault):
    handles = [worker.submit(EngineRequest(f"good-{i}", "fine", None)) for i in range(3)]
    bad = worker.submit(EngineRequest("bad", fault, None))
    results = await asyncio.gather(*(outcome(h) for h in [bad, *handles]))
    assert results == ["engine_error", PIECES, PIECES, PIECES]
    assert worker._thread.is_alive() and worker.active_requests == 0
    assert await outcome(worker.submit(EngineRequest("after", "fine", None))) == PIECES  # still serving


async def test_a_failing_abort_does_not_kill_the_worker(worker):
    doomed = worker.submit(EngineRequest("doomed", "raise in abort", None))
    doomed.cancel()
    good = worker.submit(EngineRequest("good", "fine", None))
    assert await outcome(good) == PIECES
    await wait_until_async(lambda: "doomed" in worker.engine.aborted)
    assert worker._thread.is_alive()
    assert await outcome(worker.submit(EngineRequest("after", "fine", None))) == PIECES


async def test_an_engine_error_keeps_its_code(worker, monkeypatch):
    def refuse(request: EngineRequest) -> None:
        raise EngineError("no_capacity", "full")

    monkeypatch.setattr(worker.engine, "add_request", refuse)
    assert await outcome(worker.submit(EngineRequest("refused", "fine", None))) == "no_capacity"


async def test_negative_control_without_faults_every_request_completes(worker):
    handles = [worker.submit(EngineRequest(f"r{i}", "fine", None)) for i in range(4)]
    assert await asyncio.gather(*(outcome(h) for h in handles)) == [PIECES] * 4


async def test_cancel_ends_the_request_and_frees_the_engine(worker):
    handle = worker.submit(EngineRequest("long", "fine", None))
    handle.cancel()
    outputs = await collect(handle)
    assert outputs[-1].finished and outputs[-1].pcm.size == 0  # the cancel's own end marker
    assert worker.active_requests == 0
    await wait_until_async(lambda: "long" in worker.engine.aborted)
    assert not worker.engine.has_unfinished()


async def test_a_duplicate_request_id_is_refused(worker):
    worker.submit(EngineRequest("same", "fine", None))
    with pytest.raises(EngineError) as error:
        worker.submit(EngineRequest("same", "fine", None))
    assert error.value.code == "duplicate_request"
