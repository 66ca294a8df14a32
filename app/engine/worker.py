"""The single owner of the engine in a process: a thread that steps it, fed by a queue.

The asyncio side never touches the engine: it posts commands (add, abort, call) to the worker's inbox and
receives outputs on per-request asyncio queues. Every running request is advanced by the same `engine.step()`,
so the engine is free to batch them (continuous batching: requests join and leave between steps).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from app.engine.base import Engine
from app.engine.types import EngineError, EngineOutput, EngineRequest

log = logging.getLogger(__name__)


@dataclass
class WorkerStats:
    steps: int = 0
    busy_seconds: float = 0.0
    last_batch_size: int = 0


class RequestHandle:
    """The asyncio end of one request: iterate it for outputs; `cancel()` frees the engine's slot at once."""

    def __init__(self, worker: EngineWorker, request: EngineRequest):
        self.request = request
        self._worker = worker
        self._queue: asyncio.Queue[EngineOutput] = asyncio.Queue()
        self.finished = False
        self.cancelled = False

    @property
    def request_id(self) -> str:
        return self.request.request_id

    def cancel(self) -> None:
        if not self.finished:
            self.cancelled = True
            self.finished = True
            self._worker._abort(self.request_id)
            self._queue.put_nowait(EngineOutput.ended(self.request_id))

    def _deliver(self, output: EngineOutput) -> None:
        if not self.cancelled:
            self._queue.put_nowait(output)

    async def __aiter__(self) -> AsyncIterator[EngineOutput]:
        while True:
            output = await self._queue.get()
            if output.error is not None:
                self.finished = True
                raise output.error
            if self.cancelled and not output.finished:
                continue
            yield output
            if output.finished:
                self.finished = True
                return


class EngineWorker:
    def __init__(self, engine: Engine, on_step: Callable[[int, float], None] | None = None):
        self.engine = engine
        self.stats = WorkerStats()
        self._on_step = on_step  # (requests advanced, seconds) for metrics
        self._inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._handles: dict[str, RequestHandle] = {}  # asyncio side
        self._live: set[str] = set()  # worker thread: requests the engine holds
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False

    # ---- asyncio side -------------------------------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="engine-worker", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        self._stopping = True
        self._inbox.put(("wake", None))
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 10)

    def submit(self, request: EngineRequest) -> RequestHandle:
        if request.request_id in self._handles:
            raise EngineError("duplicate_request", f"request {request.request_id} is already running")
        handle = RequestHandle(self, request)
        self._handles[request.request_id] = handle
        self._inbox.put(("add", request))
        return handle

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn(*args)` on the worker thread (the device owner) between steps, and await its result."""
        future: Future = Future()
        self._inbox.put(("call", (future, fn, args)))
        return await asyncio.wrap_future(future)

    @property
    def active_requests(self) -> int:
        return len(self._handles)

    def _abort(self, request_id: str) -> None:
        self._handles.pop(request_id, None)
        self._inbox.put(("abort", request_id))

    def _deliver(self, output: EngineOutput) -> None:
        handle = self._handles.get(output.request_id)
        if handle is None:
            return
        if output.finished or output.error is not None:
            self._handles.pop(output.request_id, None)
        handle._deliver(output)

    # ---- worker thread ------------------------------------------------------------------------------------
    # `_run` is the single owner of engine failures: whatever an engine call raises fails the request(s) it
    # concerns and nothing else, and the thread goes on.

    def _run(self) -> None:
        while not self._stopping:
            self._drain_inbox(block=not self.engine.has_unfinished())
            if self._stopping or not self.engine.has_unfinished():
                continue
            self._step_once()

    def _drain_inbox(self, block: bool) -> None:
        try:
            command = self._inbox.get(timeout=0.5) if block else self._inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            self._apply(*command)
            try:
                command = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _apply(self, kind: str, payload: Any) -> None:
        if kind == "add":
            self._add(payload)
        elif kind == "abort":
            self._forget(payload)
        elif kind == "call":
            future, fn, args = payload
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args))
                except BaseException as exc:  # handed to the awaiting coroutine
                    future.set_exception(exc)

    def _add(self, request: EngineRequest) -> None:
        try:
            self.engine.add_request(request)
        except Exception as exc:
            log.exception("engine refused request %s", request.request_id)
            self._forget(request.request_id)
            self._post([EngineOutput.failed(request.request_id, EngineError.wrap(exc, "request refused"))])
            return
        self._live.add(request.request_id)

    def _forget(self, request_id: str) -> None:
        """Abort a request in the engine; a failing abort is logged (the request is over either way)."""
        self._live.discard(request_id)
        try:
            self.engine.abort_request(request_id)
        except Exception:
            log.exception("engine failed to abort request %s", request_id)

    def _step_once(self) -> None:
        started = time.perf_counter()
        try:
            outputs = self.engine.step()
        except Exception:
            log.exception("engine step failed; retrying its requests one at a time")
            outputs = self._step_one_by_one()
        elapsed = time.perf_counter() - started
        self._account(len(outputs), elapsed)
        if self._on_step is not None:
            self._on_step(len(outputs), elapsed)
        self._post(outputs)

    def _step_one_by_one(self) -> list[EngineOutput]:
        """After a failed step: each live request alone, so only the one(s) whose own step fails are failed."""
        outputs = []
        for request_id in sorted(self._live):
            try:
                outputs += self.engine.step(only={request_id})
            except Exception as exc:
                log.exception("engine step failed for %s", request_id)
                self._forget(request_id)
                outputs.append(EngineOutput.failed(request_id, EngineError.wrap(exc, "synthesis failed")))
        return outputs

    def _post(self, outputs: list[EngineOutput]) -> None:
        for output in outputs:
            if output.finished or output.error is not None:
                self._live.discard(output.request_id)
        if outputs and self._loop is not None:
            self._loop.call_soon_threadsafe(self._deliver_all, outputs)

    def _account(self, batch_size: int, elapsed: float) -> None:
        self.stats.steps += 1
        self.stats.busy_seconds += elapsed
        self.stats.last_batch_size = batch_size

    def _deliver_all(self, outputs: list[EngineOutput]) -> None:
        for output in outputs:
            self._deliver(output)
