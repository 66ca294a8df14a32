"""Timing of one stream: per-chunk and per-context stats, and the listener's playback clock.

All times are `time.monotonic()` seconds; reported values are milliseconds (docs/protocol.md, "stats").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 1)


def _ratio(numerator: float | None, audio_s: float) -> float | None:
    return None if numerator is None or audio_s <= 0 else round(numerator / audio_s, 4)


@dataclass
class ChunkTimes:
    first_text: float  # the first text that ended up in this chunk arrived
    released: float  # the chunker (or a flush/end) let the chunk go; synthesis was requested
    first_audio: float | None = None  # first audio byte of the chunk handed to the socket
    last_synthesized: float | None = None  # the engine delivered the chunk's last audio
    audio_s: float = 0.0  # audio seconds handed to the socket

    @property
    def synthesis_s(self) -> float | None:
        return None if self.last_synthesized is None else self.last_synthesized - self.released

    def as_stats(self) -> dict[str, Any]:
        ttfa = None if self.first_audio is None else self.first_audio - self.released
        return {"ttfa_ms": _ms(ttfa), "chunker_wait_ms": _ms(self.released - self.first_text),
                "synthesis_ms": _ms(self.synthesis_s), "audio_s": round(self.audio_s, 4),
                "rtf": _ratio(self.synthesis_s, self.audio_s)}


@dataclass
class PlaybackClock:
    """A listener that starts playing at the first frame and plays without pause while it has audio.

    When a frame arrives after the audio sent so far has run out, the listener ran dry: that is an underrun if
    the server already held the text of that frame when the buffer emptied (a client that pauses its own text
    is not the server's fault). Either way the listener resumes with the late frame.
    """

    started_at: float | None = None
    sent_s: float = 0.0
    underruns: int = 0
    underrun_s: float = 0.0

    def dry_at(self) -> float | None:
        """When the listener runs out of audio sent so far."""
        return None if self.started_at is None else self.started_at + self.sent_s

    def buffered_s(self, now: float) -> float:
        dry = self.dry_at()
        return 0.0 if dry is None else max(0.0, dry - now)

    def on_frame(self, now: float, seconds: float, text_arrived: float) -> bool:
        """Account one frame handed to the socket; True when it ended an underrun."""
        underrun = False
        dry = self.dry_at()
        if dry is None:
            self.started_at = now
        elif now > dry:
            if text_arrived < dry:
                underrun = True
                self.underruns += 1
                self.underrun_s += now - dry
            self.started_at = dry - self.sent_s + (now - dry)  # started_at + sent_s == dry: slide the start
        self.sent_s += seconds
        return underrun


@dataclass
class ContextTimes:
    first_text: float | None = None
    first_release: float | None = None
    first_audio: float | None = None
    chunks: list[ChunkTimes] = field(default_factory=list)

    def synthesis_busy_s(self) -> float | None:
        """Wall time during which at least one chunk of the context was being synthesized (chunks overlap)."""
        spans = sorted((c.released, c.last_synthesized) for c in self.chunks if c.last_synthesized is not None)
        if not spans:
            return None
        busy, covered_until = 0.0, float("-inf")
        for start, end in spans:
            busy += max(0.0, end - max(start, covered_until))
            covered_until = max(covered_until, end)
        return busy

    def as_stats(self, clock: PlaybackClock) -> dict[str, Any]:
        def since(start: float | None, end: float | None) -> float | None:
            return None if start is None or end is None else end - start

        return {"ttfa_ms": _ms(since(self.first_text, self.first_audio)),
                "ttfa_from_release_ms": _ms(since(self.first_release, self.first_audio)),
                "chunker_wait_ms": _ms(since(self.first_text, self.first_release)),
                "audio_s": round(clock.sent_s, 4), "rtf": _ratio(self.synthesis_busy_s(), clock.sent_s),
                "underruns": clock.underruns, "underrun_ms": _ms(clock.underrun_s), "chunks": len(self.chunks)}
