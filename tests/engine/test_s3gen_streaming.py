"""Streaming S3Gen against the whole-utterance decode, for the same tokens and the same noise."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app.engine.chatterbox.s3gen_stream import S3GenStreamer
from bench.streaming_quality import stream_chunks, streaming_quality

TOKENS = 110


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    return torch.randint(0, 6561, (TOKENS,), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def streamer(tiny_models) -> S3GenStreamer:
    return S3GenStreamer(tiny_models.s3gen, cfm_steps=4, left_context=50)


def test_streamed_audio_matches_whole_decode(streamer, tiny_models, tokens):
    quality = streaming_quality(streamer, tiny_models.conds.gen, tokens, first=10, chunk=40, seed=3)
    assert quality.samples_streamed == quality.samples_whole == TOKENS * 960
    # Thresholds: measured ~31 dB and ~0.9 on this random-weight model; a misaligned or unfaded edge gives
    # an SNR near 0 dB and edge jumps several times the largest jump inside chunks.
    assert quality.snr_db > 20
    assert quality.edge_jump_ratio < 1.5


def test_a_broken_boundary_fails_the_same_thresholds(streamer, tiny_models, tokens, monkeypatch):
    monkeypatch.setattr(S3GenStreamer, "_crossfade", staticmethod(lambda old_tail, speech: speech[len(old_tail) // 2:]))
    quality = streaming_quality(streamer, tiny_models.conds.gen, tokens, first=10, chunk=40, seed=3)
    assert quality.snr_db < 20 or quality.edge_jump_ratio >= 1.5


def test_same_seed_same_audio_different_seed_different_audio(streamer, tiny_models, tokens):
    def decode(seed: int) -> np.ndarray:
        return streamer.decode_whole(streamer.open(tiny_models.conds.gen, seed=seed), tokens[:30])

    assert np.array_equal(decode(5), decode(5))
    assert not np.allclose(decode(5), decode(6))


def test_start_fade_applies_once(streamer, tiny_models, tokens):
    stream = streamer.open(tiny_models.conds.gen, seed=1)
    first = streamer.decode(stream, tokens[:13], finalize=False)
    assert np.all(first[:480] == 0)  # upstream's 20 ms of silence at the utterance start
    second = streamer.decode(stream, tokens[:53], finalize=False)
    assert np.abs(second[:480]).max() > 0  # not re-applied at the next chunk


def test_nothing_ready_returns_empty(streamer, tiny_models, tokens):
    stream = streamer.open(tiny_models.conds.gen, seed=1)
    assert len(streamer.decode(stream, tokens[:3], finalize=False)) == 0


# ---- batching across streams, padding, voices, compilation ------------------------------------------------

# Padded and batched rows differ from the one-stream decode only by float rounding: measured ~2e-7 on PCM
# peaking near 0.08. A mask that lets a pad position leak into a real one gives differences of ~1e-2.
PCM_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def other_voice(tiny_models) -> dict:
    """A second voice with a shorter prompt, so windows of the two voices have different lengths."""
    gen = tiny_models.conds.gen
    return {"prompt_token": gen["prompt_token"][:, :-37], "prompt_feat": gen["prompt_feat"][:, :-74],
            "embedding": gen["embedding"].roll(5, dims=1)}


def test_padded_encoder_and_solver_rows_equal_unpadded_and_upstream(tiny_models, tokens):
    from app.engine.chatterbox import s3gen_compute as compute

    flow = tiny_models.s3gen.flow
    window = torch.cat([tiny_models.conds.gen["prompt_token"], tokens[None, :60]], dim=1)
    with torch.inference_mode():
        hidden, _ = flow.encoder(flow.input_embedding(window), torch.tensor([window.shape[1]]))
        upstream = flow.encoder_proj(hidden)
        padded = torch.cat([window, tokens[None, :45]], dim=1)  # pad with real tokens: a leak would show
        mine = compute.encode(flow, padded, torch.tensor([window.shape[1]]))
        assert torch.allclose(mine[:, :upstream.shape[1]], upstream, atol=1e-5)

        streamer = S3GenStreamer(tiny_models.s3gen, cfm_steps=3)
        frames = upstream.shape[1]
        z, speaker = torch.randn(1, 80, frames), torch.randn(1, 80)
        mu, cond = upstream.transpose(1, 2).contiguous(), torch.randn(1, 80, frames)
        mask = torch.ones(1, 1, frames)
        reference = flow.decoder.solve_euler(z, t_span=streamer._t_span, mu=mu, mask=mask, spks=speaker, cond=cond)
        pad = 64  # a second row and 64 pad frames of noise, masked out of the first row
        batch = [torch.cat([torch.cat([a, torch.randn(1, a.shape[1], pad)], 2),
                            torch.randn(1, a.shape[1], frames + pad)]) for a in (z, mu, cond)]
        batch_mask = torch.cat([torch.cat([mask, torch.zeros(1, 1, pad)], 2), torch.ones(1, 1, frames + pad)])
        solved = streamer._solve(batch[0], batch[1], batch_mask, torch.cat([speaker, speaker]), batch[2])
        assert torch.allclose(solved[:1, :, :frames], reference, atol=1e-4)


def test_vocoder_core_equals_upstream_decode():
    """Ours (weight norm folded once, the inverse STFT split off) against upstream's `decode` on a copy that keeps
    its weight-norm parametrizations."""
    from torch.nn.utils import parametrize

    from app.engine.chatterbox import s3gen_compute as compute
    from app.engine.chatterbox.arch import build_s3gen

    def fresh_hift():  # built twice rather than deep-copied: a copy shares its parametrized class with the original
        torch.manual_seed(0)
        return build_s3gen("tiny").mel2wav.eval()

    upstream_hift, hift = fresh_hift(), fresh_hift()
    compute.prepare_vocoder(hift)
    assert parametrize.is_parametrized(upstream_hift.conv_pre) and not parametrize.is_parametrized(hift.conv_pre)
    mels, source = torch.randn(2, 80, 32), torch.randn(2, 1, 32 * 480) * 0.1
    with torch.inference_mode():
        upstream = upstream_hift.decode(x=mels, s=source)
        mine = compute.vocoder_waveform(hift, *compute.vocoder_spectrum(hift, mels, source))
        upstream_f0 = upstream_hift.f0_upsamp(upstream_hift.f0_predictor(mels)[:, None])
        assert torch.allclose(compute.vocoder_f0(hift, mels)[:, None], upstream_f0, atol=1e-6)
    assert torch.allclose(mine, upstream, atol=1e-6)


def test_captured_parts_have_no_host_syncs_or_host_tensors(tiny_models):
    """What CUDA graphs capture (the encoder, a CFM step, the vocoder up to its inverse STFT) runs on the meta
    device, where a read-back to the host (`.item()`, as upstream's estimator does) or a host tensor raises."""
    import copy

    from app.engine.chatterbox import s3gen_compute as compute

    flow = copy.deepcopy(tiny_models.s3gen.flow).to("meta")
    estimator = flow.decoder.estimator
    hift = copy.deepcopy(tiny_models.s3gen.mel2wav).to("meta")
    hift.stft_window = hift.stft_window.to("meta")
    x, mask = torch.randn(2, 80, 64, device="meta"), torch.ones(2, 1, 64, device="meta")
    speaker = torch.randn(2, 80, device="meta")
    t_span = torch.linspace(0, 1, 3, device="meta")
    mels, source = torch.randn(2, 80, 32, device="meta"), torch.randn(2, 1, 32 * 480, device="meta")
    with torch.inference_mode():
        encoded = compute.encode(flow, torch.zeros(2, 32, dtype=torch.long, device="meta"),
                                 torch.tensor([32, 20], device="meta"))
        stepped = compute.cfm_step(estimator, x, mask, x, speaker, x, t_span[:1], t_span[1:2], 0.7)
        reduced = compute.cfm_step(compute.prepare_estimator(estimator, torch.bfloat16), x, mask, x, speaker, x,
                                   t_span[:1], t_span[1:2], 0.7)
        f0 = compute.vocoder_f0(hift, mels)
        magnitude, _ = compute.vocoder_spectrum(hift, mels, source)
    assert encoded.shape == (2, 64, 80) and stepped.shape == x.shape and f0.shape == (2, 32 * 480)
    assert reduced.dtype == torch.float32  # the Euler update stays float32 around a bf16 estimator
    assert magnitude.device.type == "meta"


def test_decode_many_equals_decoding_each_stream_alone(tiny_models, other_voice, tokens):
    """Three streams, two voices, different token counts and seeds, padded to shared buckets and batched."""
    alone = S3GenStreamer(tiny_models.s3gen, cfm_steps=2)
    batched = S3GenStreamer(tiny_models.s3gen, cfm_steps=2, static_shapes=True)
    voices, seeds = [tiny_models.conds.gen, other_voice, tiny_models.conds.gen], [1, 2, 3]
    schedule = [[13, 13, 20], [60, 50, 70]]  # tokens per stream at each call; the last finalizes
    streams_alone = [alone.open(v, seed=s) for v, s in zip(voices, seeds)]
    streams_batched = [batched.open(v, seed=s) for v, s in zip(voices, seeds)]
    for call, counts in enumerate(schedule):
        final = call == len(schedule) - 1
        expected = [alone.decode(s, tokens[:n], final) for s, n in zip(streams_alone, counts)]
        got = batched.decode_many([(s, tokens[:n], final) for s, n in zip(streams_batched, counts)])
        for e, g in zip(expected, got):
            assert len(e) == len(g) > 0
            assert np.abs(e - g).max() < PCM_TOLERANCE
    flow = batched.status()["flow_batches"]
    assert flow["rows"] == 6 and flow["calls"] < 6  # some windows did share a batch


def test_decode_many_leaves_states_untouched_when_it_fails(streamer, tiny_models, tokens, monkeypatch):
    stream = streamer.open(tiny_models.conds.gen, seed=1)
    streamer.decode(stream, tokens[:13], finalize=False)
    before = (stream.mels_done, stream.samples_emitted, stream.source.position)
    monkeypatch.setattr(S3GenStreamer, "_crossfade", staticmethod(lambda old, new: 1 / 0))
    with pytest.raises(ZeroDivisionError):
        streamer.decode_many([(stream, tokens[:53], False)])
    assert (stream.mels_done, stream.samples_emitted, stream.source.position) == before
    with pytest.raises(ValueError):
        streamer.decode_many([(stream, tokens[:53], False), (stream, tokens[:53], False)])


def test_voice_tensors_are_computed_once_per_voice(tiny_models, other_voice):
    streamer = S3GenStreamer(tiny_models.s3gen, cfm_steps=3)
    first, second = streamer.open(tiny_models.conds.gen, seed=1), streamer.open(tiny_models.conds.gen, seed=2)
    third = streamer.open(other_voice, seed=1)
    assert first.voice is second.voice and third.voice is not first.voice
    assert streamer.status()["voice_cache"] == {"voices": 2, "hits": 1, "misses": 2}
    assert third.voice.prompt_tokens == tiny_models.conds.gen["prompt_token"].shape[1] - 37


def test_a_shorter_prompt_conditions_on_the_voices_first_tokens(tiny_models, tokens):
    full = S3GenStreamer(tiny_models.s3gen, cfm_steps=2)
    short = S3GenStreamer(tiny_models.s3gen, cfm_steps=2, prompt_tokens=50)
    ref = tiny_models.conds.gen
    long_voice, voice = full.open(ref, seed=1).voice, short.open(ref, seed=1).voice
    assert voice.prompt_tokens == 50 and voice.prompt_feat.shape[1] == 100
    assert torch.equal(voice.prompt_token, long_voice.prompt_token[:50])
    assert torch.equal(voice.prompt_feat, long_voice.prompt_feat[:, :100])
    pcm = [np.concatenate(stream_chunks(s, s.open(ref, seed=3), tokens[:40], 10, 20)) for s in (full, short)]
    assert len(pcm[0]) == len(pcm[1]) == 40 * 960  # the same speech, conditioned differently
    assert not np.allclose(pcm[0], pcm[1], atol=1e-3)


def test_a_compile_failure_falls_back_to_eager_with_its_reason(tiny_models, tokens, monkeypatch):
    from app.engine import graphs

    unknown = S3GenStreamer(tiny_models.s3gen, cfm_steps=2, compile_mode="no-such-mode")  # fails at once
    assert unknown.status()["compile_mode"] is None and "no-such-mode" in unknown.status()["fallback_reason"]

    def broken(*args):
        raise RuntimeError("inductor exploded")

    monkeypatch.setattr(graphs, "compile_function", lambda fn, mode, shapes, dynamic: broken)  # fails while warming up
    streamer = S3GenStreamer(tiny_models.s3gen, cfm_steps=2, compile_mode="default")
    report = streamer.warmup(batch_sizes=[1], window_tokens=[64], vocoder_frames=[32])
    assert "inductor exploded" in report["fallback_reason"] and streamer.status()["compile_mode"] is None
    assert streamer.status()["prepared_flow_shapes"] == 0
    assert len(streamer.decode(streamer.open(tiny_models.conds.gen, seed=1), tokens[:20], finalize=True)) == 20 * 960


def test_bfloat16_estimator_stays_close_to_float32(tiny_models, tokens):
    """bf16 on the CPU stands in for CUDA bf16: the mels may differ, but only by a small relative error; the
    model's own estimator keeps its float32 weights (the streamer runs a bf16 copy)."""
    def mels(dtype) -> torch.Tensor:
        streamer = S3GenStreamer(tiny_models.s3gen, cfm_steps=3, dtype=dtype)
        return streamer.whole_mels(streamer.open(tiny_models.conds.gen, seed=4), tokens[:40])

    reference, reduced = mels(None), mels("bfloat16")
    error = (reduced - reference).norm() / reference.norm()
    assert 0 < error < 0.05
    assert next(tiny_models.s3gen.flow.decoder.estimator.parameters()).dtype == torch.float32
