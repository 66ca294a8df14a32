"""Client-side measurements of one spoken reply, and their aggregation over one ramp step.

All times are `time.monotonic()` seconds; reported durations are milliseconds.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any

# The server's own listener model, so client and server count underruns the same way.
from app.server.core.stats import PlaybackClock


@dataclass
class ReplyRecord:
    """Everything the client saw of one context (one reply)."""

    session: int
    context_id: str
    text_chars: int
    bytes_per_s: float = 0.0
    first_text_at: float | None = None
    end_sent_at: float | None = None
    first_chunk_completed_at: float | None = None
    first_chunk_started_at: float | None = None  # when its chunk_started arrived: the server released it
    first_audio_at: float | None = None
    last_audio_at: float | None = None
    done_at: float | None = None
    playback: PlaybackClock = field(default_factory=PlaybackClock)
    errors: list[str] = field(default_factory=list)
    server_stats: dict[str, Any] = field(default_factory=dict)
    # Cumulative letters and digits after each text message, and when it was sent: maps a chunk's text back
    # to the message that completed it (the server normalizes spacing, punctuation and case, not letters).
    _sent_marks: list[int] = field(default_factory=list, repr=False)
    _sent_times: list[float] = field(default_factory=list, repr=False)

    def on_text_sent(self, text: str, now: float) -> None:
        if self.first_text_at is None:
            self.first_text_at = now
        total = (self._sent_marks[-1] if self._sent_marks else 0) + _alphanumerics(text)
        self._sent_marks.append(total)
        self._sent_times.append(now)

    def on_first_chunk_started(self, chunk_text: str, now: float) -> None:
        """Record when the first chunk's text was complete: the message that carried its last letter, or the
        punctuation-only messages right after it, or the `end` that followed the last message."""
        self.first_chunk_started_at = now
        if not self._sent_marks:
            return
        index = min(bisect.bisect_left(self._sent_marks, _alphanumerics(chunk_text)), len(self._sent_marks) - 1)
        while index + 1 < len(self._sent_marks) and self._sent_marks[index + 1] == self._sent_marks[index]:
            index += 1
        completed_at = self._sent_times[index]
        if index == len(self._sent_times) - 1 and self.end_sent_at is not None:
            completed_at = max(completed_at, self.end_sent_at)
        self.first_chunk_completed_at = completed_at

    def on_audio(self, payload_bytes: int, now: float) -> None:
        if self.first_audio_at is None:
            self.first_audio_at = now
        self.last_audio_at = now
        # Every stall counts here, even one the text stream caused: the listener hears them all.
        self.playback.on_frame(now, payload_bytes / self.bytes_per_s, text_arrived=-math.inf)

    @property
    def finished(self) -> bool:
        return self.done_at is not None or bool(self.errors)

    @property
    def audio_s(self) -> float:
        return self.playback.sent_s

    @property
    def ttfa_ms(self) -> float | None:
        return _ms_between(self.first_text_at, self.first_audio_at)

    @property
    def ttfa_from_chunk_ms(self) -> float | None:
        return _ms_between(self.first_chunk_completed_at, self.first_audio_at)

    @property
    def ttfa_from_release_ms(self) -> float | None:
        return _ms_between(self.first_chunk_started_at, self.first_audio_at)

    @property
    def rtf(self) -> float | None:
        """Wall time from the first text to the last audio byte ÷ audio seconds (below 1: faster than speech)."""
        if self.first_text_at is None or self.last_audio_at is None or self.audio_s <= 0:
            return None
        return (self.last_audio_at - self.first_text_at) / self.audio_s

    def to_dict(self) -> dict[str, Any]:
        return {
            "session": self.session,
            "context_id": self.context_id,
            "text_chars": self.text_chars,
            "ttfa_ms": _round(self.ttfa_ms),
            "ttfa_from_chunk_ms": _round(self.ttfa_from_chunk_ms),
            "ttfa_from_release_ms": _round(self.ttfa_from_release_ms),
            "audio_s": round(self.audio_s, 3),
            "rtf": _round(self.rtf, 3),
            "underruns": self.playback.underruns,
            "underrun_ms": round(self.playback.underrun_s * 1000, 1),
            "errors": self.errors,
            "server_stats": self.server_stats,
        }


def _alphanumerics(text: str) -> int:
    return sum(1 for ch in text if ch.isalnum())


def _ms_between(start: float | None, end: float | None) -> float | None:
    return None if start is None or end is None else (end - start) * 1000


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), `q` in 0-100."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True)
class Spread:
    p50: float
    p95: float
    max: float

    @classmethod
    def of(cls, values: list[float | None]) -> "Spread | None":
        present = [v for v in values if v is not None]
        if not present:
            return None
        return cls(round(percentile(present, 50), 3), round(percentile(present, 95), 3), round(max(present), 3))


TTFA_FIELDS = {"release": "ttfa_from_release_ms", "chunk": "ttfa_from_chunk_ms", "text": "ttfa_ms"}
TTFA_STARTS = {"release": "the first chunk's release", "chunk": "the text that completed the first chunk",
               "text": "the first text"}


@dataclass(frozen=True)
class ServiceLevel:
    """What a step must hold: p95 time to first audio, and no underruns or errors anywhere.

    `ttfa_from` picks where the time to first audio starts (every one ends at the first audio byte):
    - "release": the server's `chunk_started` for the first chunk (queueing and synthesis: what load changes);
    - "chunk": the text message that completed the first chunk (adds the chunker's policy wait);
    - "text": the reply's first text (adds the wait for the LLM to type the first chunk).
    """

    ttfa_p95_ms: float
    ttfa_from: str = "release"

    def ttfa(self, step: "StepResult") -> "Spread | None":
        return getattr(step, TTFA_FIELDS[self.ttfa_from])

    def describe(self) -> str:
        return f"p95 TTFA from {TTFA_STARTS[self.ttfa_from]} ≤ {self.ttfa_p95_ms:g} ms, no underruns, no errors"

    def violations(self, step: "StepResult") -> list[str]:
        reasons = []
        ttfa = self.ttfa(step)
        if ttfa is None:
            reasons.append("no reply produced audio")
        elif ttfa.p95 > self.ttfa_p95_ms:
            reasons.append(f"p95 ttfa {ttfa.p95:.0f} ms > {self.ttfa_p95_ms:g} ms")
        if step.underruns:
            reasons.append(f"{step.underruns} underruns ({step.underrun_ms:.0f} ms)")
        if step.errors:
            reasons.append(f"{step.errors} errors ({', '.join(f'{k}×{v}' for k, v in step.error_codes.items())})")
        return reasons


@dataclass
class StepResult:
    """One ramp step: N concurrent sessions, aggregated over every reply they spoke."""

    sessions: int
    replies: int
    completed_replies: int
    duration_s: float
    ttfa_ms: Spread | None
    ttfa_from_chunk_ms: Spread | None
    ttfa_from_release_ms: Spread | None
    rtf: Spread | None
    audio_s: float
    underruns: int
    underrun_ms: float
    errors: int
    error_codes: dict[str, int]
    server: dict[str, Any]
    client_loop_lag_ms_max: float
    violations: list[str] = field(default_factory=list)
    records: list[ReplyRecord] = field(default_factory=list, repr=False)

    @property
    def passed(self) -> bool:
        return not self.violations

    def to_dict(self) -> dict[str, Any]:
        summary = {f.name: _plain(getattr(self, f.name)) for f in fields(self) if f.name != "records"}
        summary["passed"] = self.passed
        summary["replies_detail"] = [r.to_dict() for r in self.records]
        return summary


def _plain(value: Any) -> Any:
    if is_dataclass(value):
        return asdict(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def aggregate_step(
    sessions: int,
    records: list[ReplyRecord],
    session_errors: list[str],
    duration_s: float,
    loop_lag_ms_max: float,
    service_level: ServiceLevel,
) -> StepResult:
    """Fold every reply of a step into one row and judge it against the service level."""
    error_codes = Counter(session_errors)
    for record in records:
        error_codes.update(record.errors)
    server_stats = [r.server_stats for r in records if r.server_stats]
    step = StepResult(
        sessions=sessions,
        replies=len(records),
        completed_replies=sum(1 for r in records if r.done_at is not None and not r.errors),
        duration_s=round(duration_s, 3),
        ttfa_ms=Spread.of([r.ttfa_ms for r in records]),
        ttfa_from_chunk_ms=Spread.of([r.ttfa_from_chunk_ms for r in records]),
        ttfa_from_release_ms=Spread.of([r.ttfa_from_release_ms for r in records]),
        rtf=Spread.of([r.rtf for r in records]),
        audio_s=round(sum(r.audio_s for r in records), 3),
        underruns=sum(r.playback.underruns for r in records),
        underrun_ms=round(sum(r.playback.underrun_s for r in records) * 1000, 1),
        errors=sum(error_codes.values()),
        error_codes=dict(error_codes),
        server={
            "ttfa_ms": Spread.of([s.get("ttfa_ms") for s in server_stats]),
            "ttfa_from_release_ms": Spread.of([s.get("ttfa_from_release_ms") for s in server_stats]),
            "rtf": Spread.of([s.get("rtf") for s in server_stats]),
            "underruns": sum(s.get("underruns") or 0 for s in server_stats),
        },
        client_loop_lag_ms_max=round(loop_lag_ms_max, 1),
        records=records,
    )
    step.violations = service_level.violations(step)
    return step
