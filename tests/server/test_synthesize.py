"""POST /synthesize end to end (real uvicorn, httpx), the response cache as seen through /metrics, and the
engine work an abandoned request leaves behind."""

from __future__ import annotations

import asyncio
import io
import threading
import time
import wave

import httpx
import numpy as np
import pytest
import soundfile as sf

from app.engine.espeak import EspeakEngine
from app.text.chunker import AdaptiveChunker, ChunkerConfig
from fake_engines import ToneEngine
from harness import make_settings, metric_samples, module_server, run_server, wait_until

RATE = 24000
TEXT = ("The quick brown fox jumps over the lazy dog. Then it runs into the forest, "
        "where nobody can see it any more.")
HELPERS_METRICS = ("chatterbox_ttfa_seconds", "chatterbox_rtf", "chatterbox_active_streams",
                   "chatterbox_active_connections", "chatterbox_queue_depth", "chatterbox_batch_size",
                   "chatterbox_speech_tokens_total", "chatterbox_cache_hits_total", "chatterbox_cache_misses_total",
                   "chatterbox_compile_seconds", "chatterbox_errors_total", "chatterbox_underruns_total")


server = module_server()
# A paced fake engine: 0.05 s of audio per character, 0.1 s of it per 20 ms step; "FAIL" fails.
tone_server = module_server(engine=lambda: ToneEngine(step_sleep_s=0.02))


def synthesize(server, **fields) -> httpx.Response:
    return server.post("/synthesize", json=fields)


def decode(data: bytes) -> np.ndarray:
    pcm, rate = sf.read(io.BytesIO(data), dtype="float32")
    assert rate == RATE
    return pcm


def espeak_reference(text: str, chunk_size: int = 50) -> np.ndarray:
    """What the server should say: the text chunked as the server chunks it, each chunk spoken in order."""
    chunker = AdaptiveChunker(ChunkerConfig(chunk_size=chunk_size))
    chunks = chunker.push(text, 0.0, float("inf")) + chunker.end()
    assert len(chunks) >= 2
    engine = EspeakEngine()
    return np.concatenate([engine.synthesize(chunk.speak_text, engine.default_voice()) for chunk in chunks])


def as_s16(pcm: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(pcm, -1, 1) * 32767).astype(np.int16)


def assert_rtf_matches_its_parts(headers: httpx.Headers) -> None:
    """X-RTF is X-Synthesis-Ms / X-Audio-Seconds, up to the rounding of the three headers (0.1 ms, 1 ms and
    1e-4), however fast the synthesis was."""
    synthesis_s, audio_s = float(headers["x-synthesis-ms"]) / 1000, float(headers["x-audio-seconds"])
    lowest = max(0.0, synthesis_s - 0.05e-3) / (audio_s + 0.5e-3) - 0.5e-4
    highest = (synthesis_s + 0.05e-3) / (audio_s - 0.5e-3) + 0.5e-4
    assert lowest <= float(headers["x-rtf"]) <= highest, headers


def wav_samples(wav: bytes) -> np.ndarray:
    """The s16 samples of a complete 44-byte-header WAV, after checking its sizes."""
    assert wav[:4] == b"RIFF" and wav[8:16] == b"WAVEfmt " and wav[36:40] == b"data"
    assert int.from_bytes(wav[40:44], "little") == len(wav) - 44
    return np.frombuffer(wav[44:], "<i2")


def test_non_streaming_wav_is_the_chunks_spoken_in_order_with_timing_headers(server):
    response = synthesize(server, text=TEXT)
    assert response.status_code == 200
    assert response.headers["content-type"] == "audio/wav"
    assert response.headers["x-engine"] == "espeak" and response.headers["x-cache"] == "bypass"
    np.testing.assert_array_equal(wav_samples(response.content), as_s16(espeak_reference(TEXT)))
    audio_s = float(response.headers["x-audio-seconds"])
    assert audio_s == pytest.approx(len(decode(response.content)) / RATE, abs=0.001)
    with wave.open(io.BytesIO(response.content)) as reader:  # the reader that trusts the header's sizes
        assert reader.getnframes() / reader.getframerate() == pytest.approx(audio_s, abs=0.001)
    synthesis_ms, ttfa_ms = float(response.headers["x-synthesis-ms"]), float(response.headers["x-ttfa-ms"])
    assert 0 < ttfa_ms <= synthesis_ms
    assert_rtf_matches_its_parts(response.headers)


def test_streaming_pcm_and_wav_carry_the_same_audio_as_the_file(server):
    whole = wav_samples(synthesize(server, text=TEXT).content)
    pcm = synthesize(server, text=TEXT, streaming=True, response_format="pcm")
    assert pcm.headers["content-type"] == "audio/pcm" and pcm.headers["transfer-encoding"] == "chunked"
    assert float(pcm.headers["x-ttfa-ms"]) > 0 and "x-synthesis-ms" not in pcm.headers
    np.testing.assert_array_equal(np.frombuffer(pcm.content, "<i2"), whole)
    wav = synthesize(server, text=TEXT, streaming=True, response_format="wav")
    assert wav.content[40:44] == b"\xff\xff\xff\xff"  # data size unknown when the header left
    np.testing.assert_array_equal(np.frombuffer(wav.content[44:], "<i2"), whole)


@pytest.mark.parametrize("fmt", ["flac", "mp3", "opus"])
@pytest.mark.parametrize("streaming", [False, True])
def test_compressed_formats_decode_to_the_speech(server, fmt, streaming):
    response = synthesize(server, text="Compressed formats work too.", response_format=fmt, streaming=streaming)
    assert response.status_code == 200
    assert response.headers["content-type"] == {"flac": "audio/flac", "mp3": "audio/mpeg", "opus": "audio/ogg"}[fmt]
    pcm, rate = sf.read(io.BytesIO(response.content), dtype="float32")
    assert 1.0 < len(pcm) / rate < 3.5 and np.abs(pcm).max() > 0.05


def test_streaming_audio_arrives_while_synthesis_is_still_running(tone_server):
    text = "One sentence to start with. " * 6  # about 8 s of tone: 80 steps of 20 ms
    started = time.monotonic()
    with httpx.stream("POST", tone_server.base_url + "/synthesize", timeout=30,
                      json={"text": text, "streaming": True, "response_format": "pcm"}) as response:
        pieces = response.iter_raw()
        first = next(pieces)
        first_at = time.monotonic() - started
        total = len(first) + sum(len(piece) for piece in pieces)
    finished_at = time.monotonic() - started
    assert first and first_at < 0.4 * finished_at
    assert total == pytest.approx(len(text.strip()) * 0.05 * RATE * 2, rel=0.05)


@pytest.mark.parametrize("fields, status, code", [
    ({}, 422, "invalid_request"),
    ({"text": "   "}, 422, "invalid_request"),
    ({"text": "Hi.", "bogus": 1}, 422, "invalid_request"),
    ({"text": "Hi.", "streaming": "yes"}, 422, "invalid_request"),
    ({"text": "Hi.", "enable_batching": 1}, 422, "invalid_request"),
    ({"text": "Hi.", "priority": 1.5}, 422, "invalid_request"),
    ({"text": "Hi.", "priority": 5000}, 422, "invalid_request"),
    ({"text": "Hi.", "response_format": "aac"}, 422, "invalid_request"),
    ({"text": "Hi.", "temperature": 0}, 422, "invalid_settings"),
    ({"text": "Hi.", "exaggeration": "high"}, 422, "invalid_settings"),
    ({"text": "Hi.", "cfg_weight": 7}, 422, "invalid_settings"),
    ({"text": "Hi.", "seed": -1}, 422, "invalid_settings"),
    ({"text": "Hi.", "voice": "nobody"}, 404, "unknown_voice"),
    ({"text": "Hi.", "voice": "Not A Name"}, 400, "invalid_voice_name"),
    ({"text": "?! ..."}, 422, "nothing_to_speak"),
    ({"text": "a" * 20001}, 422, "text_too_long"),
])
def test_invalid_requests_are_refused_with_a_clear_error(server, fields, status, code):
    response = synthesize(server, **fields)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == code and error["message"]


def test_malformed_and_oversized_bodies_are_refused(server):
    json_type = {"content-type": "application/json"}
    assert server.post("/synthesize", content=b"{not json", headers=json_type).json()["error"]["code"] == "bad_json"
    assert server.post("/synthesize", content=b"[1, 2]", headers=json_type).status_code == 400
    huge = server.post("/synthesize", content=b"x" * (12 * 20000 + 70 * 1024), headers=json_type)
    assert huge.status_code == 413
    accepted = synthesize(server, text="Valid settings pass.", exaggeration=0.9, cfg_weight=0.3, temperature=0.6,
                          top_p=0.9, min_p=0.1, repetition_penalty=1.5, priority=10, enable_batching=False, seed=7)
    assert accepted.status_code == 200


def test_a_seeded_repeat_is_served_from_the_cache_without_engine_work(server):
    request = {"text": "Caching saves the engine some work.", "seed": 1234, "response_format": "mp3"}
    before = metric_samples(server)
    first = synthesize(server, **request)
    after_first = metric_samples(server)
    second = synthesize(server, **request)
    after_second = metric_samples(server)
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("miss", "hit")
    assert second.content == first.content
    assert after_first["chatterbox_cache_misses_total"] == before["chatterbox_cache_misses_total"] + 1
    assert after_first["chatterbox_batch_size_count"] > before["chatterbox_batch_size_count"]
    assert after_second["chatterbox_cache_hits_total"] == after_first["chatterbox_cache_hits_total"] + 1
    for engine_work in ("chatterbox_batch_size_count", "chatterbox_speech_tokens_total{model=standard}"):
        assert after_second[engine_work] == after_first[engine_work]
    # Another format, seed or setting is another entry.
    for variant in ({"response_format": "wav"}, {"seed": 1235}, {"exaggeration": 0.7}):
        assert synthesize(server, **{**request, **variant}).headers["x-cache"] == "miss"
    streamed = synthesize(server, **{**request, "response_format": "pcm", "streaming": True})
    assert streamed.headers["x-cache"] == "miss"
    assert synthesize(server, **{**request, "response_format": "pcm"}).headers["x-cache"] == "hit"


def test_unseeded_requests_never_touch_the_cache(server):
    before = metric_samples(server)
    for _ in range(2):
        response = synthesize(server, text="No seed, no cache.")
        assert response.headers["x-cache"] == "bypass"
    after = metric_samples(server)
    for counter in ("chatterbox_cache_hits_total", "chatterbox_cache_misses_total"):
        assert after[counter] == before[counter]
    assert after["chatterbox_batch_size_count"] > before["chatterbox_batch_size_count"]
    tokens = "chatterbox_speech_tokens_total{model=standard}"
    assert after[tokens] >= before[tokens] + 2 * 25


def test_metrics_parse_and_name_everything_the_helpers_list(server):
    unknown_voice = "chatterbox_errors_total{code=unknown_voice}"
    errors_before = metric_samples(server).get(unknown_voice, 0)
    assert synthesize(server, text="Nobody speaks.", voice="nobody").status_code == 404
    synthesize(server, text="Count me.", streaming=True, response_format="pcm")
    samples = metric_samples(server)
    for name in HELPERS_METRICS:
        assert any(sample == name or sample.startswith((name + "_", name + "{")) for sample in samples), name
    assert samples["chatterbox_ttfa_seconds_count{model=standard}"] >= 1
    assert samples["chatterbox_rtf_count{model=standard}"] >= 1
    assert samples["chatterbox_active_streams"] == 0
    assert samples[unknown_voice] == errors_before + 1


def test_engine_failure_before_audio_is_a_500_and_mid_stream_cuts_the_response(tone_server):
    failed = synthesize(tone_server, text="This will FAIL at once.")
    assert failed.status_code == 500 and failed.json()["error"]["code"] == "engine_error"
    with pytest.raises(httpx.RemoteProtocolError):  # the body ends without its final chunk
        synthesize(tone_server, text="The first sentence is fine, and long enough to go alone. "
                                     "The second one will FAIL.", streaming=True, response_format="pcm")
    assert synthesize(tone_server, text="Still serving.").status_code == 200


@pytest.mark.parametrize("streaming", [True, False])
def test_a_client_that_goes_away_frees_the_engine(tmp_path, streaming):
    engine = ToneEngine(endless=True, step_sleep_s=0.01)
    with run_server(make_settings(tmp_path), engine=engine) as server:
        state = server.app.state
        body = {"text": "First sentence here, long enough. Second sentence there.", "streaming": streaming}
        if streaming:
            with httpx.stream("POST", server.base_url + "/synthesize", json=body, timeout=10) as response:
                pieces = response.iter_raw()  # kept: a dropped iterator closes the response
                next(pieces)
                assert state.worker.active_requests == 2  # both chunks synthesize concurrently
                assert state.runtime.open_contexts == 1  # a drain would wait for it
        else:
            with pytest.raises(httpx.ReadTimeout):  # an endless engine never finishes the file
                httpx.post(server.base_url + "/synthesize", json=body, timeout=0.5)
        wait_until(lambda: state.worker.active_requests == 0 and not engine.running)
        assert state.runtime.open_contexts == 0
        assert metric_samples(server)["chatterbox_active_streams"] == 0


def test_refused_with_503_while_warming_up_or_draining(tmp_path):
    warmup_gate = threading.Event()
    with run_server(make_settings(tmp_path), engine=ToneEngine(warmup_gate=warmup_gate), wait_ready=False) as server:
        warming = synthesize(server, text="Too early.")
        assert warming.status_code == 503 and warming.json()["error"]["code"] == "warming_up"
        warmup_gate.set()
        wait_until(lambda: server.get("/ready").status_code == 200)
        assert synthesize(server, text="Now it works.").status_code == 200
        server.app.state.runtime.draining = True
        draining = synthesize(server, text="Too late.")
        assert draining.status_code == 503 and draining.json()["error"]["code"] == "shutting_down"


def test_a_drain_past_its_deadline_cuts_an_http_synthesis_off(tmp_path):
    engine = ToneEngine(endless=True, step_sleep_s=0.01)
    with run_server(make_settings(tmp_path), engine=engine) as server:
        state = server.app.state
        with httpx.stream("POST", server.base_url + "/synthesize", timeout=10,
                          json={"text": "This never ends.", "streaming": True, "response_format": "pcm"}) as response:
            pieces = response.iter_raw()
            next(pieces)
            server_loop = state.worker._loop  # the drain must run on the server's own event loop
            asyncio.run_coroutine_threadsafe(state.runtime.drain(timeout_s=0.2), server_loop).result(5)
            with pytest.raises(httpx.RemoteProtocolError):  # cut off, not a clean end
                for _ in pieces:
                    pass
        assert state.worker.active_requests == 0 and state.runtime.open_contexts == 0
