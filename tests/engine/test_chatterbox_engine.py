"""The Chatterbox engine end to end on the tiny synthetic checkpoint (CPU, float32)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from app.engine.chatterbox.engine import ChatterboxEngine
from app.engine.config import EngineConfig
from app.engine.types import EngineError, EngineRequest, GenerationSettings, SettingsError
from app.engine.worker import EngineWorker

TEXT = "Hello there, this is a test."


@pytest.fixture(scope="module")
def engine(tiny_models) -> ChatterboxEngine:
    return ChatterboxEngine(tiny_models, EngineConfig(cfm_steps=2, first_audio_tokens=10, audio_chunk_tokens=20))


def run(engine: ChatterboxEngine, *requests: EngineRequest, max_steps: int = 500) -> dict[str, list]:
    for request in requests:
        engine.add_request(request)
    outputs: dict[str, list] = {r.request_id: [] for r in requests}
    for _ in range(max_steps):
        if not engine.has_unfinished():
            break
        for output in engine.step():
            outputs[output.request_id].append(output)
    assert not engine.has_unfinished()
    return outputs


def audio(outputs: list) -> np.ndarray:
    return np.concatenate([o.pcm for o in outputs])


def request(request_id: str, seed: int | None, tokens: int = 40, **settings) -> EngineRequest:
    return EngineRequest(request_id, TEXT, None, GenerationSettings(seed=seed, **settings), fixed_tokens=tokens)


def test_streams_audio_in_chunks_before_generation_ends(engine):
    outputs = run(engine, request("a", seed=1, tokens=60))["a"]
    assert len(outputs) >= 3  # first small chunk, later chunks, final flush
    assert outputs[-1].finished and not any(o.finished for o in outputs[:-1])
    assert outputs[0].speech_tokens < outputs[-1].speech_tokens  # first audio left while T3 was still running
    assert audio(outputs).dtype == np.float32 and np.abs(audio(outputs)).max() > 0


def test_fixed_seed_is_deterministic_even_when_batched(engine):
    alone = audio(run(engine, request("a", seed=7))["a"])
    assert np.array_equal(alone, audio(run(engine, request("a2", seed=7))["a2"]))  # bit-exact when alone
    batched = run(engine, request("b", seed=7), request("c", seed=8, temperature=1.2))
    # Same tokens (T3 sampling is per-stream); S3Gen then runs both streams in one padded batch, whose float32
    # sums may round differently in the last bits: ~1e-8 here, where a wrong token or noise slice gives ~1e-1.
    assert np.abs(alone - audio(batched["b"])).max() < 1e-5
    assert not np.allclose(alone[:len(audio(batched["c"]))], audio(batched["c"])[:len(alone)], atol=1e-3)


def test_abort_frees_the_sequence_at_once(engine):
    engine.add_request(request("x", seed=1, tokens=200))
    engine.step()
    engine.step()
    rows_in_use = engine.decoder.free_rows
    engine.abort_request("x")
    assert not engine.has_unfinished()
    assert engine.decoder.free_rows > rows_in_use
    assert engine.step() == []


def test_concurrent_requests_with_different_voices_do_not_interfere(engine, tiny_models):
    rng = np.random.default_rng(0)
    t = np.arange(24000 * 3) / 24000
    other = engine.embed_voice((0.3 * np.sin(2 * np.pi * 180 * t) + 0.01 * rng.standard_normal(t.size)).astype(np.float32), 24000)
    default_alone = audio(run(engine, request("d", seed=3))["d"])
    mixed = run(engine, request("d2", seed=3), EngineRequest("o", TEXT, other, GenerationSettings(seed=3), fixed_tokens=40))
    assert np.abs(default_alone - audio(mixed["d2"])).max() < 1e-5  # batched S3Gen: last-bit rounding only
    assert not np.array_equal(default_alone, audio(mixed["o"]))


def test_voice_save_and_load_round_trip(engine, tmp_path):
    path = str(tmp_path / "voice.pt")
    engine.save_voice(engine.default_voice(), path)
    loaded = engine.load_voice(path)
    assert np.array_equal(loaded.t3.speaker_emb.numpy(), engine.default_voice().t3.speaker_emb.numpy())


@pytest.mark.parametrize("values, message", [
    ({"temperature": 0}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"min_p": 1.5}, "min_p"),
    ({"repetition_penalty": 0.5}, "repetition_penalty"),
    ({"cfg_weight": -1}, "cfg_weight"),
    ({"exaggeration": 3}, "exaggeration"),
    ({"seed": -1}, "seed"),
    ({"seed": 1.5}, "seed"),
    ({"temperature": "hot"}, "temperature"),
    ({"temprature": 0.5}, "unknown generation setting"),
    ({"cfg_weight": True}, "cfg_weight"),
])
def test_settings_are_validated_with_clear_errors(values, message):
    with pytest.raises(SettingsError, match=message):
        GenerationSettings.from_mapping(values)


async def test_worker_cancel_stops_within_a_step(engine):
    worker = EngineWorker(engine)
    worker.start()
    try:
        handle = worker.submit(request("w", seed=1, tokens=400))
        received = []
        async for output in handle:
            received.append(output)
            if sum(len(o.pcm) for o in received) > 0:
                handle.cancel()
        assert worker.active_requests == 0
        await asyncio.sleep(0.2)
        assert not engine.has_unfinished()
    finally:
        await worker.stop()


async def test_worker_reports_engine_errors_per_request(engine):
    worker = EngineWorker(engine)
    worker.start()
    try:
        bad = worker.submit(EngineRequest("bad", TEXT, object(), GenerationSettings(seed=1), fixed_tokens=20))
        good = worker.submit(request("good", seed=1, tokens=20))
        with pytest.raises(EngineError):
            async for _ in bad:
                pass
        chunks = [o async for o in good]
        assert chunks[-1].finished
    finally:
        await worker.stop()


def test_a_full_context_ends_the_request_instead_of_failing_the_step(engine, monkeypatch):
    monkeypatch.setattr(engine.decoder, "tokens_left", lambda seq_id: 12)  # a long text left little room
    outputs = run(engine, request("long", seed=1, tokens=40), request("other", seed=2, tokens=20))
    assert outputs["long"][-1].finished and outputs["long"][-1].error is None
    assert outputs["long"][-1].speech_tokens == 12
    assert outputs["other"][-1].error is None


def test_the_alignment_guard_is_a_setting_for_the_standard_model(tiny_models):
    """Off by default for the standard model (as upstream); `--alignment-guard on` guards its stops and measures
    its word times too."""
    from app.settings import Settings

    assert EngineConfig.from_settings(Settings(engine="chatterbox", alignment_guard="on", device="cpu")).alignment_guard
    default = ChatterboxEngine(tiny_models, EngineConfig(cfm_steps=2))
    guarded = ChatterboxEngine(tiny_models, EngineConfig(cfm_steps=2, alignment_guard=True))
    assert default.optimization_status()["t3"]["alignment_guard"] is False
    assert guarded.optimization_status()["t3"]["alignment_guard"] is True
    plain = run(default, request("p", seed=1, tokens=30))["p"][-1]
    timed = run(guarded, EngineRequest("g", TEXT, None, GenerationSettings(seed=1), fixed_tokens=30))["g"][-1]
    assert plain.word_times is None
    assert timed.word_times is not None and len(timed.word_times) == len(TEXT.split())
    starts = [start for start, _ in timed.word_times]
    assert starts == sorted(starts) and starts[0] == 0.0
