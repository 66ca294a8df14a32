"""Per-client limits on volume, so one client cannot fill the engine's queue for everyone else.

A `RequestQuota` belongs to one WebSocket connection: at most `max_running` of its engine requests are in the
engine at once; the later ones wait here, in the order they were released, and are submitted as earlier ones
finish (the engine's scheduler then shares its rows fairly across connections, by `EngineRequest.client`).
At most `max_waiting` may wait; one more is refused with `too_many_requests`. With API keys, a `KeyUsage`
counts the open contexts and the requests (running or waiting) of every connection presenting one key.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable

from app.errors import ClientError


def key_id(api_key: str) -> str:
    """A short, stable name for an API key that reveals nothing of it (logs, fairness, per-key counts)."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:16]


class KeyUsage:
    """What every connection presenting one API key holds; a limit of 0 means no limit."""

    def __init__(self, max_contexts: int, max_requests: int):
        self.max_contexts = max_contexts
        self.max_requests = max_requests
        self.contexts = 0
        self.requests = 0

    def check_context(self) -> None:
        if self.max_contexts and self.contexts >= self.max_contexts:
            raise ClientError("too_many_contexts", f"at most {self.max_contexts} open contexts per API key")

    def check_request(self) -> None:
        if self.max_requests and self.requests >= self.max_requests:
            raise ClientError("too_many_requests", f"at most {self.max_requests} chunks per API key may be "
                                                   "running or waiting for the engine; context cancelled")


class Ticket:
    """One engine request's place in its quota; `done()` once it finished or was cancelled (idempotent)."""

    def __init__(self, quota: RequestQuota, start: Callable[[], None], key: KeyUsage | None):
        self._quota = quota
        self._start = start
        self.key = key  # counted there until done, even if its connection has let go of the key by then
        self.started = False
        self.ended = False

    def done(self) -> None:
        self._quota._done(self)


class RequestQuota:
    def __init__(self, max_running: int, max_waiting: int, key: KeyUsage | None = None):
        self.max_running = max_running
        self.max_waiting = max_waiting
        self.key = key
        self.running = 0
        self.waiting = 0
        self._waiting: deque[Ticket] = deque()  # may still hold tickets that ended (cancelled) while waiting

    def admit(self, start: Callable[[], None]) -> Ticket:
        """Run `start` (which submits the request) now if there is room, or once there is; `ClientError`
        (`too_many_requests`) when the client already has as many waiting as it may."""
        if self.running >= self.max_running and self.waiting >= self.max_waiting:
            raise ClientError("too_many_requests", f"more than {self.max_running + self.max_waiting} chunks of "
                                                   "this connection running or waiting for the engine; context "
                                                   "cancelled")
        if self.key is not None:
            self.key.check_request()
            self.key.requests += 1
        ticket = Ticket(self, start, self.key)
        if self.running < self.max_running:
            self._start(ticket)
        else:
            self._waiting.append(ticket)
            self.waiting += 1
        return ticket

    def _start(self, ticket: Ticket) -> None:
        self.running += 1
        ticket.started = True
        ticket._start()

    def _done(self, ticket: Ticket) -> None:
        if ticket.ended:
            return
        ticket.ended = True
        if ticket.key is not None:
            ticket.key.requests -= 1
        if not ticket.started:
            self.waiting -= 1  # left in the deque, skipped when its turn comes (a cancel stays O(1))
            return
        self.running -= 1
        while self._waiting and self.running < self.max_running:
            waiting = self._waiting.popleft()
            if not waiting.ended:
                self.waiting -= 1
                self._start(waiting)
