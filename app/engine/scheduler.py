"""The sequence lifecycle: admission, scheduling and postprocessing (the policy; the model runner does the work).

Admission shares rows fairly across clients first: when rows are scarce, the client running the fewest
sequences is served next, so one client cannot hold every row while another waits. Within a client, and when
ordering a decode batch, urgency decides: every sequence has a *dry time*, the moment its listener runs out of
audio if nothing more arrives (the request's deadline plus the audio this sequence has produced). The client's
`priority` goes first, then a reply's first chunk (nothing is playing yet, so every millisecond is time to first
audio), then the earliest dry time.

Postprocessing (nano-vllm's `Scheduler.postprocess`) takes each read-back token: a stop token or the token limit
finishes the sequence, and `due_for_audio` says which sequences have enough new tokens for their next chunk.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from app.engine.config import EngineConfig
from app.engine.types import SAMPLE_RATE, EngineRequest


@dataclass
class Sequence:
    """One request's progress through the engine (the request itself is never modified)."""

    request: EngineRequest
    token_limit: int  # the most speech tokens it may produce (settings, engine cap, room left in its context)
    ignore_stop: bool = False  # a benchmark's fixed length: run to token_limit whatever is sampled
    tokens: list[int] = field(default_factory=list)  # speech tokens read back from the device
    unsynced: int = 0  # tokens sampled on the device but not yet read back
    samples_emitted: int = 0
    next_audio_at: int = 0  # token count at which the next audio chunk is decoded
    finished: bool = False
    state: Any = None  # model-runner state (e.g. the S3Gen stream)
    # Word timing (models whose aligned heads measure it): the text position reached after each speech token,
    # and the word index of each text token.
    spoken: list[int] = field(default_factory=list)
    token_words: list[int | None] | None = None

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def client(self) -> str:
        return self.request.client

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
    def __init__(self, config: EngineConfig, max_running: int, *, stop_token: int | None = None,
                 lookahead: int = 0):
        """`stop_token`: the model's end of speech (None: none); `lookahead`: tokens the audio decoder needs
        beyond those it voices, added to the first chunk's size."""
        self.config = config
        self.max_running = max_running
        self.stop_token = stop_token
        self.first_audio_at = config.first_audio_tokens + lookahead
        self.waiting: list[Sequence] = []
        self.running: list[Sequence] = []

    # ---- admission ----------------------------------------------------------------------------------------

    def add(self, request: EngineRequest) -> Sequence:
        limit, ignore_stop = self.config.token_budget(request)
        sequence = Sequence(request, token_limit=limit, ignore_stop=ignore_stop, next_audio_at=self.first_audio_at)
        self.waiting.append(sequence)
        return sequence

    def remove(self, request_id: str) -> Sequence | None:
        for queue in (self.waiting, self.running):
            for index, sequence in enumerate(queue):
                if sequence.request_id == request_id:
                    return queue.pop(index)
        return None

    def admit(self, capacity: int, only: Collection[str] | None = None) -> list[Sequence]:
        """Move up to `capacity` waiting sequences (of `only`, if given) to running: the client with the fewest
        running sequences first, the most urgent of its sequences first."""
        room = min(capacity, self.max_running - len(self.running))
        candidates = [s for s in self.waiting if only is None or s.request_id in only]
        if room <= 0 or not candidates:
            return []
        load = Counter(s.client for s in self.running)
        by_client: dict[str, list[Sequence]] = {}
        for sequence in sorted(candidates, key=Sequence.urgency):
            by_client.setdefault(sequence.client, []).append(sequence)
        admitted: list[Sequence] = []
        while len(admitted) < room and by_client:
            client = min(by_client, key=lambda c: (load[c], by_client[c][0].urgency()))
            admitted.append(by_client[client].pop(0))
            load[client] += 1
            if not by_client[client]:
                del by_client[client]
        for sequence in admitted:
            self.waiting.remove(sequence)
        self.running.extend(admitted)
        return admitted

    def limit_tokens(self, sequence: Sequence, room: int) -> None:
        """Cap a sequence at the room its model context has left (a long text leaves less for speech)."""
        sequence.token_limit = min(sequence.token_limit, room)

    # ---- scheduling ---------------------------------------------------------------------------------------

    def decode_batch(self, only: Collection[str] | None = None) -> list[Sequence]:
        """Running sequences (of `only`, if given) in urgency order: all of them, as one decode step costs
        nearly the same for more."""
        self.running.sort(key=Sequence.urgency)
        return [s for s in self.running if only is None or s.request_id in only]

    def needs_tokens(self, batch: list[Sequence]) -> bool:
        """Whether some sequence may have reached its next audio chunk or its limit (read tokens back now)."""
        return any(s.generated >= min(s.next_audio_at, s.token_limit) for s in batch)

    # ---- postprocessing -----------------------------------------------------------------------------------

    def postprocess(self, sequence: Sequence, token: int) -> None:
        """Take one token read back from the device: a stop token or the token limit finishes the sequence;
        tokens sampled after that are dropped."""
        sequence.unsynced -= 1
        if sequence.finished:
            return
        if token == self.stop_token and not sequence.ignore_stop:
            sequence.finished = True
            return
        sequence.tokens.append(token)
        if len(sequence.tokens) >= sequence.token_limit:
            sequence.finished = True

    def due_for_audio(self, batch: list[Sequence]) -> list[Sequence]:
        """Sequences (in `batch`'s order) that finished or have enough tokens for their next audio chunk."""
        return [s for s in batch if s.finished or len(s.tokens) >= s.next_audio_at]

    def audio_emitted(self, sequence: Sequence, samples: int) -> None:
        """Book a decoded chunk: a finished sequence leaves the running set, others wait for their next chunk."""
        sequence.samples_emitted += samples
        if sequence.finished:
            self.running.remove(sequence)
        else:
            sequence.next_audio_at = len(sequence.tokens) + self.config.audio_chunk_tokens

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    @property
    def queue_depth(self) -> int:
        return len(self.waiting)
