"""Streaming S3Gen with Turbo's distilled meanflow S3Gen: against upstream's own inference, streamed against
whole, batched against alone (tiny turbo checkpoint, CPU, float32)."""

from __future__ import annotations

import contextlib
import copy

import numpy as np
import pytest
import torch

from app.engine.chatterbox import s3gen_compute as compute
from app.engine.chatterbox.s3gen_stream import S3GenStreamer
from bench.streaming_quality import StreamingQuality, snr_db, streaming_quality

TOKENS = 110

# Our mels against upstream's for the same noise: at most float rounding apart (our fused q/k/v projection and
# attention bias); measured bitwise equal on this CPU, on mels peaking near 5. Dropping the end time `r` moves
# them by ~1.7.
MEL_TOLERANCE = 1e-4
# Batched and padded rows against one stream alone, as in test_s3gen_streaming: rounding only (measured ~1.3e-7
# on PCM peaking near 0.11).
PCM_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def turbo(tiny_turbo_checkpoint):
    """The tiny turbo models, loaded for this module alone: its time mixer is given random weights. Upstream
    initialises the mixer to pass the start time's embedding through and ignore the end time's (the trained one
    mixes both); random weights make a mishandled end time show."""
    from app.engine.chatterbox.loader import load_models

    models = load_models(str(tiny_turbo_checkpoint))
    mixer = models.s3gen.flow.decoder.estimator.time_embed_mixer
    with torch.no_grad():
        mixer.weight.copy_(torch.randn(mixer.weight.shape, generator=torch.Generator().manual_seed(7))
                           / mixer.weight.shape[1] ** 0.5)
    return models


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    return torch.randint(0, 6561, (TOKENS,), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def streamer(turbo) -> S3GenStreamer:
    return S3GenStreamer(turbo.s3gen, left_context=50)


def test_meanflow_defaults_to_upstreams_two_steps_on_a_linear_time_span(streamer):
    assert streamer.meanflow and streamer.cfm_steps == 2
    assert torch.equal(streamer._t_span, torch.tensor([0.0, 0.5, 1.0]))  # the checkpoint says cosine: ignored
    assert streamer.status()["meanflow"] is True


def _upstream_and_our_mels(turbo, tokens: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Upstream's `S3Gen.flow_inference` (finalized, seeded) and our whole-utterance mels with the same noise.
    Upstream draws the noise over the speech tokens' frames (`torch.randn`) and then over prompt + tokens
    (`randn_like(mu)`, the prompt part of which is kept); the same draws after the same seed give our stream's
    noise: the prompt part of the second, then the first."""
    ref, seed = turbo.conds.gen, 11
    frames, prompt_frames = 2 * len(tokens), ref["prompt_feat"].shape[1]
    torch.manual_seed(seed)
    upstream = turbo.s3gen.flow_inference(tokens[None], ref_dict=dict(ref), n_cfm_timesteps=steps, finalize=True)
    torch.manual_seed(seed)
    token_noise = torch.randn(1, 80, frames)
    prompt_noise = torch.randn(1, 80, prompt_frames + frames)[..., :prompt_frames]
    streamer = S3GenStreamer(turbo.s3gen, cfm_steps=steps)
    stream = streamer.open(ref, seed=0)
    stream.noise = torch.cat([prompt_noise, token_noise], dim=2)[0]
    return upstream[0], streamer.whole_mels(stream, tokens)


@pytest.mark.parametrize("steps", [2, 4])
def test_whole_decode_equals_upstream_meanflow_inference(turbo, tokens, steps):
    """The mels: the vocoder is the standard one, and upstream's draws fresh random harmonic phases and noise per
    call where ours are per-stream (its core is compared with upstream's in test_s3gen_streaming)."""
    upstream, ours = _upstream_and_our_mels(turbo, tokens[:60], steps)
    assert ours.shape == upstream.shape == (80, 120)
    assert (ours - upstream).abs().max() < MEL_TOLERANCE


def test_the_end_time_matters_to_the_comparison(turbo, tokens):
    """Negative control: with the mixer blind to the end time `r` (its initial state), ours leaves upstream's."""
    mixer = turbo.s3gen.flow.decoder.estimator.time_embed_mixer
    upstream, _ = _upstream_and_our_mels(turbo, tokens[:60], 2)
    with _end_time_ignored(mixer):
        _, ours = _upstream_and_our_mels(turbo, tokens[:60], 2)
    assert (ours - upstream).abs().max() > 100 * MEL_TOLERANCE


@contextlib.contextmanager
def _end_time_ignored(mixer: torch.nn.Linear):
    saved = mixer.weight.detach().clone()
    with torch.no_grad():
        mixer.weight[:, mixer.weight.shape[1] // 2:] = 0
    try:
        yield
    finally:
        with torch.no_grad():
            mixer.weight.copy_(saved)


# ---- streamed against whole -----------------------------------------------------------------------------------

# This random-weight vocoder hardly follows its mels (two unrelated mel sequences give PCM ~20 dB apart), so the
# flow's continuity is checked on the mels too: streamed ~20 dB from whole (the frames a chunk ends on cannot see
# the future the whole decode sees; the standard path measures ~14 dB), unrelated noise ~-1 dB.
MEL_SNR_DB = 12


def _quality(streamer: S3GenStreamer, turbo, tokens: torch.Tensor, monkeypatch) -> tuple[StreamingQuality, float]:
    """The PCM quality of the streamed decode (first 10 tokens, then 40 at a time) against the whole one, and the
    SNR (dB) of their mels: every flow call's new frames are recorded, the whole decode's last."""
    mels: list[torch.Tensor] = []
    run_flow = S3GenStreamer._run_flow

    def recording(self, calls):
        run_flow(self, calls)
        mels.extend(call.mels for call in calls)

    monkeypatch.setattr(S3GenStreamer, "_run_flow", recording)
    quality = streaming_quality(streamer, turbo.conds.gen, tokens, first=10, chunk=40, seed=3)
    streamed, whole = torch.cat(mels[:-1], dim=1), mels[-1]
    return quality, snr_db(whole.flatten().numpy(), streamed.flatten().numpy())


def test_streamed_decode_follows_whole_decode(streamer, turbo, tokens, monkeypatch):
    quality, mel_snr = _quality(streamer, turbo, tokens, monkeypatch)
    assert quality.samples_streamed == quality.samples_whole == TOKENS * 960
    # The standard path's thresholds (test_s3gen_streaming); measured here ~31 dB and ~0.7.
    assert quality.snr_db > 20
    assert quality.edge_jump_ratio < 1.5
    assert mel_snr > MEL_SNR_DB  # measured ~20 dB


def test_a_misaligned_chunk_edge_fails_the_pcm_thresholds(streamer, turbo, tokens, monkeypatch):
    """Negative control: 100 samples lost at each edge. (Not a whole number of frames: this vocoder's output nearly
    repeats every frame, so a shift by whole frames keeps ~18 dB.)"""
    monkeypatch.setattr(S3GenStreamer, "_crossfade", staticmethod(lambda old_tail, speech: speech[100:]))
    quality, _ = _quality(streamer, turbo, tokens, monkeypatch)
    assert quality.snr_db < 20 or quality.edge_jump_ratio >= 1.5  # measured ~3.5 dB


def test_fresh_noise_per_chunk_fails_the_mel_threshold(streamer, turbo, tokens, monkeypatch):
    """Negative control: the per-stream noise is what keeps re-decoded windows on the whole decode's trajectory."""
    plan = S3GenStreamer._plan

    def fresh_noise(self, *args, **kwargs):
        call = plan(self, *args, **kwargs)
        if call is not None:
            call.noise = torch.randn_like(call.noise)
        return call

    monkeypatch.setattr(S3GenStreamer, "_plan", fresh_noise)
    _, mel_snr = _quality(streamer, turbo, tokens, monkeypatch)
    assert mel_snr < MEL_SNR_DB  # measured ~-1 dB


# ---- batching, graph capture ------------------------------------------------------------------------------------


def test_two_streams_batched_equal_each_alone(turbo, tokens):
    """Two voices (prompts of 250 and 213 tokens), token counts chosen so both windows share a bucket at each
    call: padded to it and batched, one estimator row each."""
    ref = turbo.conds.gen
    other = {"prompt_token": ref["prompt_token"][:, :-37], "prompt_feat": ref["prompt_feat"][:, :-74],
             "embedding": ref["embedding"].roll(5, dims=1)}
    alone = S3GenStreamer(turbo.s3gen)
    batched = S3GenStreamer(turbo.s3gen, static_shapes=True)
    voices, seeds = [ref, other], [1, 2]
    streams_alone = [alone.open(v, seed=s) for v, s in zip(voices, seeds)]
    streams_batched = [batched.open(v, seed=s) for v, s in zip(voices, seeds)]
    for call, counts in enumerate([[13, 50], [60, 90]]):
        final = call == 1
        expected = [alone.decode(s, tokens[:n], final) for s, n in zip(streams_alone, counts)]
        got = batched.decode_many([(s, tokens[:n], final) for s, n in zip(streams_batched, counts)])
        for e, g in zip(expected, got):
            assert len(e) == len(g) > 0
            assert np.abs(e - g).max() < PCM_TOLERANCE
    assert batched.status()["flow_batches"] == {"calls": 2, "rows": 4, "padding_rows": 0}


def test_meanflow_step_runs_one_row_per_stream_without_host_syncs(turbo):
    """What a CUDA graph captures of a meanflow step runs on the meta device (a read-back to the host raises
    there) and the estimator sees B rows, not CFG's 2B."""
    estimator = compute.prepare_estimator(copy.deepcopy(turbo.s3gen.flow.decoder.estimator).to("meta"), None)
    rows: list[int] = []
    estimator.final_proj.register_forward_hook(lambda module, args, output: rows.append(output.shape[0]))
    x, mask = torch.randn(2, 80, 64, device="meta"), torch.ones(2, 1, 64, device="meta")
    t_span = torch.linspace(0, 1, 3, device="meta")
    with torch.inference_mode():
        stepped = compute.cfm_step(estimator, x, mask, x, torch.randn(2, 80, device="meta"), x,
                                   t_span[:1], t_span[1:2], 0.7)
    assert stepped.shape == x.shape and rows == [2]


def test_bfloat16_estimator_stays_close_to_float32(turbo, tokens):
    """bf16 on the CPU stands in for CUDA bf16, as in test_s3gen_streaming: a small relative error on the mels
    (measured ~0.5%)."""
    def mels(dtype) -> torch.Tensor:
        streamer = S3GenStreamer(turbo.s3gen, dtype=dtype)
        return streamer.whole_mels(streamer.open(turbo.conds.gen, seed=4), tokens[:40])

    reference, reduced = mels(None), mels("bfloat16")
    error = (reduced - reference).norm() / reference.norm()
    assert 0 < error < 0.05
