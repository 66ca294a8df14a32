"""Chatterbox module construction for three models at two sizes, using chatterbox-tts's own classes.

`standard` is `ChatterboxTTS` (Llama T3, 10-step S3Gen); `multilingual` is `ChatterboxMultilingualTTS` (the same
modules, a larger text vocabulary); `turbo` is `ChatterboxTurboTTS` (GPT-2 T3, meanflow S3Gen). `full` is exactly
what chatterbox-tts 0.1.7 builds (`T3()`, `S3Gen()`, `VoiceEncoder()`, and for turbo the hyperparameters
`ChatterboxTurboTTS.from_local` sets): same parameters, same compute. `tiny` keeps every class and interface but
shrinks depth and width so CPU tests run in seconds.
A synthetic checkpoint records its size in `synthetic.json` (a file the official loader ignores); a directory
without it is the official architecture.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from chatterbox.models.s3gen import S3Gen
from chatterbox.models.s3gen.const import S3GEN_SR
from chatterbox.models.s3gen.decoder import ConditionalDecoder
from chatterbox.models.s3gen.f0_predictor import ConvRNNF0Predictor
from chatterbox.models.s3gen.hifigan import HiFTGenerator
from chatterbox.models.s3gen.transformer.upsample_encoder import UpsampleConformerEncoder
from chatterbox.models.t3 import T3
from chatterbox.models.t3.llama_configs import LLAMA_CONFIGS
from chatterbox.models.t3.modules.t3_config import T3Config
from chatterbox.models.voice_encoder import VoiceEncoder

from app.engine.chatterbox.model_names import ModelKind, Size

TINY_LLAMA = "Llama_tiny_synthetic"
# Width stays 1024: T3's Perceiver resampler hard-codes it. Depth and MLP width shrink.
LLAMA_CONFIGS.setdefault(TINY_LLAMA, {
    **LLAMA_CONFIGS["Llama_520M"],
    "num_hidden_layers": 2,
    "intermediate_size": 1024,
})


TURBO_GPT2 = "GPT2_medium"
TINY_GPT2 = "GPT2_tiny_synthetic"
# Turbo has no Perceiver resampler, so its width can shrink too. The text vocabulary stays 50 276: upstream's
# from_local fixes it, and the tokenizer's ids (tags at the top) must fit.
LLAMA_CONFIGS.setdefault(TINY_GPT2, {
    **LLAMA_CONFIGS[TURBO_GPT2],
    "n_embd": 128, "hidden_size": 128, "n_head": 4, "n_layer": 2, "n_positions": 2048, "n_ctx": 2048,
})
TURBO_TEXT_VOCAB = 50276


def _llama_t3_config(upstream: Callable[[], T3Config]) -> Callable[[Size], T3Config]:
    """Upstream's Llama T3 hyperparameters, with the tiny Llama at size `tiny`."""
    def config(size: Size) -> T3Config:
        hp = upstream()
        if size == "tiny":
            hp.llama_config_name = TINY_LLAMA
        return hp
    return config


def _turbo_t3_config(size: Size) -> T3Config:
    """The hyperparameters `ChatterboxTurboTTS.from_local` sets (chatterbox-tts 0.1.7), at `size`."""
    hp = T3Config(text_tokens_dict_size=TURBO_TEXT_VOCAB)
    hp.llama_config_name = TINY_GPT2 if size == "tiny" else TURBO_GPT2
    hp.speech_tokens_dict_size = 6563
    hp.input_pos_emb = None
    hp.speech_cond_prompt_len = 375
    hp.use_perceiver_resampler = False
    hp.emotion_adv = False
    return hp


# T3 hyperparameters per model; the multilingual T3 differs from the standard one only in its 2454-entry text
# vocabulary, Turbo's is a GPT-2.
T3_CONFIGS: dict[ModelKind, Callable[[Size], T3Config]] = {
    "standard": _llama_t3_config(T3Config.english_only),
    "turbo": _turbo_t3_config,
    "multilingual": _llama_t3_config(T3Config.multilingual),
}


def t3_config(size: Size, model: ModelKind = "standard") -> T3Config:
    return T3_CONFIGS[model](size)


def build_t3(size: Size, model: ModelKind = "standard") -> T3:
    return T3(t3_config(size, model))


def build_s3gen(size: Size, model: ModelKind = "standard") -> S3Gen:
    meanflow = model == "turbo"
    s3gen = S3Gen(meanflow=meanflow)
    if size == "tiny":
        _shrink_s3gen(s3gen, meanflow)
    return s3gen


def build_voice_encoder(size: Size) -> VoiceEncoder:
    return VoiceEncoder()  # already small (1.4M parameters); keeping it exact keeps embeddings meaningful


def _shrink_s3gen(s3gen: S3Gen, meanflow: bool) -> None:
    """Replace the heavy parts (conformer encoder, flow estimator, HiFiGAN) with narrow, shallow versions."""
    s3gen.flow.encoder = UpsampleConformerEncoder(
        output_size=512, attention_heads=8, linear_units=256, num_blocks=1, dropout_rate=0.0,
        positional_dropout_rate=0.0, attention_dropout_rate=0.0, normalize_before=True, input_layer="linear",
        pos_enc_layer_type="rel_pos_espnet", selfattention_layer_type="rel_selfattn", input_size=512,
        use_cnn_module=False, macaron_style=False,
    )
    s3gen.flow.decoder.estimator = ConditionalDecoder(
        in_channels=320, out_channels=80, causal=True, channels=[64], dropout=0.0, attention_head_dim=32,
        n_blocks=1, num_mid_blocks=1, num_heads=2, act_fn="gelu", meanflow=meanflow,
    )
    s3gen.mel2wav = HiFTGenerator(
        sampling_rate=S3GEN_SR, base_channels=64, upsample_rates=[8, 5, 3], upsample_kernel_sizes=[16, 11, 7],
        source_resblock_kernel_sizes=[7, 7, 11], source_resblock_dilation_sizes=[[1, 3, 5]] * 3,
        f0_predictor=ConvRNNF0Predictor(),
    )


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
