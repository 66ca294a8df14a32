"""One engine configuration, built once from the server's `Settings` and handed down to every engine part.

The engine, its scheduler and its graph runners read their knobs from here rather than from a relay of keyword
arguments, so a setting has one name and one meaning from the command line to the code that uses it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from app.engine.types import MAX_PROMPT_TOKENS, MAX_TOKENS, EngineRequest
from app.settings import Settings, default_model, model_list

# The KV cache is preallocated for every row: 64 full-size streams in float32 would need ~48 GB of host memory,
# and a CPU cannot step more than a few streams in real time anyway.
CPU_MAX_BATCH = 4


@dataclass(frozen=True)
class EngineConfig:
    engine: str = "chatterbox"
    model: str = "standard"  # the model this engine serves (`for_model`)
    checkpoint: str = "hub"  # that model's weights
    models: tuple[str, ...] = ("standard",)  # every model the server loads, the default first
    checkpoints: tuple[tuple[str, str], ...] = (("standard", "hub"),)  # (model, weights) for each
    device: str = "cpu"
    dtype: str = "float32"
    max_batch: int = 64  # streams decoded together
    max_new_tokens: int = 1000  # server-wide cap on speech tokens per request
    cfm_steps: int = 10
    alignment_guard: bool | None = None  # None: the decoder's default (on for the multilingual T3)
    s3gen_left_context: int = 50
    s3gen_prompt_tokens: int = MAX_PROMPT_TOKENS
    first_audio_tokens: int = 10
    audio_chunk_tokens: int = 40
    enable_optimizations: bool = True  # CUDA graphs (and torch.compile per `compile_mode`); CUDA only
    compile_mode: str = "none"  # see app.engine.graphs.CompileMode
    watermark: bool = False
    synthetic_tokens_per_char: float = 0.0  # load tests on random weights: fixed length per character

    @classmethod
    def from_settings(cls, settings: Settings) -> EngineConfig:
        device = settings.resolved_device
        max_batch = settings.max_batch_size if device.startswith("cuda") else min(settings.max_batch_size,
                                                                                  CPU_MAX_BATCH)
        models = (default_model(settings), *(m for m in model_list(settings) if m != default_model(settings)))
        checkpoints = {"standard": settings.checkpoint, "turbo": settings.turbo_checkpoint,
                       "multilingual": settings.multilingual_checkpoint}
        return cls(engine=settings.resolved_engine[0], model=models[0], checkpoint=checkpoints[models[0]],
                   models=models, checkpoints=tuple((model, checkpoints[model]) for model in models), device=device,
                   dtype=settings.resolved_dtype, max_batch=max_batch, max_new_tokens=settings.max_new_tokens,
                   cfm_steps=settings.cfm_steps,
                   alignment_guard={"auto": None, "on": True, "off": False}[settings.alignment_guard],
                   s3gen_left_context=settings.s3gen_left_context,
                   s3gen_prompt_tokens=settings.s3gen_prompt_tokens,
                   first_audio_tokens=settings.first_audio_tokens, audio_chunk_tokens=settings.audio_chunk_tokens,
                   enable_optimizations=settings.enable_optimizations, compile_mode=settings.compile_mode,
                   watermark=settings.watermark, synthetic_tokens_per_char=settings.synthetic_tokens_per_char)

    def for_model(self, model: str) -> EngineConfig:
        return dataclasses.replace(self, model=model, checkpoint=dict(self.checkpoints)[model])

    @property
    def on_cuda(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def optimize(self) -> bool:
        """Graphs and compilation are for CUDA; elsewhere everything runs eagerly."""
        return self.enable_optimizations and self.on_cuda

    def fixed_tokens(self, request: EngineRequest) -> int | None:
        """The exact speech-token count a request must produce, ignoring its stop token (benchmarks and load
        tests only: a bench-set `request.fixed_tokens`, or `synthetic_tokens_per_char`); None: speak normally."""
        if request.fixed_tokens is not None:
            return max(1, min(request.fixed_tokens, MAX_TOKENS))
        if self.synthetic_tokens_per_char > 0:
            return max(1, min(math.ceil(len(request.text) * self.synthetic_tokens_per_char), MAX_TOKENS))
        return None

    def token_budget(self, request: EngineRequest) -> tuple[int, bool]:
        """(most speech tokens the request may produce, whether the stop token is ignored)."""
        fixed = self.fixed_tokens(request)
        if fixed is not None:
            return fixed, True
        return min(request.settings.max_new_tokens, self.max_new_tokens), False
