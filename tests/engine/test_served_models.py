"""Standard and Turbo Chatterbox served side by side by one real server (tiny synthetic checkpoints, CPU): each
context picks its model; Turbo runs its GPT-2 T3 and 2-step meanflow S3Gen; one voice upload serves both,
except that Turbo refuses a reference of 5 s or less with its reason while the standard model speaks with it."""

from __future__ import annotations

import io
import wave

import numpy as np
import pytest
from harness import metric_samples
from stream_session import open_session

TEXT = "Two models, one server."


@pytest.fixture(scope="module")
def server(tiny_checkpoint, tiny_turbo_checkpoint, tmp_path_factory):
    from harness import make_settings, run_server

    settings = make_settings(tmp_path_factory.mktemp("served"), engine="chatterbox", models="turbo,standard",
                             checkpoint=str(tiny_checkpoint), turbo_checkpoint=str(tiny_turbo_checkpoint),
                             synthetic_tokens_per_char=0.5, max_batch_size=2, cfm_steps=2,
                             enable_optimizations=False, device="cpu")
    with run_server(settings) as running:
        yield running


def wav_bytes(seconds: float) -> bytes:
    rate = 24000
    t = np.arange(int(seconds * rate)) / rate
    pcm = (0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    out = io.BytesIO()
    with wave.open(out, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(rate)
        writer.writeframes((pcm * 32767).astype("<i2").tobytes())
    return out.getvalue()


def test_status_names_both_models_with_their_parts(server):
    engine = server.get("/optimization-status").json()["engine"]
    assert engine["models"] == ["turbo", "standard"] and engine["default_model"] == "turbo"
    turbo, standard = engine["by_model"]["turbo"], engine["by_model"]["standard"]
    assert turbo["t3"]["backbone"] == "gpt2" and turbo["s3gen"]["meanflow"] is True
    assert standard["s3gen"]["meanflow"] is False
    assert "[laugh]" in engine["tags"]["turbo"] and "standard" not in engine["tags"]


@pytest.mark.parametrize("model", ["turbo", "standard"])
async def test_each_model_streams_audio(server, model):
    async with open_session(server.ws_url) as session:
        done = await session.speak("c", TEXT, model=model)
    assert done["stats"]["audio_s"] > 0.2
    assert metric_samples(server)[f"chatterbox_chunks_total{{model={model}}}"] >= 1


def test_one_upload_serves_both_models_turbo_needs_more_than_five_seconds(server):
    short = server.post("/v1/voices", files={"file": ("short.wav", wav_bytes(3.0), "audio/wav")},
                        data={"name": "short"})
    assert short.status_code in (200, 201), short.text
    standard = server.post("/synthesize", json={"text": TEXT, "voice": "short", "model": "standard",
                                                "response_format": "pcm"})
    assert standard.status_code == 200 and len(standard.content) > 0
    refused = server.post("/synthesize", json={"text": TEXT, "voice": "short", "model": "turbo"})
    assert refused.status_code == 422
    error = refused.json()["error"]
    assert error["code"] == "reference_too_short" and "5 s" in error["message"]

    long = server.post("/v1/voices", files={"file": ("long.wav", wav_bytes(6.0), "audio/wav")},
                       data={"name": "long"})
    assert long.status_code in (200, 201), long.text
    for model in ("turbo", "standard"):
        spoken = server.post("/synthesize", json={"text": TEXT, "voice": "long", "model": model,
                                                  "response_format": "pcm"})
        assert spoken.status_code == 200 and len(spoken.content) > 0, model
