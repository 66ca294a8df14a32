"""Deadline-aware scheduling of engine sequences (the policy; the model runner does the work).

Every sequence has a *dry time*: the moment its listener runs out of audio if nothing more arrives. It is
the request's deadline (when the buffer ahead of this chunk runs dry) plus the audio this sequence has
produced. The sequence closest to running dry goes first; a reply's first chunk is favoured (nothing is
playing yet, so every millisecond is time to first audio); the client's `priority` outranks both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from app.engine.types import SAMPLE_RATE, EngineRequest


@dataclass
class Sequence:
    """One request's progress through the engine."""

    request: EngineRequest
    tokens: list[int] = field(default_factory=list)  # speech tokens read back from the device
    unsynced: int = 0  # tokens sampled on the device but not yet read back
    samples_emitted: int = 0
    next_audio_at: int = 0  # token count at which the next audio chunk is decoded
    token_limit: int = 0  # the most speech tokens it may produce (settings, engine cap, room left in its context)
    finished: bool = False
    state: Any = None  # model-runner state (e.g. the S3Gen stream)

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def generated(self) -> int:
        return len(self.tokens) + self.unsynced

    def urgency(self) -> tuple:
        return urgency(self.request, self.samples_emitted)


def urgency(request: EngineRequest, samples_emitted: int) -> tuple:
    """Sort key, smaller is more urgent: priority, then a reply's first audio, then the earliest dry time."""
    no_audio_yet = request.first_in_context and samples_emitted == 0
    dry_time = request.deadline + samples_emitted / SAMPLE_RATE
    return (-request.priority, not no_audio_yet, dry_time, request.arrival)


class Scheduler:
    def __init__(self, max_running: int):
        self.max_running = max_running
        self.waiting: list[Sequence] = []
        self.running: list[Sequence] = []

    def add(self, sequence: Sequence) -> None:
        self.waiting.append(sequence)

    def remove(self, request_id: str) -> Sequence | None:
        for queue in (self.waiting, self.running):
            for index, sequence in enumerate(queue):
                if sequence.request_id == request_id:
                    return queue.pop(index)
        return None

    def admit(self, capacity: int) -> list[Sequence]:
        """Move the most urgent waiting sequences to running, at most `capacity` of them."""
        room = min(capacity, self.max_running - len(self.running))
        if room <= 0 or not self.waiting:
            return []
        self.waiting.sort(key=Sequence.urgency)
        admitted, self.waiting = self.waiting[:room], self.waiting[room:]
        self.running.extend(admitted)
        return admitted

    def decode_batch(self) -> list[Sequence]:
        """Running sequences in urgency order (all of them: a decode step costs nearly the same for more)."""
        self.running.sort(key=Sequence.urgency)
        return list(self.running)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    @property
    def queue_depth(self) -> int:
        return len(self.waiting)
