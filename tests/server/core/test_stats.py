"""The playback clock and stats arithmetic."""

from __future__ import annotations

import pytest

from app.server.core.stats import ChunkTimes, ContextTimes, PlaybackClock


def test_steady_stream_has_no_underrun_and_tracks_buffer():
    clock = PlaybackClock()
    clock.on_frame(10.0, 1.0, text_arrived=9.0)
    clock.on_frame(10.5, 1.0, text_arrived=9.0)
    assert clock.buffered_s(11.0) == pytest.approx(1.0)
    assert (clock.underruns, clock.sent_s) == (0, 2.0)


def test_late_frame_counts_an_underrun_and_the_listener_resumes_with_it():
    clock = PlaybackClock()
    clock.on_frame(10.0, 1.0, text_arrived=9.0)
    assert clock.on_frame(11.5, 1.0, text_arrived=9.0)  # ran dry at 11.0
    assert (clock.underruns, clock.underrun_s) == (1, pytest.approx(0.5))
    assert clock.dry_at() == pytest.approx(12.5)  # resumed at 11.5 with 1 s of audio
    assert not clock.on_frame(12.0, 1.0, text_arrived=9.0)


def test_gap_caused_by_the_client_pausing_its_text_is_not_an_underrun():
    clock = PlaybackClock()
    clock.on_frame(10.0, 1.0, text_arrived=9.0)
    assert not clock.on_frame(15.0, 1.0, text_arrived=14.0)  # text came after the buffer ran dry at 11.0
    assert clock.underruns == 0
    assert clock.dry_at() == pytest.approx(16.0)


def test_chunk_stats_split_ttfa_into_chunker_wait_and_synthesis():
    times = ChunkTimes(first_text=1.0, released=1.2, first_audio=1.5, last_synthesized=2.2, audio_s=2.0)
    assert times.as_stats() == {"ttfa_ms": 300.0, "chunker_wait_ms": 200.0, "synthesis_ms": 1000.0,
                                "audio_s": 2.0, "rtf": 0.5}


def test_context_rtf_counts_overlapping_synthesis_once():
    context = ContextTimes(first_text=0.0, first_release=0.5, first_audio=1.0, chunks=[
        ChunkTimes(first_text=0.0, released=0.5, last_synthesized=2.5),
        ChunkTimes(first_text=0.6, released=1.5, last_synthesized=3.5),
    ])
    clock = PlaybackClock(started_at=1.0, sent_s=6.0)
    stats = context.as_stats(clock)
    assert stats["rtf"] == pytest.approx(3.0 / 6.0)
    assert (stats["ttfa_ms"], stats["ttfa_from_release_ms"], stats["chunker_wait_ms"]) == (1000.0, 500.0, 500.0)
