"""Client-message validation and the binary frame layout (pure functions, no server)."""

from __future__ import annotations

import struct

import numpy as np
import orjson
import pytest

from app.engine.types import GenerationSettings
from app.server import native_protocol as p
from app.server.core.spec import ContextSpec

BASE = GenerationSettings(max_new_tokens=1000)


def parse(message: dict | str) -> p.ClientMessage:
    raw = message if isinstance(message, str) else orjson.dumps(message).decode()
    return p.parse_message(raw, BASE)


def error_of(message: dict | str) -> p.ProtocolError:
    with pytest.raises(p.ProtocolError) as caught:
        parse(message)
    return caught.value


def test_start_with_every_field():
    start = parse({"type": "start", "context_id": "a", "voice": "alice", "priority": 3,
                   "output": {"encoding": "mulaw", "sample_rate": 8000},
                   "generation": {"temperature": 0.5, "seed": 7}, "chunking": {"chunk_size": 80}})
    assert start == p.Start(ContextSpec(context_id="a", voice="alice",
                                        generation=GenerationSettings(temperature=0.5, seed=7), chunk_size=80,
                                        priority=3), output=p.OutputFormat("mulaw", 8000))


def test_defaults_fill_a_bare_start_and_context_id():
    assert parse({"type": "start"}) == p.Start(ContextSpec(context_id="default"))
    assert parse({"type": "text", "text": "hi"}) == p.Text("default", "hi")
    assert parse({"type": "cancel", "context_id": "x"}) == p.Control("cancel", "x")


@pytest.mark.parametrize("raw", ["{", "[1, 2]", "\"text\"", "null"])
def test_not_an_object_is_bad_json(raw):
    assert error_of(raw).code == "bad_json"


@pytest.mark.parametrize("message, code, context_id", [
    ({"type": "speak", "context_id": "c"}, "unknown_type", "c"),
    ({"context_id": "c"}, "bad_request", "c"),
    ({"type": "text", "context_id": "c"}, "bad_request", "c"),
    ({"type": "text", "context_id": "c", "text": 5}, "bad_request", "c"),
    ({"type": "text", "context_id": 5, "text": "x"}, "bad_request", None),
    ({"type": "text", "context_id": "", "text": "x"}, "bad_request", None),
    ({"type": "flush", "context_id": "c", "extra": 1}, "bad_request", "c"),
    ({"type": "start", "context_id": "c", "voice_id": "x"}, "bad_request", "c"),
    ({"type": "start", "context_id": "c", "output": {"encoding": "mp3"}}, "invalid_settings", "c"),
    ({"type": "start", "context_id": "c", "output": {"sample_rate": 11025}}, "invalid_settings", "c"),
    ({"type": "start", "context_id": "c", "output": {"sample_rate": "8000"}}, "bad_request", "c"),
    ({"type": "start", "context_id": "c", "output": "mulaw"}, "bad_request", "c"),
    ({"type": "start", "context_id": "c", "generation": {"temperature": 99}}, "invalid_settings", "c"),
    ({"type": "start", "context_id": "c", "generation": {"temprature": 0.5}}, "invalid_settings", "c"),
    ({"type": "start", "context_id": "c", "generation": {"max_new_tokens": 2000}}, "invalid_settings", "c"),
    ({"type": "start", "context_id": "c", "chunking": {"chunk_size": 10}}, "invalid_settings", "c"),
    ({"type": "start", "context_id": "c", "chunking": {"chunk_size": 50.5}}, "bad_request", "c"),
    ({"type": "start", "context_id": "c", "priority": True}, "bad_request", "c"),
    ({"type": "start", "context_id": "c", "priority": 10**6}, "invalid_settings", "c"),
])
def test_invalid_messages_name_code_and_context(message, code, context_id):
    error = error_of(message)
    assert (error.code, error.context_id) == (code, context_id)
    assert error.message


def test_benchmark_only_fixed_tokens_is_an_unknown_generation_setting():
    """A client once got 160 s of audio from "Hi." this way; only bench code can fix a length now."""
    for key in ("fixed_tokens", "temprature"):  # the same answer as any misspelt key
        error = error_of({"type": "start", "context_id": "c", "generation": {key: 4000}})
        assert error.code == "invalid_settings"
        assert error.message.endswith(f"unknown generation setting(s): {key}")


def test_audio_frame_header_is_uint32_le_channel_and_keeps_f32_aligned():
    payload = np.arange(3, dtype="<f4").tobytes()
    frame = p.audio_frame(258, payload)
    assert frame[:4] == struct.pack("<I", 258)
    assert p.split_frame(frame) == (258, payload)
    assert np.frombuffer(frame, dtype="<f4", offset=4).tolist() == [0.0, 1.0, 2.0]


def test_events_are_typed_json():
    assert orjson.loads(p.error_event("bad_json", "nope")) == {"type": "error", "code": "bad_json", "message": "nope"}
    assert orjson.loads(p.started_event("c", 2, p.OutputFormat())) == {
        "type": "started", "context_id": "c", "channel": 2, "encoding": "pcm_s16le", "sample_rate": 24000}
