"""LiveKit Agents 1.8's TTS plugins against the real server on the espeak engine: `elevenlabs.TTS` through
`stream()` (LLM tokens over the multi-stream socket) and `synthesize()` (HTTP), and `openai.TTS`; a reply, an
interruption (the stream closed after its first audio), a second turn (tests/frameworks/drive_livekit.py)."""

from __future__ import annotations

import pytest

from drivers import assert_spoken, drive


@pytest.mark.parametrize("service, sample_rate", [
    ("elevenlabs-stream", 22050),  # the plugin's default output format, mp3_22050_32
    ("elevenlabs-synthesize", 22050),
    ("openai", 24000),
])
def test_tts_plugins(server, service, sample_rate):
    result = drive("drive_livekit.py", service, server.base_url)
    assert result["sample_rate"] == sample_rate
    for turn in (result["first"], result["second"]):
        assert turn["error"] is None, turn
        assert_spoken(turn, turn["text"], sample_rate)
    assert result["interrupted"]["heard"] and result["interrupted"]["error"] is None, result["interrupted"]
