"""The Chatterbox engine: T3 speech tokens, decoded to PCM by streaming S3Gen while T3 keeps generating.

Each `step()` (the scheduler decides, the T3 decoder and S3Gen streamer compute):
1. admits waiting requests (T3 prefill of voice conditioning + text) while rows are free,
2. runs one batched T3 decode step over every running sequence (tokens stay on the device),
3. reads tokens back only when some sequence is due for audio or every `sync_every` steps, and hands each to
   the scheduler's `postprocess` (stop token, token limit),
4. decodes due sequences' new tokens to PCM with S3Gen, most urgent first.

Conditionals travel with each request; nothing voice-specific is stored on shared modules. Requests are read,
never modified: per-request progress lives in the scheduler's `Sequence`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from chatterbox.models.s3tokenizer import SPEECH_VOCAB_SIZE  # real speech codes; start/stop come after

from app.engine.base import Engine
from app.engine.chatterbox.languages import check_language, preparation_status
from app.engine.chatterbox.loader import ChatterboxModels, load_models
from app.engine.chatterbox.s3gen_stream import S3GenStreamer
from app.engine.chatterbox.slot_decoder import SlotDecoder
from app.engine.chatterbox.t3 import T3Decoder
from app.engine.chatterbox.t3_turbo import TurboT3Decoder
from app.engine.chatterbox.word_timing import word_starts, word_times, words_of_tokens
from app.engine.config import EngineConfig
from app.engine.scheduler import Scheduler, Sequence
from app.engine.types import SAMPLE_RATE, EngineError, EngineInfo, EngineOutput, EngineRequest, GenerationSettings

log = logging.getLogger(__name__)

# Streams per S3Gen call. Warm-up captures a graph per (batch bucket, window) shape; with buckets up to 32 it did not
# finish in 150 s on an H200, so larger batches are split into calls of this size.
S3GEN_MAX_BATCH = 8


class ChatterboxEngine(Engine):
    def __init__(self, models: ChatterboxModels, config: EngineConfig):
        self.models = models
        self.config = config
        self.device = config.device
        if config.optimize:
            # S3Gen's encoder and vocoder (and its estimator unless bf16) run in float32: let their matmuls use TF32
            # tensor cores, as PyTorch already lets convolutions do by default.
            torch.backends.cuda.matmul.allow_tf32 = True
        compile_mode = config.compile_mode if config.optimize else None
        self.decoder = _decoder(models, config, compile_mode)
        # S3Gen: bf16 estimator matmuls where the engine runs bf16 (encoder and vocoder stay float32), CUDA graphs
        # per (batch, window) bucket when optimizing, several streams per flow and vocoder call.
        # Turbo's distilled (meanflow) S3Gen runs its own 2 steps; --cfm-steps is the standard flow's.
        cfm_steps = None if models.model == "turbo" else config.cfm_steps
        self.s3gen = S3GenStreamer(models.s3gen, cfm_steps=cfm_steps, left_context=config.s3gen_left_context,
                                   dtype=config.dtype if config.on_cuda else None, compile_mode=compile_mode,
                                   cuda_graphs=config.optimize, max_batch=min(config.max_batch, S3GEN_MAX_BATCH),
                                   prompt_tokens=config.s3gen_prompt_tokens)
        self.scheduler = Scheduler(config, max_running=config.max_batch, stop_token=models.t3.hp.stop_speech_token,
                                   lookahead=self.s3gen.lookahead)
        # Reading tokens back costs a device sync: on a GPU batch it over several steps.
        self.sync_every = 8 if config.on_cuda else 1
        # (batch, its sampled tokens, then the text positions its aligned heads reached when they measure them)
        self._unsynced_steps: list[tuple[list[Sequence], torch.Tensor]] = []
        self._word_separator = _word_separator(models) if self.decoder.measures_alignment else None
        self.watermarker = _make_watermarker() if config.watermark else None
        self.compile_seconds: float | None = None
        self.s3gen_warmup: dict | None = None
        self.info = EngineInfo(name="chatterbox", device=config.device, dtype=config.dtype,
                               details={"checkpoint": str(models.directory), "size": models.size,
                                        "tags": list(getattr(models.tokenizer, "tags", []))})

    @classmethod
    def from_config(cls, config: EngineConfig) -> ChatterboxEngine:
        return cls(load_models(config.checkpoint, device=config.device), config)

    # ---- Engine contract ----------------------------------------------------------------------------------

    def add_request(self, request: EngineRequest) -> None:
        self.scheduler.add(request)

    def abort_request(self, request_id: str) -> None:
        sequence = self.scheduler.remove(request_id)
        if sequence is not None:
            self.decoder.remove(request_id)

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    def step(self, only: Collection[str] | None = None) -> list[EngineOutput]:
        outputs = self._admit(only)
        batch = self.scheduler.decode_batch(only)
        if batch:
            ids = [s.request_id for s in batch]
            tokens = self.decoder.step(ids)
            if self._word_separator is not None:  # read back with the tokens, in the same device sync
                tokens = torch.cat([tokens, self.decoder.spoken_text_positions(ids)])
            for sequence in batch:
                sequence.unsynced += 1
            self._unsynced_steps.append((batch, tokens))
            if len(self._unsynced_steps) >= self.sync_every or self.scheduler.needs_tokens(batch):
                self._sync_tokens()
            outputs += self._decode_audio(self.scheduler.due_for_audio(batch))
        return outputs

    # ---- admission (prefill) ------------------------------------------------------------------------------

    def _admit(self, only: Collection[str] | None) -> list[EngineOutput]:
        failed = []
        for sequence in self.scheduler.admit(self._free_sequences(), only):
            try:
                self._prefill(sequence)
            except Exception as exc:  # a bad request (voice, text) fails alone, before the batch steps
                log.warning("prefill failed for %s: %s", sequence.request_id, exc)
                failed.append(self._fail(sequence, exc, "prefill failed"))
        return failed

    def _free_sequences(self) -> int:
        return self.decoder.free_rows // self.decoder.ROWS_PER_STREAM  # the worst case (CFG for the Llama T3)

    def _prefill(self, sequence: Sequence) -> None:
        request = sequence.request
        voice = request.voice if request.voice is not None else self.models.conds
        text_tokens = self._text_tokens(request)
        if self._word_separator is not None:
            sequence.token_words = words_of_tokens(text_tokens.tolist(), self._word_separator)
        t3_cond = _with_exaggeration(voice.t3, request.settings.exaggeration, self.device)
        self.decoder.add(request.request_id, t3_cond, text_tokens, request.settings)
        sequence.state = self.s3gen.open(voice.gen, seed=request.settings.seed)
        # A long text leaves less of the KV context for speech: stop there rather than fail the step for everyone.
        self.scheduler.limit_tokens(sequence, self.decoder.tokens_left(request.request_id))

    def _text_tokens(self, request: EngineRequest) -> torch.Tensor:
        """The text as the model's tokens: the multilingual tokenizer prepares it for its language."""
        if self.models.model == "multilingual":
            language = check_language(request.language or "en")
            return self.models.tokenizer.text_to_tokens(request.text, language_id=language)[0].to(self.device)
        return self.models.tokenizer.text_to_tokens(request.text)[0].to(self.device)

    def _fail(self, sequence: Sequence, exc: Exception, what: str) -> EngineOutput:
        """Drop a sequence whose own work failed; the error it ends with."""
        self.abort_request(sequence.request_id)
        return EngineOutput.failed(sequence.request_id, EngineError.wrap(exc, what))

    # ---- token read-back ----------------------------------------------------------------------------------

    def _sync_tokens(self) -> None:
        steps, self._unsynced_steps = self._unsynced_steps, []
        values = iter(torch.cat([tokens for _, tokens in steps]).cpu().tolist())  # one device sync
        for batch, _ in steps:
            for sequence in batch:
                self.scheduler.postprocess(sequence, next(values))
            if self._word_separator is not None:
                for sequence in batch:
                    sequence.spoken.append(next(values))

    # ---- audio --------------------------------------------------------------------------------------------

    def _decode_audio(self, due: list[Sequence]) -> list[EngineOutput]:
        """One batched S3Gen call for every sequence due for audio (already in urgency order)."""
        if not due:
            return []
        items = [(s.state, _speech_tokens(s), s.finished) for s in due]
        try:
            pcms = self.s3gen.decode_many(items)
        except Exception:  # no stream's state changed: find the failing one(s) by decoding one at a time
            log.exception("batched S3Gen decode failed; retrying streams one by one")
            return [self._decode_alone(sequence, item) for sequence, item in zip(due, items)]
        return [self._audio_output(sequence, pcm) for sequence, pcm in zip(due, pcms)]

    def _decode_alone(self, sequence: Sequence, item: tuple) -> EngineOutput:
        try:
            return self._audio_output(sequence, self.s3gen.decode_many([item])[0])
        except Exception as exc:  # one request's decode failure must not touch the others
            log.exception("S3Gen decode failed for %s", sequence.request_id)
            return self._fail(sequence, exc, "audio decode failed")

    def _audio_output(self, sequence: Sequence, pcm: np.ndarray) -> EngineOutput:
        if self.watermarker is not None and len(pcm):
            pcm = self.watermarker.apply_watermark(pcm, sample_rate=SAMPLE_RATE).astype(np.float32)
        self.scheduler.audio_emitted(sequence, len(pcm))
        if sequence.finished:
            self.decoder.remove(sequence.request_id)  # frees its rows
        return EngineOutput(sequence.request_id, pcm, finished=sequence.finished,
                            speech_tokens=len(sequence.tokens), word_times=_word_times(sequence),
                            word_starts=_word_starts(sequence))

    # ---- voices -------------------------------------------------------------------------------------------

    def default_voice(self) -> Any:
        return self.models.conds

    @torch.inference_mode()
    def embed_voice(self, wav: np.ndarray, sample_rate: int) -> Any:
        return conditionals_from_wav(self.models, wav, sample_rate, self.device, REFERENCE_RULES[self.models.model])

    def save_voice(self, voice: Any, path: str) -> None:
        voice.save(path)

    def load_voice(self, path: str) -> Any:
        from chatterbox.tts import Conditionals

        return Conditionals.load(path, map_location="cpu").to(self.device)

    # ---- warm-up and status -------------------------------------------------------------------------------

    def warmup(self) -> None:
        started = time.perf_counter()
        self.decoder.warmup()
        self.s3gen_warmup = self.s3gen.warmup(first_chunk_tokens=self.config.first_audio_tokens)
        self._warm_eager_paths()
        self.compile_seconds = time.perf_counter() - started

    def _warm_eager_paths(self) -> None:
        """One short request end to end, so first-use costs (allocator, kernels) stay out of the first reply."""
        self.add_request(EngineRequest("warmup", "Warm up.", None, GenerationSettings(seed=0), fixed_tokens=16))
        while self.has_unfinished():
            self.step()

    def optimization_status(self) -> dict[str, Any]:
        languages = {"language_preparation": preparation_status()} if self.models.model == "multilingual" else {}
        return {**self.info.as_dict(), **languages, "t3": self.decoder.status(),
                "compile_seconds": self.compile_seconds,
                "float32_matmul": "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee",
                "s3gen": self.s3gen.status(),
                "first_audio_tokens": self.config.first_audio_tokens,
                "audio_chunk_tokens": self.config.audio_chunk_tokens,
                "queue_depth": self.scheduler.queue_depth, "running": len(self.scheduler.running)}


def _decoder(models: ChatterboxModels, config: EngineConfig, compile_mode: str | None) -> SlotDecoder:
    """The T3 decode loop of the checkpoint's backbone: GPT-2 for Turbo, Llama for the others."""
    common: dict[str, Any] = dict(max_batch=config.max_batch, device=config.device, dtype=getattr(torch, config.dtype),
                                  enable_cuda_graphs=config.optimize, compile_mode=compile_mode)
    if models.t3.is_gpt:
        return TurboT3Decoder(models.t3, **common)  # GPT-2 has no aligned heads to guard with
    return T3Decoder(models.t3, alignment_guard=config.alignment_guard, **common)


def _word_separator(models: ChatterboxModels) -> int | None:
    """The text token between words (the multilingual tokenizer's `[SPACE]`), if the tokenizer has one."""
    vocabulary = getattr(models.tokenizer, "tokenizer", None)
    return vocabulary.token_to_id("[SPACE]") if vocabulary is not None else None


def _word_times(sequence: Sequence) -> list[tuple[float, float]] | None:
    """A finished sequence's measured word times (None while it runs, or where nothing was measured)."""
    if not sequence.finished or sequence.token_words is None:
        return None
    voiced = len(_speech_tokens(sequence))
    return word_times(sequence.spoken[:voiced], sequence.token_words)


def _word_starts(sequence: Sequence) -> list[float] | None:
    """The measured starts of the words a running sequence has reached (None where nothing is measured)."""
    if sequence.token_words is None:
        return None
    return word_starts(sequence.spoken[:len(_speech_tokens(sequence))], sequence.token_words)


def _speech_tokens(sequence: Sequence) -> torch.Tensor:
    """The sequence's tokens S3Gen can voice (upstream drops the start/stop and other non-speech ids too)."""
    return torch.tensor([t for t in sequence.tokens if t < SPEECH_VOCAB_SIZE], dtype=torch.long)


def _with_exaggeration(cond: Any, exaggeration: float, device: str) -> Any:
    """A copy of the voice's T3 conditioning with this request's exaggeration (the voice stays untouched)."""
    from chatterbox.models.t3.modules.cond_enc import T3Cond

    return T3Cond(speaker_emb=cond.speaker_emb, cond_prompt_speech_tokens=cond.cond_prompt_speech_tokens,
                  emotion_adv=exaggeration * torch.ones(1, 1, 1)).to(device=device)


@dataclass(frozen=True)
class ReferenceRules:
    """How a model's `prepare_conditionals` reads a reference recording (upstream's class constants)."""

    t3_seconds: float  # of the reference the T3 prompt tokens come from (ENC_COND_LEN)
    min_seconds: float = 0.0  # a reference this long or shorter is refused
    loudness_lufs: float | None = None  # normalised to this first


REFERENCE_RULES = {"standard": ReferenceRules(6.0), "multilingual": ReferenceRules(6.0),
                   "turbo": ReferenceRules(15.0, min_seconds=5.0, loudness_lufs=-27.0)}
S3GEN_REFERENCE_S = 10.0  # DEC_COND_LEN, the same for every model


def conditionals_from_wav(models: ChatterboxModels, wav: np.ndarray, sample_rate: int, device: str,
                          rules: ReferenceRules = REFERENCE_RULES["standard"]) -> Any:
    """chatterbox's `prepare_conditionals` (Turbo's with its `rules`), as a pure function of the recording
    (nothing stored on models)."""
    import librosa
    from chatterbox.models.s3gen import S3GEN_SR
    from chatterbox.models.s3tokenizer import S3_SR
    from chatterbox.models.t3.modules.cond_enc import T3Cond
    from chatterbox.tts import Conditionals

    wav = np.asarray(wav, dtype=np.float32)
    wav_24k = librosa.resample(wav, orig_sr=sample_rate, target_sr=S3GEN_SR) if sample_rate != S3GEN_SR else wav
    seconds = len(wav_24k) / S3GEN_SR
    if seconds <= rules.min_seconds:
        raise EngineError("reference_too_short", f"this model needs a reference recording longer than "
                                                 f"{rules.min_seconds:g} s; this one is {seconds:.1f} s")
    if rules.loudness_lufs is not None:
        wav_24k = _normalise_loudness(wav_24k, S3GEN_SR, rules.loudness_lufs)
    wav_16k = librosa.resample(wav_24k, orig_sr=S3GEN_SR, target_sr=S3_SR)
    gen = models.s3gen.embed_ref(wav_24k[: int(S3GEN_REFERENCE_S * S3GEN_SR)], S3GEN_SR, device=device)
    prompt_len = models.t3.hp.speech_cond_prompt_len
    prompt_tokens, _ = models.s3gen.tokenizer.forward([wav_16k[: int(rules.t3_seconds * S3_SR)]], max_len=prompt_len)
    speaker = torch.from_numpy(models.ve.embeds_from_wavs([wav_16k], sample_rate=S3_SR)).mean(0, keepdim=True)
    t3_cond = T3Cond(speaker_emb=speaker, cond_prompt_speech_tokens=torch.atleast_2d(prompt_tokens),
                     emotion_adv=0.5 * torch.ones(1, 1, 1)).to(device=device)
    return Conditionals(t3_cond, gen)


def _normalise_loudness(wav: np.ndarray, sample_rate: int, lufs: float) -> np.ndarray:
    """Upstream Turbo's `norm_loudness`: gain to `lufs` integrated loudness; unchanged where it is unmeasurable
    (silence)."""
    import pyloudnorm

    try:
        gain = 10.0 ** ((lufs - pyloudnorm.Meter(sample_rate).integrated_loudness(wav)) / 20.0)
    except ValueError:  # too short to measure
        return wav
    return (wav * gain).astype(np.float32) if np.isfinite(gain) and gain > 0 else wav


def _make_watermarker() -> Any:
    import perth

    return perth.PerthImplicitWatermarker()
