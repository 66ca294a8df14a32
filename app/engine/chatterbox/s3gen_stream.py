"""Streaming S3Gen: speech tokens to 24 kHz PCM while T3 is still generating.

S3Gen = conformer encoder (tokens -> 50 Hz features) + conditional flow matching (CFM, 10 Euler steps with its
own CFG) + HiFiGAN vocoder. Three facts shape the streaming decode:

* The flow decoder attends bidirectionally over the voice prompt and every token given to it, so a chunk
  cannot be decoded on its own. Each call re-decodes a bounded window: the prompt, up to `left_context` tokens
  already spoken, and the new tokens. Its cost grows with the window, not with the utterance.
* The last `pre_lookahead_len` (3) tokens' features need tokens that do not exist yet, so a non-final call
  emits mel frames only up to them (`finalize=False`); upstream 0.1.7 crashes there because it builds the mask
  before the cut, so the flow call is ours (encoder, projection and the Euler solver are chatterbox's).
* The noise of the Euler solver is drawn once per stream (seeded) and sliced per window, and the vocoder's
  harmonic source is carried across calls: streamed audio then tracks the whole-utterance decode. The vocoder's
  last `vocoder_overlap` mel frames are held back and re-vocoded with the next chunk, the two crossfaded with a
  Hamming window (as CosyVoice does), so a chunk edge has no click. Upstream's start-of-utterance fade
  (`trim_fade`) is applied once, to the first samples of the stream.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

TOKEN_MEL_RATIO = 2  # S3Gen: 25 Hz tokens -> 50 Hz mel frames
SAMPLES_PER_MEL = 480  # 24 kHz / 50 Hz
MEL_CHANNELS = 80


@dataclass
class S3GenStream:
    """Per-stream decoding state. `tokens_decoded` counts tokens whose mel frames have been vocoded."""

    prompt_token: torch.Tensor  # (1, P) voice prompt tokens
    prompt_feat: torch.Tensor  # (1, 2P, 80) voice prompt mels
    speaker: torch.Tensor  # (1, 80) projected speaker embedding
    noise: torch.Tensor  # (1, 80, 2P + 2*max_tokens) Euler starting point, fixed for the stream
    mels_done: int = 0  # mel frames of the utterance already vocoded (including held-back ones)
    vocoder_mel_tail: torch.Tensor | None = None  # last mel frames fed to the vocoder, re-fed next time
    vocoder_source_tail: torch.Tensor | None = None  # harmonic source over those frames
    speech_tail: torch.Tensor | None = None  # held-back samples, crossfaded with the next chunk
    samples_emitted: int = 0
    source: "HarmonicSource | None" = None


class S3GenStreamer:
    """Stateless over streams: all per-stream state lives in `S3GenStream`."""

    def __init__(self, s3gen, cfm_steps: int = 10, left_context: int = 50, vocoder_overlap: int = 8,
                 max_tokens: int = 4096):
        self.s3gen = s3gen
        self.flow = s3gen.flow
        self.cfm_steps = cfm_steps
        self.left_context = left_context  # tokens; 0 = re-decode everything spoken so far
        self.vocoder_overlap = vocoder_overlap  # mel frames
        self.max_tokens = max_tokens
        self.lookahead = self.flow.pre_lookahead_len

    @property
    def device(self) -> torch.device:
        return self.s3gen.trim_fade.device

    # ---- per-stream setup ---------------------------------------------------------------------------------

    @torch.inference_mode()
    def open(self, ref: dict, seed: int | None = None) -> S3GenStream:
        """State for one utterance in the voice `ref` (chatterbox's `Conditionals.gen` dict)."""
        device = self.device
        prompt_token = ref["prompt_token"].to(device).long().reshape(1, -1)
        prompt_feat = ref["prompt_feat"].to(device, torch.float32).reshape(1, -1, MEL_CHANNELS)
        prompt_token, prompt_feat = _align_prompt(prompt_token, prompt_feat)
        embedding = F.normalize(ref["embedding"].to(device, torch.float32).reshape(1, -1), dim=1)
        speaker = self.flow.spk_embed_affine_layer(embedding)
        generator = torch.Generator(device="cpu")
        generator.manual_seed(seed if seed is not None else int(torch.randint(0, 2**62, (1,)).item()))
        n_frames = prompt_feat.shape[1] + TOKEN_MEL_RATIO * self.max_tokens
        noise = torch.randn(1, MEL_CHANNELS, n_frames, generator=generator).to(device)
        source_seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
        source = HarmonicSource(self.s3gen.mel2wav.m_source, source_seed, device)
        return S3GenStream(prompt_token, prompt_feat, speaker, noise, source=source)

    # ---- decoding -----------------------------------------------------------------------------------------

    @torch.inference_mode()
    def decode(self, stream: S3GenStream, tokens: torch.Tensor, finalize: bool) -> np.ndarray:
        """New PCM for `tokens` (every speech token of the utterance so far, 1-D). Empty if nothing is ready."""
        tokens = tokens.to(self.device).long().reshape(-1)[: self.max_tokens]
        ready_mels = TOKEN_MEL_RATIO * (len(tokens) if finalize else max(0, len(tokens) - self.lookahead))
        if ready_mels <= stream.mels_done and not finalize:
            return np.zeros(0, dtype=np.float32)
        mels = self._flow_window(stream, tokens, ready_mels, finalize)
        return self._vocode(stream, mels, finalize)

    def _window_start(self, stream: S3GenStream) -> int:
        """First token of the window: `left_context` tokens before the first frame still to be produced."""
        if self.left_context <= 0:
            return 0
        first_new_token = stream.mels_done // TOKEN_MEL_RATIO
        return max(0, first_new_token - self.left_context)

    def _flow_window(self, stream: S3GenStream, tokens: torch.Tensor, ready_mels: int,
                     finalize: bool) -> torch.Tensor:
        """Mel frames [mels_done, ready_mels) of the utterance (1, 80, n), from one flow call over the window."""
        start = self._window_start(stream)
        window = torch.cat([stream.prompt_token, tokens[start:].unsqueeze(0)], dim=1)
        mu = self._encode(window, finalize)  # (1, 2*len(window) [- lookahead frames], 80)
        prompt_mels = stream.prompt_feat.shape[1]
        total = mu.shape[1]
        cond = torch.zeros(1, total, MEL_CHANNELS, device=mu.device)
        cond[:, :prompt_mels] = stream.prompt_feat
        first = prompt_mels + TOKEN_MEL_RATIO * start
        z = torch.cat([stream.noise[:, :, :prompt_mels], stream.noise[:, :, first:first + total - prompt_mels]], 2)
        mel = self._solve(z, mu.transpose(1, 2).contiguous(), stream.speaker, cond.transpose(1, 2).contiguous())
        utterance_offset = TOKEN_MEL_RATIO * start  # utterance frame index of the window's first token frame
        begin = prompt_mels + stream.mels_done - utterance_offset
        end = prompt_mels + ready_mels - utterance_offset
        return mel[:, :, begin:end]

    def _encode(self, window_tokens: torch.Tensor, finalize: bool) -> torch.Tensor:
        flow = self.flow
        lengths = torch.tensor([window_tokens.shape[1]], device=window_tokens.device)
        h, _ = flow.encoder(flow.input_embedding(window_tokens), lengths)
        if not finalize:
            h = h[:, : -self.lookahead * TOKEN_MEL_RATIO]
        return flow.encoder_proj(h)

    def _solve(self, z: torch.Tensor, mu: torch.Tensor, speaker: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        decoder = self.flow.decoder
        t_span = torch.linspace(0, 1, self.cfm_steps + 1, device=mu.device)
        if decoder.t_scheduler == "cosine":
            t_span = 1 - torch.cos(t_span * 0.5 * torch.pi)
        mask = torch.ones(1, 1, mu.shape[2], device=mu.device)
        return decoder.solve_euler(z, t_span=t_span, mu=mu, mask=mask, spks=speaker, cond=cond).float()

    def _vocode(self, stream: S3GenStream, new_mels: torch.Tensor, finalize: bool) -> np.ndarray:
        """Vocode new frames with the held-back frames in front; emit all but a new held-back tail."""
        hift = self.s3gen.mel2wav
        if stream.vocoder_mel_tail is not None:
            mels = torch.cat([stream.vocoder_mel_tail, new_mels], dim=2)
            source_cache = stream.vocoder_source_tail
        else:
            mels = new_mels
            source_cache = torch.zeros(1, 1, 0, device=new_mels.device)
        stream.mels_done += new_mels.shape[2]
        f0 = hift.f0_upsamp(hift.f0_predictor(mels)[:, None])[0, 0]  # (samples,) Hz
        new_source = stream.source.next(f0[source_cache.shape[2]:])
        source = torch.cat([source_cache, new_source], dim=2)
        speech = hift.decode(x=mels, s=source)[0]
        if stream.speech_tail is not None:
            speech = self._crossfade(stream.speech_tail, speech)
        if finalize:
            stream.speech_tail = None
        else:
            keep = min(self.vocoder_overlap, mels.shape[2])
            stream.vocoder_mel_tail = mels[:, :, -keep:]
            stream.vocoder_source_tail = source[:, :, -keep * SAMPLES_PER_MEL:]
            stream.speech_tail = speech[-keep * SAMPLES_PER_MEL:]
            speech = speech[: -keep * SAMPLES_PER_MEL]
        return self._fade_utterance_start(stream, speech).cpu().numpy().astype(np.float32, copy=False)

    @staticmethod
    def _crossfade(old_tail: torch.Tensor, speech: torch.Tensor) -> torch.Tensor:
        """Hamming crossfade of the held-back tail into the re-vocoded start of the new chunk."""
        n = min(len(old_tail), len(speech))
        window = torch.hamming_window(2 * n, periodic=False, device=speech.device)
        speech = speech.clone()
        speech[:n] = speech[:n] * window[:n] + old_tail[-n:] * window[n:]
        return speech

    def _fade_utterance_start(self, stream: S3GenStream, speech: torch.Tensor) -> torch.Tensor:
        """Upstream's ad-hoc start fade (20 ms silence + 20 ms ramp against prompt spill-over), applied once."""
        fade = self.s3gen.trim_fade
        start = stream.samples_emitted
        stream.samples_emitted += len(speech)
        if start >= len(fade) or len(speech) == 0:
            return speech
        n = min(len(fade) - start, len(speech))
        speech = speech.clone()
        speech[:n] *= fade[start:start + n]
        return speech

    # ---- reference: the whole utterance at once -----------------------------------------------------------

    def decode_whole(self, stream: S3GenStream, tokens: torch.Tensor) -> np.ndarray:
        """Every token in one call (no left-context bound), for comparing with the streamed decode."""
        saved, self.left_context = self.left_context, 0
        try:
            return self.decode(stream, tokens, finalize=True)
        finally:
            self.left_context = saved


class HarmonicSource:
    """HiFiGAN's neural-source excitation, made continuous across chunks and independent of the chunking.

    Upstream's SineGen restarts the harmonic phase at every call and draws fresh random phases and noise, so
    two chunkings of one utterance excite the vocoder differently. Here the phase accumulates across calls and
    the noise comes from fixed per-stream blocks indexed by sample position: the same f0 gives the same source
    whether the utterance is vocoded whole or in pieces.
    """

    NOISE_BLOCK = 4800  # samples per deterministic noise block (0.2 s)

    def __init__(self, module, seed: int, device: torch.device):
        self.module = module  # chatterbox SourceModuleHnNSF: l_sin_gen (SineGen), l_linear, l_tanh
        sine = module.l_sin_gen
        self.n_harmonics = sine.harmonic_num + 1
        self.sample_rate = sine.sampling_rate
        self.seed = seed
        self.device = device
        generator = torch.Generator().manual_seed(seed)
        offsets = (torch.rand(self.n_harmonics, 1, generator=generator) * 2 - 1) * torch.pi
        offsets[0] = 0  # as upstream: the fundamental starts at phase 0
        self.phase_offsets = offsets.to(device)
        self.cycles = torch.zeros(self.n_harmonics, 1, dtype=torch.float64, device=device)
        self.position = 0  # samples produced so far

    def next(self, f0: torch.Tensor) -> torch.Tensor:
        """Excitation (1, 1, len(f0)) for the next samples, given their f0 in Hz."""
        sine = self.module.l_sin_gen
        harmonics = torch.arange(1, self.n_harmonics + 1, device=f0.device, dtype=torch.float64)[:, None]
        cycles = self.cycles + torch.cumsum(f0.double()[None] * harmonics / self.sample_rate, dim=1)
        self.cycles = cycles[:, -1:] % 1.0
        waves = sine.sine_amp * torch.sin(2 * torch.pi * (cycles % 1.0).float() + self.phase_offsets)
        voiced = (f0 > sine.voiced_threshold).float()[None]
        noise_amp = voiced * sine.noise_std + (1 - voiced) * sine.sine_amp / 3
        waves = waves * voiced + noise_amp * self._noise(len(f0))
        self.position += len(f0)
        merged = self.module.l_tanh(self.module.l_linear(waves.T.to(self.module.l_linear.weight.dtype)))
        return merged.T[None].float()  # (1, 1, samples)

    def _noise(self, length: int) -> torch.Tensor:
        first, last = self.position // self.NOISE_BLOCK, (self.position + length - 1) // self.NOISE_BLOCK
        blocks = [self._noise_block(k) for k in range(first, last + 1)]
        offset = self.position - first * self.NOISE_BLOCK
        return torch.cat(blocks, dim=1)[:, offset:offset + length]

    def _noise_block(self, index: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + index) % 2**63)
        return torch.randn(self.n_harmonics, self.NOISE_BLOCK, generator=generator).to(self.device)


def _align_prompt(prompt_token: torch.Tensor, prompt_feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep exactly two mel frames per prompt token (embed_ref trims tokens, but older voices may not)."""
    n_tokens = min(prompt_token.shape[1], prompt_feat.shape[1] // TOKEN_MEL_RATIO)
    return prompt_token[:, :n_tokens], prompt_feat[:, : TOKEN_MEL_RATIO * n_tokens]


@dataclass(frozen=True)
class StreamingQuality:
    """Streamed decode vs whole-utterance decode of the same tokens with the same noise."""

    snr_db: float  # whole-decode energy over the energy of the difference
    edge_jump: float  # largest sample-to-sample jump at chunk edges
    inside_jump: float  # largest jump anywhere else
    samples_streamed: int
    samples_whole: int
    chunks: int
    streamed_seconds: float  # wall time of the streamed decode
    whole_seconds: float

    @property
    def edge_jump_ratio(self) -> float:
        return self.edge_jump / max(self.inside_jump, 1e-12)


def streaming_quality(streamer: S3GenStreamer, ref: dict, tokens: torch.Tensor, first: int, chunk: int,
                      seed: int = 0) -> StreamingQuality:
    """Decode `tokens` as a stream (first `first` tokens, then `chunk` at a time) and whole; compare."""
    import time

    started = time.perf_counter()
    stream = streamer.open(ref, seed=seed)
    parts, count = [], first + streamer.lookahead
    while count < len(tokens):
        parts.append(streamer.decode(stream, tokens[:count], finalize=False))
        count += chunk
    parts.append(streamer.decode(stream, tokens, finalize=True))
    streamed_seconds = time.perf_counter() - started
    started = time.perf_counter()
    whole = streamer.decode_whole(streamer.open(ref, seed=seed), tokens)
    whole_seconds = time.perf_counter() - started
    streamed = np.concatenate(parts)
    n = min(len(streamed), len(whole))
    error = streamed[:n] - whole[:n]
    snr = 10 * np.log10(np.sum(whole[:n] ** 2) / max(float(np.sum(error ** 2)), 1e-20))
    jumps = np.abs(np.diff(streamed))
    edges = np.cumsum([len(p) for p in parts[:-1]])
    at_edge = np.zeros(len(jumps), dtype=bool)
    for edge in edges:
        at_edge[max(0, edge - 2):edge + 1] = True
    return StreamingQuality(float(snr), float(jumps[at_edge].max(initial=0.0)), float(jumps[~at_edge].max()),
                            len(streamed), len(whole), len(parts), streamed_seconds, whole_seconds)
