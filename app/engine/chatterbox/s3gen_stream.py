"""Streaming S3Gen: speech tokens to 24 kHz PCM while T3 is still generating, for many streams at once.

S3Gen = conformer encoder (tokens -> 50 Hz features) + conditional flow matching (CFM, 10 Euler steps with its
own CFG) + HiFiGAN vocoder. Turbo's distilled "meanflow" S3Gen has the same parts; its CFM estimator is told both
ends of each step and takes 2 plain Euler steps without CFG (one estimator row per stream instead of two), which
changes only the CFM step and its times (s3gen_compute), not the streaming. Four facts shape the streaming decode:

* The flow decoder attends bidirectionally over the voice prompt and every token given to it, so a chunk
  cannot be decoded on its own. Each call re-decodes a bounded window: the prompt, up to `left_context` tokens
  already spoken, and the new tokens. Its cost grows with the window, not with the utterance. For the same
  reason the prompt's encoder output and flow activations change with every window: nothing of the prompt's
  compute can be reused across calls. What a voice contributes before any compute (aligned prompt tokens and
  mels, the projected speaker embedding) is computed once per voice (`VoiceCache`).
* The last `pre_lookahead_len` (3) tokens' features need tokens that do not exist yet, so a non-final call
  emits mel frames only up to them (`finalize=False`); their frames are masked out of the flow call.
* The noise of the Euler solver is drawn once per stream (seeded) and sliced per window, and the vocoder's
  harmonic source is carried across calls: streamed audio then tracks the whole-utterance decode. The vocoder's
  last `vocoder_overlap` mel frames are held back and re-vocoded with the next chunk, the two crossfaded with a
  Hamming window (as CosyVoice does), so a chunk edge has no click. Each vocoder window is rounded up to a
  multiple of `VOCODER_STEP` frames with real, already-vocoded frames on its left (more context, and few
  distinct shapes). Upstream's start-of-utterance fade (`trim_fade`) is applied once, to the first samples.
* `decode_many` runs the calls of many streams as batches: flow windows of different lengths and voices are
  right-padded to a shared length and masked (see s3gen_compute), vocoder windows are batched by length. With
  `static_shapes` (default on CUDA) lengths are rounded up to buckets (`WINDOW_STEP` tokens) and batch sizes
  to powers of two, so `warmup()` can capture (and compile) every shape; elsewhere only equal lengths batch.
"""

from __future__ import annotations

import functools
import logging
import time
import weakref
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from app.engine.chatterbox import s3gen_compute as compute
from app.engine.chatterbox.sampling import MASK32, mix32, stream_key
from app.engine.graphs import GraphRunner
from app.engine.types import MAX_PROMPT_TOKENS

log = logging.getLogger(__name__)

TOKEN_MEL_RATIO = 2  # S3Gen: 25 Hz tokens -> 50 Hz mel frames
SAMPLES_PER_MEL = 480  # 24 kHz / 50 Hz
MEL_CHANNELS = 80
WINDOW_STEP = 32  # tokens: flow windows are padded to multiples of this with static shapes
VOCODER_STEP = 32  # mel frames: vocoder windows are multiples of this once a stream has enough history


# ---- voices -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VoiceTensors:
    """What a voice contributes to every flow call, on the streamer's device."""

    prompt_token: torch.Tensor  # (P,) voice prompt tokens
    prompt_feat: torch.Tensor  # (80, 2P) voice prompt mels, channels first as the flow's `cond`
    speaker: torch.Tensor  # (80,) projected speaker embedding

    @property
    def prompt_tokens(self) -> int:
        return self.prompt_token.shape[0]


class VoiceCache:
    """`VoiceTensors` per voice, keyed by the identity of the voice's `prompt_feat` tensor.

    The key is held weakly: an entry goes when its voice does (and the least recently used one goes past
    `capacity`). A voice's tensors are treated as immutable, as chatterbox's `Conditionals` are used.
    """

    def __init__(self, build, capacity: int = 256):
        self._build = build
        self._capacity = capacity
        self._entries: OrderedDict[int, tuple[weakref.ref, VoiceTensors]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def _forget(self, key: int, _reference: weakref.ref) -> None:
        """The anchor of a cached voice was collected: its tensors go too."""
        self._entries.pop(key, None)

    def get(self, ref: dict) -> VoiceTensors:
        anchor = ref["prompt_feat"]
        key = id(anchor)
        entry = self._entries.get(key)
        if entry is not None and entry[0]() is anchor:
            self._entries.move_to_end(key)
            self.hits += 1
            return entry[1]
        self.misses += 1
        voice = self._build(ref)
        try:
            self._entries[key] = (weakref.ref(anchor, functools.partial(self._forget, key)), voice)
        except TypeError:  # not weak-referenceable (e.g. numpy): computed every time
            return voice
        while len(self._entries) > self._capacity:
            self._entries.popitem(last=False)
        return voice

    def status(self) -> dict:
        return {"voices": len(self._entries), "hits": self.hits, "misses": self.misses}


# ---- per-stream state ---------------------------------------------------------------------------------------


@dataclass
class S3GenStream:
    """Per-stream decoding state. Only `decode_many` changes it, and only once a whole batch succeeded."""

    voice: VoiceTensors
    noise: torch.Tensor  # (80, 2P + 2*max_tokens) Euler starting point, fixed for the stream
    source: HarmonicSource
    mels_done: int = 0  # mel frames of the utterance already produced (including held-back ones)
    mel_history: torch.Tensor | None = None  # (80, <= vocoder_overlap + VOCODER_STEP) last produced frames
    source_history: torch.Tensor | None = None  # (480 per frame,) vocoder excitation over those frames
    held_frames: int = 0  # frames at the end of mel_history whose audio is held back in speech_tail
    speech_tail: torch.Tensor | None = None  # held-back samples (CPU), crossfaded with the next chunk
    samples_emitted: int = 0


@dataclass
class _Call:
    """One stream's share of a `decode_many` call, planned before any compute and committed after."""

    stream: S3GenStream
    window: torch.Tensor  # (L,) prompt tokens + the window's speech tokens
    valid_frames: int  # flow frames that exist (the lookahead tokens' frames are masked out unless final)
    noise: torch.Tensor  # (80, 2L) Euler starting point over the window
    new_frames: slice  # the window's frames not produced before
    finalize: bool
    mels: torch.Tensor | None = None  # (80, n) new frames, once the flow ran
    pcm: np.ndarray | None = None


class S3GenStreamer:
    """Stateless over streams: all per-stream state lives in `S3GenStream`. Not thread-safe: one caller."""

    def __init__(self, s3gen, cfm_steps: int | None = None, left_context: int = 50, vocoder_overlap: int = 8,
                 max_tokens: int = 4096, *, dtype: torch.dtype | str | None = None, compile_mode: str | None = None,
                 cuda_graphs: bool = True, max_batch: int = 32, static_shapes: bool | None = None,
                 prompt_tokens: int = MAX_PROMPT_TOKENS):
        """`cfm_steps`: Euler steps of the CFM (default: upstream's, 2 for a meanflow S3Gen, else 10). `dtype`:
        precision of the flow estimator (a copy of it with its weights in that dtype; default float32); the
        encoder, the vocoder and the Euler update stay float32. `compile_mode`: as everywhere
        (app.engine.graphs), applied to the CFM step (estimator) for the shapes `warmup()` prepares.
        `cuda_graphs`: capture prepared shapes as CUDA graphs (CUDA only). `max_batch`: streams per batch.
        `static_shapes`: bucket lengths and batch sizes (default: on CUDA). `prompt_tokens`: most tokens of a
        voice's prompt (and their mels) conditioning the flow, from its start as upstream cuts the reference."""
        self.s3gen = s3gen
        self.flow = s3gen.flow
        self.hift = s3gen.mel2wav
        self.meanflow = bool(self.flow.decoder.estimator.meanflow)
        self.cfm_steps = cfm_steps or (2 if self.meanflow else 10)  # upstream's S3Gen.flow_inference defaults
        self.left_context = left_context  # tokens; 0 = re-decode everything spoken so far
        self.vocoder_overlap = vocoder_overlap  # mel frames
        self.max_tokens = max_tokens
        self.lookahead = self.flow.pre_lookahead_len
        self.max_batch = max_batch
        self.prompt_tokens = prompt_tokens
        device = self.device
        self.static_shapes = device.type == "cuda" if static_shapes is None else static_shapes
        self.dtype = _resolve_dtype(dtype)
        self.estimator = compute.prepare_estimator(self.flow.decoder.estimator, self.dtype)
        self.graphs = GraphRunner("S3Gen", device, compile_mode, cuda_graphs)
        self.hift.stft_window = self.hift.stft_window.to(device)  # upstream moves it on every call otherwise
        compute.prepare_vocoder(self.hift)
        self._trim_fade = s3gen.trim_fade.cpu()
        self.voices = VoiceCache(self._voice_tensors)
        self._t_span = compute.cfm_time_span(self.cfm_steps, self.flow.decoder.t_scheduler, device, self.meanflow)
        self._warmup_seconds = 0.0
        self._batches: dict[str, list[int]] = {"flow": [0, 0, 0], "vocoder": [0, 0, 0]}  # calls, rows, pad rows
        self._build_runners()

    @property
    def device(self) -> torch.device:
        return self.s3gen.trim_fade.device

    # ---- per-stream setup ---------------------------------------------------------------------------------

    @torch.inference_mode()
    def open(self, ref: dict, seed: int | None = None) -> S3GenStream:
        """State for one utterance in the voice `ref` (chatterbox's `Conditionals.gen` dict)."""
        voice = self.voices.get(ref)
        generator = torch.Generator(device="cpu")
        generator.manual_seed(seed if seed is not None else int(torch.randint(0, 2**62, (1,)).item()))
        n_frames = voice.prompt_feat.shape[1] + TOKEN_MEL_RATIO * self.max_tokens
        noise = torch.randn(MEL_CHANNELS, n_frames, generator=generator).to(self.device)
        source_seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
        return S3GenStream(voice, noise, HarmonicSource(self.hift.m_source, source_seed, self.device))

    def _voice_tensors(self, ref: dict) -> VoiceTensors:
        device = self.device
        prompt_token = ref["prompt_token"].to(device).long().reshape(-1)
        prompt_feat = ref["prompt_feat"].to(device, torch.float32).reshape(-1, MEL_CHANNELS)
        # embed_ref's alignment of tokens to mel frames, cut to the configured prompt length
        n_tokens = min(prompt_token.shape[0], prompt_feat.shape[0] // TOKEN_MEL_RATIO, self.prompt_tokens)
        embedding = F.normalize(ref["embedding"].to(device, torch.float32).reshape(1, -1), dim=1)
        with torch.inference_mode():
            speaker = self.flow.spk_embed_affine_layer(embedding)[0]
        return VoiceTensors(prompt_token[:n_tokens].contiguous(),
                            prompt_feat[: TOKEN_MEL_RATIO * n_tokens].T.contiguous(), speaker)

    # ---- decoding -----------------------------------------------------------------------------------------

    def decode(self, stream: S3GenStream, tokens: torch.Tensor, finalize: bool) -> np.ndarray:
        """New PCM for `tokens` (every speech token of the utterance so far, 1-D). Empty if nothing is ready."""
        return self.decode_many([(stream, tokens, finalize)])[0]

    def decode_many(self, items: list[tuple[S3GenStream, torch.Tensor, bool]]) -> list[np.ndarray]:
        """`decode` for several streams, batched: one result per item, in order. A stream may appear once. On
        an exception no stream's state has changed, so the caller can retry items one by one."""
        return self._decode_many(items, self.left_context)

    @torch.inference_mode()
    def _decode_many(self, items: list[tuple[S3GenStream, torch.Tensor, bool]], left_context: int
                     ) -> list[np.ndarray]:
        if len({id(stream) for stream, _, _ in items}) != len(items):
            raise ValueError("decode_many got the same stream twice")
        calls = [self._plan(stream, tokens, finalize, left_context) for stream, tokens, finalize in items]
        active = [call for call in calls if call is not None]
        self._run_flow([call for call in active if call.new_frames.stop > call.new_frames.start])
        commits = self._run_vocoder(active)
        for commit in commits:
            commit()
        empty = np.zeros(0, dtype=np.float32)
        return [call.pcm if call is not None and call.pcm is not None else empty for call in calls]

    def _plan(self, stream: S3GenStream, tokens: torch.Tensor, finalize: bool, left_context: int) -> _Call | None:
        tokens = tokens.to(self.device).long().reshape(-1)[: self.max_tokens]
        ready_mels = TOKEN_MEL_RATIO * (len(tokens) if finalize else max(0, len(tokens) - self.lookahead))
        if ready_mels <= stream.mels_done and not (finalize and stream.held_frames):
            return None
        # The window starts `left_context` tokens before the first frame still to be produced (0: everything).
        first_new_token = stream.mels_done // TOKEN_MEL_RATIO
        start = max(0, first_new_token - left_context) if left_context > 0 else 0
        voice = stream.voice
        window = torch.cat([voice.prompt_token, tokens[start:]])
        prompt_mels = voice.prompt_feat.shape[1]
        token_mels = TOKEN_MEL_RATIO * (len(window) - voice.prompt_tokens)
        first = prompt_mels + TOKEN_MEL_RATIO * start
        noise = torch.cat([stream.noise[:, :prompt_mels], stream.noise[:, first:first + token_mels]], dim=1)
        offset = prompt_mels - TOKEN_MEL_RATIO * start  # window frame of utterance frame 0
        new_frames = slice(offset + stream.mels_done, offset + max(ready_mels, stream.mels_done))
        return _Call(stream, window, offset + ready_mels, noise, new_frames, finalize)

    # ---- flow: encoder + Euler solver over padded batches -------------------------------------------------

    def _run_flow(self, calls: list[_Call]) -> None:
        for group in self._groups(calls, lambda call: len(call.window), WINDOW_STEP):
            width = max(len(call.window) for call in group)
            width = _round_up(width, WINDOW_STEP) if self.static_shapes else width
            mels = self._flow_batch(group, width)
            for call, mel in zip(group, mels):
                call.mels = mel[:, call.new_frames]

    def _flow_batch(self, calls: list[_Call], width: int) -> torch.Tensor:
        """Mels (B, 80, 2*width) for calls whose windows fit `width` tokens."""
        device, frames = self.device, TOKEN_MEL_RATIO * width
        rows = self._rows(len(calls))
        self._count("flow", len(calls), rows)
        calls = calls + [calls[0]] * (rows - len(calls))  # batch padding: copies, whose results are dropped
        tokens = torch.zeros(rows, width, dtype=torch.long, device=device)
        z = torch.zeros(rows, MEL_CHANNELS, frames, device=device)
        cond = torch.zeros(rows, MEL_CHANNELS, frames, device=device)
        for i, call in enumerate(calls):
            tokens[i, :len(call.window)] = call.window
            z[i, :, :call.noise.shape[1]] = call.noise
            cond[i, :, :call.stream.voice.prompt_feat.shape[1]] = call.stream.voice.prompt_feat
        lengths = torch.tensor([len(call.window) for call in calls], device=device)
        valid = torch.tensor([call.valid_frames for call in calls], device=device)
        mask = compute.padding_mask(valid, frames)[:, None].float()
        (mu,) = self.graphs.run("encoder", tokens, lengths)
        speaker = torch.stack([call.stream.voice.speaker for call in calls])
        return self._solve(z, mu, mask, speaker, cond)

    def _solve(self, z: torch.Tensor, mu: torch.Tensor, mask: torch.Tensor, speaker: torch.Tensor,
               cond: torch.Tensor) -> torch.Tensor:
        """The Euler solver, one CFM step (one graph replay when captured) at a time."""
        x = z
        for i in range(self.cfm_steps):
            (x,) = self.graphs.run("cfm_step", x, mask, mu, speaker, cond, *self._step_times(i))
        return x

    def _step_times(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._t_span[step:step + 1], self._t_span[step + 1:step + 2]

    # ---- vocoder: batched by window length, continuous across chunks --------------------------------------

    def _run_vocoder(self, calls: list[_Call]) -> list:
        """Vocode every call's new frames; returns the state updates to apply once all of them succeeded."""
        windows = [self._vocoder_window(call) for call in calls]
        commits = []
        for group in self._groups(list(zip(calls, windows)), lambda item: item[1][0].shape[1], None):
            commits += self._vocode_batch(group)
        return commits

    def _vocoder_window(self, call: _Call) -> tuple[torch.Tensor, int]:
        """(mels (80, V), context frames before the new ones): the new frames with enough already-produced
        frames on their left to reach a multiple of VOCODER_STEP (all of them when there are fewer)."""
        stream, new = call.stream, call.mels if call.mels is not None else self._no_mels()
        if stream.mel_history is None:
            return new, 0
        target = _round_up(stream.held_frames + new.shape[1], VOCODER_STEP)
        context = min(stream.mel_history.shape[1], target - new.shape[1])  # >= held_frames: history holds them
        return torch.cat([stream.mel_history[:, stream.mel_history.shape[1] - context:], new], dim=1), context

    def _vocode_batch(self, group: list[tuple[_Call, tuple[torch.Tensor, int]]]) -> list:
        rows = self._rows(len(group))
        self._count("vocoder", len(group), rows)
        mels = torch.stack([window for _, (window, _) in group] + [group[0][1][0]] * (rows - len(group)))
        (f0,) = self.graphs.run("f0", mels)
        source, source_states = self._vocoder_source(group, f0)
        magnitude, phase = self.graphs.run("spectrum", mels, source[:, None])
        speech = compute.vocoder_waveform(self.hift, magnitude, phase).cpu()  # one copy; the rest is light work
        return [self._emit(call, window, context, source[i], speech[i], state)
                for i, ((call, (window, context)), state) in enumerate(zip(group, source_states))]

    def _vocoder_source(self, group: list[tuple[_Call, tuple[torch.Tensor, int]]], f0: torch.Tensor
                        ) -> tuple[torch.Tensor, list]:
        """The excitation (rows, samples) over each vocoder window: the stored one over the context frames,
        a new one (all rows in one batch) over the new frames; and each source's state after them."""
        samples = f0.shape[1]
        known = [context * SAMPLES_PER_MEL for _, (_, context) in group]
        # Each row's new part, moved to the row's start (the tail past its length is never used)
        shift = torch.tensor(known + [0] * (f0.shape[0] - len(group)), device=f0.device)[:, None]
        columns = torch.arange(samples, device=f0.device)
        new_f0 = f0.gather(1, (columns + shift).clamp(max=samples - 1))
        excitation, states = HarmonicSource.excite([call.stream.source for call, _ in group], new_f0[:len(group)],
                                                   [samples - k for k in known])
        source = torch.empty_like(f0)
        for i, ((call, _), k) in enumerate(zip(group, known)):
            if k:
                history = call.stream.source_history
                assert history is not None  # k > 0: this stream has been vocoded before
                source[i, :k] = history[-k:]
            source[i, k:] = excitation[i, :samples - k]
        source[len(group):] = source[0]  # batch padding rows
        return source, states

    def _emit(self, call: _Call, window: torch.Tensor, context: int, source: torch.Tensor, speech: torch.Tensor,
              source_state: tuple):
        """Set `call.pcm` from `speech` (on the CPU: crossfaded, start-faded, held-back tail removed); return
        the state update."""
        stream = call.stream
        speech = speech[(context - stream.held_frames) * SAMPLES_PER_MEL:]  # the held-back frames and the new
        if stream.speech_tail is not None:
            speech = self._crossfade(stream.speech_tail, speech)
        keep = 0 if call.finalize else min(self.vocoder_overlap, stream.held_frames + window.shape[1] - context)
        tail = speech[len(speech) - keep * SAMPLES_PER_MEL:] if keep else None
        speech = speech[: len(speech) - keep * SAMPLES_PER_MEL]
        call.pcm = self._fade_utterance_start(stream.samples_emitted, speech).numpy()
        history_frames = self.vocoder_overlap + VOCODER_STEP

        def commit() -> None:
            stream.mels_done += window.shape[1] - context
            stream.mel_history = window[:, -history_frames:]
            stream.source_history = source[-history_frames * SAMPLES_PER_MEL:]
            stream.held_frames, stream.speech_tail = keep, tail
            stream.samples_emitted += 0 if call.pcm is None else len(call.pcm)
            stream.source.advance(source_state)

        return commit

    def _no_mels(self) -> torch.Tensor:
        return torch.zeros(MEL_CHANNELS, 0, device=self.device)

    @staticmethod
    def _crossfade(old_tail: torch.Tensor, speech: torch.Tensor) -> torch.Tensor:
        """Hamming crossfade of the held-back tail into the re-vocoded start of the new chunk."""
        n = min(len(old_tail), len(speech))
        window = torch.hamming_window(2 * n, periodic=False, device=speech.device)
        speech = speech.clone()
        speech[:n] = speech[:n] * window[:n] + old_tail[-n:] * window[n:]
        return speech

    def _fade_utterance_start(self, emitted: int, speech: torch.Tensor) -> torch.Tensor:
        """Upstream's ad-hoc start fade (20 ms silence + 20 ms ramp against prompt spill-over), applied once."""
        fade = self._trim_fade
        if emitted >= len(fade) or len(speech) == 0:
            return speech
        n = min(len(fade) - emitted, len(speech))
        speech = speech.clone()
        speech[:n] *= fade[emitted:emitted + n]
        return speech

    # ---- batching helpers ---------------------------------------------------------------------------------

    def _groups(self, items: list, length, step: int | None) -> list[list]:
        """Items with the same (bucketed, with static shapes) length, in batches of at most `max_batch`."""
        by_length: dict[int, list] = {}
        for item in items:
            key = length(item)
            by_length.setdefault(_round_up(key, step) if step and self.static_shapes else key, []).append(item)
        return [group[i:i + self.max_batch] for group in by_length.values()
                for i in range(0, len(group), self.max_batch)]

    def _rows(self, count: int) -> int:
        return 1 << (count - 1).bit_length() if self.static_shapes else count

    def _count(self, stage: str, rows: int, padded_rows: int) -> None:
        counts = self._batches[stage]
        counts[0] += 1
        counts[1] += rows
        counts[2] += padded_rows - rows

    # ---- compilation, CUDA graphs, warm-up ----------------------------------------------------------------

    def _build_runners(self) -> None:
        """Encoder, CFM step and vocoder, each captured per shape: a step rather than the whole solve, so a
        capture costs one step's launches and the graphs serve every `cfm_steps`. Only the CFM step is compiled:
        it is nearly all of S3Gen's compute, and inductor breaks the vocoder's graph at its STFT (measured on
        torch 2.11); CUDA graphs still remove the vocoder's launch overhead."""
        flow, estimator, cfg, hift = self.flow, self.estimator, self.flow.decoder.inference_cfg_rate, self.hift

        def encoder(tokens, lengths):
            return (compute.encode(flow, tokens, lengths).transpose(1, 2).contiguous(),)

        def cfm_step(x, mask, mu, speaker, cond, t, r):
            return (compute.cfm_step(estimator, x, mask, mu, speaker, cond, t, r, cfg),)

        def f0(mels):
            return (compute.vocoder_f0(hift, mels),)

        def spectrum(mels, source):
            return compute.vocoder_spectrum(hift, mels, source)

        self.graphs.register("encoder", encoder, compile=False)
        self.graphs.register("cfm_step", cfm_step, shapes=64 * 16)
        self.graphs.register("f0", f0, compile=False)
        self.graphs.register("spectrum", spectrum, compile=False)

    @property
    def compile_mode(self) -> str | None:
        return self.graphs.compile_mode

    @torch.inference_mode()
    def warmup(self, batch_sizes: Iterable[int] | None = None, window_tokens: Iterable[int] | None = None,
               vocoder_frames: Iterable[int] | None = None, first_chunk_tokens: int | None = None) -> dict:
        """Compile and/or capture the flow solver for every (batch, window) bucket and the vocoder for every
        (batch, vocoder window) bucket; a no-op without compile or CUDA graphs. Defaults: every batch bucket up
        to `max_batch`; windows of up to `prompt_tokens` + `left_context` + 64 tokens; vocoder windows of every
        multiple of VOCODER_STEP up to 8 of them. `vocoder_frames` are exact; a stream's first chunk is
        vocoded at its own length, so `first_chunk_tokens` (the engine's first_audio_tokens, without the
        lookahead) adds that shape. Returns what it prepared; a failure leaves eager decoding, with the reason
        in `status()`."""
        if not self.graphs.optimizing:
            return {"prepared": [], "seconds": 0.0, "fallback_reason": self.graphs.fallback_reason,
                    "note": "eager: no compile mode and no CUDA graphs"}
        batches = sorted({self._rows(b) for b in batch_sizes or self._batch_buckets()}, reverse=True)
        max_window = self.prompt_tokens + self.left_context + 64
        windows = sorted({_round_up(w, WINDOW_STEP) if self.static_shapes else w
                          for w in window_tokens or range(WINDOW_STEP, max_window + WINDOW_STEP, WINDOW_STEP)},
                         reverse=True)
        frame_counts = set(vocoder_frames or range(VOCODER_STEP, 8 * VOCODER_STEP + 1, VOCODER_STEP))
        vocoder = sorted(frame_counts | ({TOKEN_MEL_RATIO * first_chunk_tokens} if first_chunk_tokens else set()),
                         reverse=True)
        prepared, started = [], time.perf_counter()
        try:
            for rows in batches:  # largest first: later captures reuse the graph pool's memory
                for width in windows:
                    seconds = compute.timed(functools.partial(self._prepare_flow, rows, width))
                    prepared.append({"stage": "flow", "batch": rows, "window_tokens": width, "seconds": seconds})
                for frames in vocoder:
                    mels = torch.randn(rows, MEL_CHANNELS, frames, device=self.device)
                    source = torch.zeros(rows, 1, frames * SAMPLES_PER_MEL, device=self.device)
                    seconds = compute.timed(functools.partial(self._capture_vocoder, mels, source))
                    prepared.append({"stage": "vocoder", "batch": rows, "frames": frames, "seconds": seconds})
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
        except Exception as exc:
            self.graphs.fall_back(f"warmup failed: {type(exc).__name__}: {exc}")
        self._warmup_seconds += time.perf_counter() - started
        return {"prepared": prepared, "seconds": round(self._warmup_seconds, 3),
                "fallback_reason": self.graphs.fallback_reason}

    def _capture_vocoder(self, mels: torch.Tensor, source: torch.Tensor) -> None:
        self.graphs.capture("f0", mels)
        self.graphs.capture("spectrum", mels, source)

    def _prepare_flow(self, rows: int, width: int) -> None:
        frames, device = TOKEN_MEL_RATIO * width, self.device
        tokens = torch.zeros(rows, width, dtype=torch.long, device=device)
        self.graphs.capture("encoder", tokens, torch.full((rows,), width, device=device))
        x = torch.randn(rows, MEL_CHANNELS, frames, device=device)
        self.graphs.capture("cfm_step", x, torch.ones(rows, 1, frames, device=device), torch.randn_like(x),
                            torch.randn(rows, MEL_CHANNELS, device=device), torch.zeros_like(x),
                            *self._step_times(0))

    def _batch_buckets(self) -> list[int]:
        return [1 << i for i in range((self.max_batch - 1).bit_length() + 1)]

    def status(self) -> dict:
        flow_calls, flow_rows, flow_pad = self._batches["flow"]
        vocoder_calls, vocoder_rows, vocoder_pad = self._batches["vocoder"]
        return {
            "device": str(self.device),
            "estimator_dtype": str(self.dtype or torch.float32).removeprefix("torch."),
            "encoder_vocoder_dtype": "float32",
            **self.graphs.status(),
            "static_shapes": self.static_shapes,
            "prepared_flow_shapes": self.graphs.prepared("cfm_step"),
            "prepared_vocoder_shapes": self.graphs.prepared("spectrum"),
            "warmup_seconds": round(self._warmup_seconds, 3),
            "cfm_steps": self.cfm_steps,
            "meanflow": self.meanflow,
            "left_context_tokens": self.left_context,
            "prompt_tokens": self.prompt_tokens,
            "vocoder_overlap_frames": self.vocoder_overlap,
            "max_batch": self.max_batch,
            "flow_batches": {"calls": flow_calls, "rows": flow_rows, "padding_rows": flow_pad},
            "vocoder_batches": {"calls": vocoder_calls, "rows": vocoder_rows, "padding_rows": vocoder_pad},
            "voice_cache": self.voices.status(),
        }

    # ---- reference: the whole utterance at once -----------------------------------------------------------

    @torch.inference_mode()
    def whole_mels(self, stream: S3GenStream, tokens: torch.Tensor) -> torch.Tensor:
        """The flow's mels (80, 2 * len(tokens)) for every token in one call, not vocoded; the stream is not
        advanced (for measuring precision and step-count effects)."""
        call = self._plan(stream, tokens, True, left_context=0)
        assert call is not None  # a finalized plan of tokens always has work
        self._run_flow([call])
        assert call.mels is not None  # set by the flow run
        return call.mels

    def decode_whole(self, stream: S3GenStream, tokens: torch.Tensor) -> np.ndarray:
        """Every token in one call (no left-context bound), for comparing with the streamed decode."""
        return self._decode_many([(stream, tokens, True)], left_context=0)[0]


def _round_up(length: int, step: int) -> int:
    return -(-length // step) * step


def _resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    resolved: torch.dtype | None = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    return None if resolved in (None, torch.float32) else resolved


class HarmonicSource:
    """HiFiGAN's neural-source excitation, made continuous across chunks and independent of the chunking.

    Upstream's SineGen restarts the harmonic phase at every call and draws fresh random phases and noise, so
    two chunkings of one utterance excite the vocoder differently. Here the phase accumulates across calls and
    the noise is a counter-based hash of (stream, harmonic, sample position), as T3's sampling noise is: the
    same f0 gives the same source whether the utterance is vocoded whole or in pieces, and many streams'
    sources come from one batched computation on the device. `excite` computes, `advance` commits.
    """

    _DRAW_SALT = 0x5BD1E995  # separates the two uniform draws of a Box-Muller pair

    def __init__(self, module, seed: int, device: torch.device):
        self.module = module  # chatterbox SourceModuleHnNSF: l_sin_gen (SineGen), l_linear, l_tanh
        n_harmonics = module.l_sin_gen.harmonic_num + 1
        generator = torch.Generator().manual_seed(seed)
        offsets = (torch.rand(n_harmonics, 1, generator=generator) * 2 - 1) * torch.pi
        offsets[0] = 0  # as upstream: the fundamental starts at phase 0
        self.phase_offsets = offsets.to(device)
        key = stream_key(seed)
        self.keys = torch.tensor([mix32(key ^ mix32((2 * h + draw * self._DRAW_SALT) & MASK32))
                                  for h in range(n_harmonics) for draw in (0, 1)], device=device).view(-1, 2)
        self.cycles = torch.zeros(n_harmonics, 1, dtype=torch.float64, device=device)
        self.position = 0  # samples produced so far

    @staticmethod
    def excite(sources: list[HarmonicSource], f0: torch.Tensor, counts: list[int]
               ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, int]]]:
        """Excitation (B, S) for the next `counts[i]` samples of each source, given their f0 in Hz (B, S) (past
        a row's count, f0 and excitation are don't-care), and each source's state after them."""
        module = sources[0].module
        sine = module.l_sin_gen
        n_harmonics = sine.harmonic_num + 1
        harmonics = torch.arange(1, n_harmonics + 1, device=f0.device, dtype=torch.float64)[:, None]
        start = torch.stack([source.cycles for source in sources])  # (B, H, 1)
        cycles = start + torch.cumsum(f0.double()[:, None] * harmonics / sine.sampling_rate, dim=2)
        offsets = torch.stack([source.phase_offsets for source in sources])
        waves = sine.sine_amp * torch.sin(2 * torch.pi * (cycles % 1.0).float() + offsets)
        voiced = (f0 > sine.voiced_threshold).float()[:, None]
        noise_amp = voiced * sine.noise_std + (1 - voiced) * sine.sine_amp / 3
        positions = torch.tensor([source.position for source in sources], device=f0.device)[:, None]
        noise = _normal_noise(torch.stack([source.keys for source in sources]),
                              positions + torch.arange(f0.shape[1], device=f0.device))
        waves = waves * voiced + noise_amp * noise
        merged = module.l_tanh(module.l_linear(waves.transpose(1, 2).to(module.l_linear.weight.dtype)))
        states = [(cycles[i, :, count - 1:count] % 1.0 if count else source.cycles, source.position + count)
                  for i, (source, count) in enumerate(zip(sources, counts))]
        return merged[..., 0].float(), states

    def advance(self, state: tuple[torch.Tensor, int]) -> None:
        self.cycles, self.position = state


def _normal_noise(keys: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """(B, H, S) standard normals, a pure function of (key pair (B, H, 2), sample position (B, S)): Box-Muller
    over two hashed uniforms in (0, 1)."""
    hashed = mix32((positions & MASK32)[:, None])  # (B, 1, S)

    def uniform(draw: int) -> torch.Tensor:
        bits = mix32(hashed ^ keys[:, :, draw:draw + 1]) >> 8  # 24 bits: exact in float32
        return (bits.to(torch.float32) + 0.5) * (1.0 / (1 << 24))

    return torch.sqrt(-2.0 * torch.log(uniform(0))) * torch.cos(2 * torch.pi * uniform(1))
