"""The espeak engine with the real espeak-ng binary: audio, slicing, the Engine contract, voices."""

from __future__ import annotations

import numpy as np
import pytest

from app.engine.config import EngineConfig
from app.engine.espeak import SAMPLES_PER_TOKEN, SLICE_SAMPLES, EspeakEngine, EspeakVoice, median_f0
from app.engine.types import SAMPLE_RATE, EngineError, EngineRequest, GenerationSettings
from app.engine.worker import EngineWorker


@pytest.fixture(scope="module")
def engine() -> EspeakEngine:
    return EspeakEngine()


def _request(engine: EspeakEngine, request_id: str, text: str, **settings) -> EngineRequest:
    return EngineRequest(request_id, text, engine.default_voice(), GenerationSettings(**settings))


def _run_to_end(engine: EspeakEngine) -> dict[str, list]:
    outputs: dict[str, list] = {}
    while engine.has_unfinished():
        for output in engine.step():
            assert output.error is None
            outputs.setdefault(output.request_id, []).append(output)
    return outputs


def _rms(pcm: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(pcm, dtype=np.float64))))


def _harmonic_tone(f0: float, seconds: float = 2.0, rate: int = SAMPLE_RATE) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return sum(0.3 / k * np.sin(2 * np.pi * k * f0 * t) for k in range(1, 6)).astype(np.float32)


def test_hello_world_is_audible_24khz_float32_of_plausible_length(engine):
    pcm = engine.synthesize("Hello world", engine.default_voice())
    longer = engine.synthesize("Hello world. This sentence is a good deal longer than the first one.",
                               engine.default_voice())
    assert pcm.dtype == np.float32 and pcm.ndim == 1
    assert 0.5 < pcm.size / SAMPLE_RATE < 2.5  # two words
    assert _rms(pcm) > 0.02 and np.abs(pcm).max() <= 1.0
    assert longer.size > 3 * pcm.size


def test_text_is_never_read_as_options_or_markup(engine):
    voice = engine.default_voice()
    tricky = engine.synthesize("-p 99 --help <break time='9s'/> & done", voice)
    assert 1.0 < tricky.size / SAMPLE_RATE < 6.0 and _rms(tricky) > 0.02


def test_slices_are_quarter_seconds_and_add_up_to_one_shot(engine):
    text = "The streaming path hands this sentence out a quarter second at a time."
    engine.add_request(_request(engine, "a", text))
    outputs = _run_to_end(engine)["a"]
    whole = engine.synthesize(text, engine.default_voice())
    assert [o.finished for o in outputs] == [False] * (len(outputs) - 1) + [True]
    assert all(o.pcm.size == SLICE_SAMPLES for o in outputs[:-1]) and 0 < outputs[-1].pcm.size <= SLICE_SAMPLES
    np.testing.assert_array_equal(np.concatenate([o.pcm for o in outputs]), whole)
    assert outputs[-1].speech_tokens == -(-whole.size // SAMPLES_PER_TOKEN)


def test_every_running_request_advances_in_each_step(engine):
    engine.add_request(_request(engine, "a", "First request, speaking for a while."))
    engine.add_request(_request(engine, "b", "Second request."))
    first, second = engine.step(), engine.step()
    assert [o.request_id for o in first] == ["a"]  # one synthesis starts per step
    assert sorted(o.request_id for o in second) == ["a", "b"]  # then both advance together
    assert all(o.pcm.size == SLICE_SAMPLES for o in first + second)
    _run_to_end(engine)


def test_most_urgent_request_is_synthesized_first(engine):
    later = _request(engine, "later", "A later chunk of the reply.")
    later.first_in_context = False
    engine.add_request(later)
    engine.add_request(_request(engine, "first", "The first chunk of a reply."))
    assert [o.request_id for o in engine.step()] == ["first"]
    _run_to_end(engine)


def test_abort_stops_outputs_at_once(engine):
    engine.add_request(_request(engine, "a", "This request is cancelled after its first slice."))
    engine.add_request(_request(engine, "b", "This one keeps going to the end."))
    engine.step()
    engine.abort_request("a")
    engine.abort_request("never-added")  # ignored
    rest = _run_to_end(engine)
    assert set(rest) == {"b"} and not engine.has_unfinished()


def test_token_budget_caps_or_fixes_length(engine):
    text = "A sentence that lasts well over one second when spoken."
    engine.add_request(_request(engine, "capped", text, max_new_tokens=10))
    engine.add_request(EngineRequest("fixed", "Hi.", engine.default_voice(), fixed_tokens=100))
    outputs = _run_to_end(engine)
    assert sum(o.pcm.size for o in outputs["capped"]) == 10 * SAMPLES_PER_TOKEN
    assert sum(o.pcm.size for o in outputs["fixed"]) == 100 * SAMPLES_PER_TOKEN
    assert outputs["fixed"][-1].speech_tokens == 100


def test_synthetic_tokens_per_char_fixes_every_length():
    engine = EspeakEngine(EngineConfig(engine="espeak", synthetic_tokens_per_char=2.0))
    engine.add_request(_request(engine, "a", "Hello."))  # 6 characters
    assert sum(o.pcm.size for o in _run_to_end(engine)["a"]) == 12 * SAMPLES_PER_TOKEN


def test_exaggeration_widens_pitch_range(engine):
    text = "Is this really what you wanted? I could hardly believe it!"

    def f0_spread(exaggeration: float) -> float:
        import librosa

        pcm = engine.synthesize(text, engine.default_voice(), GenerationSettings(exaggeration=exaggeration))
        f0, voiced, _ = librosa.pyin(pcm, fmin=50, fmax=500, sr=SAMPLE_RATE)
        return float(np.std(f0[voiced]))

    assert f0_spread(0.0) < 0.5 * f0_spread(0.5) < 0.5 * f0_spread(2.0)


def test_failing_synthesis_fails_only_its_request(engine):
    engine.add_request(EngineRequest("bad", "text", voice="not a voice"))
    engine.add_request(_request(engine, "good", "Fine."))
    outputs = {o.request_id: o for o in engine.step() + engine.step()}  # one new synthesis per step
    assert outputs["bad"].finished and isinstance(outputs["bad"].error, EngineError)
    assert outputs["good"].error is None
    _run_to_end(engine)


def test_low_and_high_references_give_different_voices(engine):
    low = engine.embed_voice(_harmonic_tone(110.0), SAMPLE_RATE)
    high = engine.embed_voice(_harmonic_tone(220.0, rate=16000), 16000)
    assert (low.variant, high.variant) == ("m3", "f2")
    assert low != high
    spoken_low = median_f0(engine.synthesize("Hello there, how are you today?", low), SAMPLE_RATE)
    spoken_high = median_f0(engine.synthesize("Hello there, how are you today?", high), SAMPLE_RATE)
    assert spoken_low == pytest.approx(110.0, rel=0.15) and spoken_high == pytest.approx(220.0, rel=0.15)


def test_reference_without_voiced_speech_is_refused(engine):
    noise = np.random.default_rng(0).uniform(-0.3, 0.3, SAMPLE_RATE).astype(np.float32)
    with pytest.raises(ValueError, match="voiced"):
        engine.embed_voice(noise, SAMPLE_RATE)


def test_voice_save_load_round_trip(engine, tmp_path):
    voice = EspeakVoice(name="en-gb", variant="f2", pitch=73, speed=190)
    path = str(tmp_path / "voice.json")
    engine.save_voice(voice, path)
    assert engine.load_voice(path) == voice


@pytest.mark.parametrize("fields", [{"name": "-v"}, {"variant": "../x"}, {"pitch": 100}, {"speed": 10},
                                    {"pitch": "50"}])
def test_invalid_voice_fields_are_rejected(fields):
    with pytest.raises(ValueError):
        EspeakVoice(**fields)


async def test_one_request_through_the_engine_worker(engine):
    worker = EngineWorker(engine)
    worker.start()
    try:
        handle = worker.submit(_request(engine, "w1", "Hello from the worker."))
        pieces = [output.pcm async for output in handle]
        assert len(pieces) > 1
        np.testing.assert_array_equal(np.concatenate(pieces),
                                      engine.synthesize("Hello from the worker.", engine.default_voice()))
        voice = await worker.call(engine.embed_voice, _harmonic_tone(220.0), SAMPLE_RATE)
        assert voice.variant == "f2"
    finally:
        await worker.stop()
