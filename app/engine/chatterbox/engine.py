"""The Chatterbox engine: T3 speech tokens, decoded to PCM by streaming S3Gen while T3 keeps generating.

Each `step()`:
1. admits waiting requests (T3 prefill of voice conditioning + text) while rows are free,
2. runs one batched T3 decode step over every running sequence (tokens stay on the device),
3. reads tokens back only when some sequence is due for audio or every `sync_every` steps (stop detection),
4. decodes due sequences' new tokens to PCM with S3Gen, most urgent first.

Conditionals travel with each request; nothing voice-specific is stored on shared modules.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Any

import numpy as np
import torch
from chatterbox.models.s3tokenizer import SPEECH_VOCAB_SIZE  # real speech codes; start/stop come after

from app.engine.base import Engine
from app.engine.chatterbox.loader import ChatterboxModels, load_models
from app.engine.chatterbox.s3gen_stream import S3GenStreamer
from app.engine.chatterbox.t3 import T3Decoder
from app.engine.scheduler import Scheduler, Sequence
from app.engine.types import (
    MAX_PROMPT_TOKENS, EngineError, EngineInfo, EngineOutput, EngineRequest, GenerationSettings)
from app.settings import Settings

log = logging.getLogger(__name__)

# Streams per S3Gen call. Warm-up captures a graph per (batch bucket, window) shape; with buckets up to 32 it did not
# finish in 150 s on an H200, so larger batches are split into calls of this size.
S3GEN_MAX_BATCH = 8
CPU_MAX_BATCH = 4


class ChatterboxEngine(Engine):
    def __init__(self, models: ChatterboxModels, device: str = "cpu", dtype: str = "float32",
                 max_batch: int = 64, cfm_steps: int = 10, left_context: int = 50,
                 first_audio_tokens: int = 10, audio_chunk_tokens: int = 40, max_new_tokens: int = 1000,
                 enable_optimizations: bool = True, compile_mode: str | None = None, watermark: bool = False,
                 synthetic_tokens_per_char: float = 0.0, s3gen_prompt_tokens: int = MAX_PROMPT_TOKENS):
        self.models = models
        self.device = device
        self.first_audio_tokens = first_audio_tokens
        self.audio_chunk_tokens = audio_chunk_tokens
        self.max_new_tokens = max_new_tokens
        self.synthetic_tokens_per_char = synthetic_tokens_per_char
        self.enable_optimizations = enable_optimizations and device.startswith("cuda")
        if self.enable_optimizations:
            # S3Gen's encoder and vocoder (and its estimator unless bf16) run in float32: let their matmuls use TF32
            # tensor cores, as PyTorch already lets convolutions do by default.
            torch.backends.cuda.matmul.allow_tf32 = True
        self.decoder = T3Decoder(models.t3, max_batch=max_batch, device=device, dtype=getattr(torch, dtype),
                                 enable_cuda_graphs=self.enable_optimizations,
                                 compile_mode=_torch_compile_mode(compile_mode) if self.enable_optimizations else None)
        # S3Gen: bf16 estimator matmuls where the engine runs bf16 (encoder and vocoder stay float32), CUDA graphs
        # per (batch, window) bucket when optimizing, several streams per flow and vocoder call.
        self.s3gen = S3GenStreamer(models.s3gen, cfm_steps=cfm_steps, left_context=left_context,
                                   dtype=dtype if device.startswith("cuda") else None,
                                   compile_mode=_torch_compile_mode(compile_mode) if self.enable_optimizations else None,
                                   cuda_graphs=self.enable_optimizations, max_batch=min(max_batch, S3GEN_MAX_BATCH),
                                   prompt_tokens=s3gen_prompt_tokens)
        self.scheduler = Scheduler(max_running=max_batch)
        # Reading tokens back costs a device sync: on a GPU batch it over several steps.
        self.sync_every = 8 if device.startswith("cuda") else 1
        self._unsynced_steps: list[tuple[list[Sequence], torch.Tensor]] = []
        self.watermarker = _make_watermarker() if watermark else None
        self.compile_seconds: float | None = None
        self.s3gen_warmup: dict | None = None
        self.info = EngineInfo(name="chatterbox", device=device, dtype=dtype,
                               details={"checkpoint": str(models.directory), "size": models.size})

    @classmethod
    def from_settings(cls, settings: Settings) -> "ChatterboxEngine":
        device = settings.resolved_device
        models = load_models(settings.checkpoint, device=device)
        # The KV cache is preallocated for every row: 64 full-size streams in float32 would need ~48 GB of host
        # memory, and a CPU cannot step more than a few streams in real time anyway.
        max_batch = settings.max_batch_size if device.startswith("cuda") else min(settings.max_batch_size, CPU_MAX_BATCH)
        return cls(models, device=device, dtype=settings.resolved_dtype, max_batch=max_batch,
                   cfm_steps=settings.cfm_steps, left_context=settings.s3gen_left_context,
                   first_audio_tokens=settings.first_audio_tokens, audio_chunk_tokens=settings.audio_chunk_tokens,
                   max_new_tokens=settings.max_new_tokens, enable_optimizations=settings.enable_optimizations,
                   compile_mode=settings.compile_mode, watermark=settings.watermark,
                   synthetic_tokens_per_char=settings.synthetic_tokens_per_char,
                   s3gen_prompt_tokens=settings.s3gen_prompt_tokens)

    # ---- Engine contract ----------------------------------------------------------------------------------

    def add_request(self, request: EngineRequest) -> None:
        if self.synthetic_tokens_per_char > 0 and request.settings.fixed_tokens is None:
            length = max(1, math.ceil(len(request.text) * self.synthetic_tokens_per_char))
            request.settings = dataclasses.replace(request.settings, fixed_tokens=min(length, 4000))
        sequence = Sequence(request)
        sequence.next_audio_at = self.first_audio_tokens + self.s3gen.lookahead
        self.scheduler.add(sequence)

    def abort_request(self, request_id: str) -> None:
        sequence = self.scheduler.remove(request_id)
        if sequence is not None and sequence.request_id in self.decoder.active:
            self.decoder.remove(request_id)

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    def step(self) -> list[EngineOutput]:
        outputs = self._admit()
        batch = self.scheduler.decode_batch()
        if batch:
            tokens = self.decoder.step([s.request_id for s in batch])
            for sequence in batch:
                sequence.unsynced += 1
            self._unsynced_steps.append((batch, tokens))
            if self._sync_due(batch):
                self._sync_tokens()
            outputs += self._decode_due_audio(batch)
        return outputs

    # ---- admission (prefill) ------------------------------------------------------------------------------

    def _admit(self) -> list[EngineOutput]:
        failed = []
        for sequence in self.scheduler.admit(self._free_sequences()):
            try:
                self._prefill(sequence)
            except Exception as exc:  # a bad request (voice, text) fails alone
                log.warning("prefill failed for %s: %s", sequence.request_id, exc)
                self.abort_request(sequence.request_id)
                error = exc if isinstance(exc, EngineError) else EngineError("engine_error", f"prefill failed: {exc}")
                failed.append(EngineOutput.failed(sequence.request_id, error))
        return failed

    def _free_sequences(self) -> int:
        rows_per_sequence = 2  # worst case (CFG); the decoder raises no_capacity if it is wrong
        return self.decoder.free_rows // rows_per_sequence

    def _prefill(self, sequence: Sequence) -> None:
        request = sequence.request
        voice = request.voice if request.voice is not None else self.models.conds
        text_tokens = self.models.tokenizer.text_to_tokens(request.text)[0].to(self.device)
        t3_cond = _with_exaggeration(voice.t3, request.settings.exaggeration, self.device)
        self.decoder.add(request.request_id, t3_cond, text_tokens, request.settings)
        sequence.state = self.s3gen.open(voice.gen, seed=request.settings.seed)
        settings = request.settings
        # A long text leaves less of the KV context for speech: stop there rather than fail the step for everyone.
        sequence.token_limit = min(settings.fixed_tokens or min(settings.max_new_tokens, self.max_new_tokens),
                                   self.decoder.tokens_left(request.request_id))

    # ---- token read-back and stop detection ---------------------------------------------------------------

    def _sync_due(self, batch: list[Sequence]) -> bool:
        return len(self._unsynced_steps) >= self.sync_every or any(
            s.generated >= min(s.next_audio_at, s.token_limit) for s in batch)

    def _sync_tokens(self) -> None:
        steps, self._unsynced_steps = self._unsynced_steps, []
        values = iter(torch.cat([tokens for _, tokens in steps]).cpu().tolist())  # one device sync
        for batch, _ in steps:
            for sequence in batch:
                self._append_token(sequence, next(values))

    def _append_token(self, sequence: Sequence, token: int) -> None:
        sequence.unsynced -= 1
        if sequence.finished:
            return
        fixed = sequence.request.settings.fixed_tokens
        if token == self.models.t3.hp.stop_speech_token and fixed is None:
            sequence.finished = True
            return
        sequence.tokens.append(token)
        if len(sequence.tokens) >= sequence.token_limit:
            sequence.finished = True


    # ---- audio --------------------------------------------------------------------------------------------

    def _decode_due_audio(self, batch: list[Sequence]) -> list[EngineOutput]:
        """One batched S3Gen call for every sequence due for audio (already in urgency order)."""
        due = [s for s in batch if s.finished or len(s.tokens) >= s.next_audio_at]
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
            self.abort_request(sequence.request_id)
            error = EngineError("engine_error", f"audio decode failed: {exc}")
            return EngineOutput.failed(sequence.request_id, error)

    def _audio_output(self, sequence: Sequence, pcm: np.ndarray) -> EngineOutput:
        if sequence.finished:
            self.abort_request(sequence.request_id)  # frees its rows
        else:
            sequence.next_audio_at = len(sequence.tokens) + self.audio_chunk_tokens
        if self.watermarker is not None and len(pcm):
            pcm = self.watermarker.apply_watermark(pcm, sample_rate=24_000).astype(np.float32)
        sequence.samples_emitted += len(pcm)
        return EngineOutput(sequence.request_id, pcm, finished=sequence.finished,
                            speech_tokens=len(sequence.tokens))

    # ---- voices -------------------------------------------------------------------------------------------

    def default_voice(self) -> Any:
        return self.models.conds

    @torch.inference_mode()
    def embed_voice(self, wav: np.ndarray, sample_rate: int) -> Any:
        return conditionals_from_wav(self.models, wav, sample_rate, self.device)

    def save_voice(self, voice: Any, path: str) -> None:
        voice.save(path)

    def load_voice(self, path: str) -> Any:
        from chatterbox.tts import Conditionals

        return Conditionals.load(path, map_location="cpu").to(self.device)

    # ---- warm-up and status -------------------------------------------------------------------------------

    def warmup(self) -> None:
        started = time.perf_counter()
        self.decoder.warmup()
        self.s3gen_warmup = self.s3gen.warmup(first_chunk_tokens=self.first_audio_tokens)
        self._warm_eager_paths()
        self.compile_seconds = time.perf_counter() - started

    def _warm_eager_paths(self) -> None:
        """One short request end to end, so first-use costs (allocator, kernels) stay out of the first reply."""
        self.add_request(EngineRequest("warmup", "Warm up.", None, GenerationSettings(seed=0, fixed_tokens=16)))
        while self.has_unfinished():
            self.step()

    def optimization_status(self) -> dict[str, Any]:
        return {**self.info.as_dict(), "t3": self.decoder.status(), "compile_seconds": self.compile_seconds,
                "float32_matmul": "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee",
                "s3gen": self.s3gen.status(),
                "first_audio_tokens": self.first_audio_tokens, "audio_chunk_tokens": self.audio_chunk_tokens,
                "queue_depth": self.scheduler.queue_depth, "running": len(self.scheduler.running)}


def _speech_tokens(sequence: Sequence) -> torch.Tensor:
    """The sequence's tokens S3Gen can voice (upstream drops the start/stop and other non-speech ids too)."""
    return torch.tensor([t for t in sequence.tokens if t < SPEECH_VOCAB_SIZE], dtype=torch.long)


def _torch_compile_mode(mode: str | None) -> str | None:
    return None if mode in (None, "none") else mode


def _with_exaggeration(cond: Any, exaggeration: float, device: str) -> Any:
    """A copy of the voice's T3 conditioning with this request's exaggeration (the voice stays untouched)."""
    from chatterbox.models.t3.modules.cond_enc import T3Cond

    return T3Cond(speaker_emb=cond.speaker_emb, cond_prompt_speech_tokens=cond.cond_prompt_speech_tokens,
                  emotion_adv=exaggeration * torch.ones(1, 1, 1)).to(device=device)


def conditionals_from_wav(models: ChatterboxModels, wav: np.ndarray, sample_rate: int, device: str) -> Any:
    """chatterbox's `prepare_conditionals`, as a pure function of the recording (nothing stored on models)."""
    import librosa
    from chatterbox.models.s3gen import S3GEN_SR
    from chatterbox.models.s3tokenizer import S3_SR
    from chatterbox.models.t3.modules.cond_enc import T3Cond
    from chatterbox.tts import ChatterboxTTS, Conditionals

    wav = np.asarray(wav, dtype=np.float32)
    wav_24k = librosa.resample(wav, orig_sr=sample_rate, target_sr=S3GEN_SR) if sample_rate != S3GEN_SR else wav
    wav_16k = librosa.resample(wav_24k, orig_sr=S3GEN_SR, target_sr=S3_SR)
    gen = models.s3gen.embed_ref(wav_24k[: ChatterboxTTS.DEC_COND_LEN], S3GEN_SR, device=device)
    prompt_len = models.t3.hp.speech_cond_prompt_len
    prompt_tokens, _ = models.s3gen.tokenizer.forward([wav_16k[: ChatterboxTTS.ENC_COND_LEN]], max_len=prompt_len)
    speaker = torch.from_numpy(models.ve.embeds_from_wavs([wav_16k], sample_rate=S3_SR)).mean(0, keepdim=True)
    t3_cond = T3Cond(speaker_emb=speaker, cond_prompt_speech_tokens=torch.atleast_2d(prompt_tokens),
                     emotion_adv=0.5 * torch.ones(1, 1, 1)).to(device=device)
    return Conditionals(t3_cond, gen)


def _make_watermarker() -> Any:
    import perth

    return perth.PerthImplicitWatermarker()
