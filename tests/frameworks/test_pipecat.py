"""Pipecat 1.14's own TTS services against the real server on the espeak engine, each in a real pipeline: a
reply streamed as LLM tokens, an interruption after the first audio, a second turn (drive_pipecat.py)."""

from __future__ import annotations

import pytest

from drivers import assert_spoken, drive, seconds_of


def assert_three_turns(result: dict, sample_rate: int, late_audio_s: float = 0.0) -> None:
    first, interrupted, second = result["first"], result["interrupted"], result["second"]
    for turn in (first, second):
        assert turn["finished"] and not turn["errors"], turn
        assert_spoken(turn, turn["text"], sample_rate)
        assert " ".join(turn["words"].split()) == turn["text"]  # the transcript Pipecat keeps as history
    assert interrupted["heard"] and not interrupted["errors"], interrupted
    assert seconds_of({"audio_bytes": interrupted["late_audio_bytes"]}, sample_rate) <= late_audio_s, interrupted


@pytest.mark.parametrize("service, sample_rate", [
    ("elevenlabs", 24000),  # Pipecat's default output rate
    ("elevenlabs", 16000),
    ("elevenlabs-token", 24000),  # TextAggregationMode.TOKEN: tokens go straight to the socket
    ("elevenlabs", 32000),
    ("elevenlabs-http", 24000),
])
def test_elevenlabs_services(server, service, sample_rate):
    # Pipecat drops audio of an interrupted context on arrival, and we stop generating it on close_context.
    assert_three_turns(drive("drive_pipecat.py", service, server.base_url, sample_rate), sample_rate)


def test_openai_service(server):
    # The HTTP response in flight when the caller interrupts still plays out for a moment: Pipecat stops reading
    # it only between chunks, so up to a few seconds of it arrive late.
    assert_three_turns(drive("drive_pipecat.py", "openai", server.base_url, 24000), 24000, late_audio_s=3.0)
