"""Synthetic checkpoints: chatterbox's real module classes with random weights, in the official file layout.

Model weights cannot be downloaded in our CI, so every loading and synthesis path is exercised on checkpoints
written here. `full` has the real dimensions (same compute as the released model); `tiny` keeps the classes at
a fraction of the size. `standard` writes ResembleAI/chatterbox's layout, `turbo` ResembleAI/chatterbox-turbo's.
The default voice (`conds.pt`) is computed from a real speech recording (`assets/reference.wav`) through
chatterbox's own `prepare_conditionals` of the matching model class.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers

from app.engine.chatterbox.arch import ModelKind, Size, build_s3gen, build_t3, build_voice_encoder
from app.engine.chatterbox.loader import LAYOUTS
from app.engine.chatterbox.turbo_tokenizer import write_turbo_tokenizer

REFERENCE_WAV = Path(__file__).parent / "assets" / "reference.wav"
SYNTHETIC_MARKER = "synthetic.json"

# Chatterbox's English tokenizer: [STOP]=0 (stop_text_token) and [START]=255 (start_text_token) are the ids T3
# uses; text is encoded character by character with spaces replaced by [SPACE].
SPECIALS = {"[STOP]": 0, "[UNK]": 1, "[SPACE]": 2, "[PAD]": 3, "[SEP]": 4, "[CLS]": 5, "[MASK]": 6,
             "[START]": 255}
_CHARACTERS = ("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
               ".,!?;:'\"-()&%$#@/*+=<>[]_~`^|\\{}…—–’‘“”")


def build_tokenizer() -> Tokenizer:
    vocab = dict(SPECIALS)
    free_ids = (i for i in range(7, 1000) if i != SPECIALS["[START]"])
    for char in _CHARACTERS:
        vocab[char] = next(free_ids)
    for unused in range(len(vocab) - 1, SPECIALS["[START]"]):  # no holes below [START]
        vocab[f"[UNUSED{unused}]"] = unused
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tokenizer.add_special_tokens(list(SPECIALS))
    return tokenizer


def _save_weights(module: torch.nn.Module, path: Path) -> None:
    # safetensors refuses shared or non-contiguous storage; weights are saved as independent copies.
    state = {name: tensor.detach().clone().contiguous() for name, tensor in module.state_dict().items()}
    save_file(state, str(path))


def _float32_result(norm_loudness: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
    """Upstream's Turbo loudness normalisation multiplies by a numpy float64 gain, which under numpy 2 turns the
    wav into float64 and breaks its own speech tokenizer (float32 mel filters); cast back, change nothing else."""
    return lambda wav, sr: norm_loudness(wav, sr).astype(np.float32)


def _write_default_voice(directory: Path, model: ModelKind, ve: torch.nn.Module, t3: torch.nn.Module,
                         s3gen: torch.nn.Module) -> None:
    """conds.pt through upstream's own conditioning code, with the modules just written (no reload)."""
    if model == "turbo":
        from chatterbox.tts_turbo import ChatterboxTurboTTS
        from transformers import AutoTokenizer

        tts = ChatterboxTurboTTS(t3.eval(), s3gen.eval(), ve.eval(), AutoTokenizer.from_pretrained(directory), "cpu")
        tts.norm_loudness = _float32_result(tts.norm_loudness)
    else:
        from chatterbox.models.tokenizers import EnTokenizer
        from chatterbox.tts import ChatterboxTTS

        tts = ChatterboxTTS(t3.eval(), s3gen.eval(), ve.eval(), EnTokenizer(str(directory / "tokenizer.json")), "cpu")
    save_default_voice(tts, directory)


def save_default_voice(tts, directory: Path) -> None:
    """conds.pt from the reference recording through an upstream TTS object's `prepare_conditionals`."""
    tts.prepare_conditionals(str(REFERENCE_WAV), exaggeration=0.5)
    tts.conds.save(directory / "conds.pt")


def random_modules(directory: str | Path, size: Size, seed: int, model: ModelKind = "standard"
                   ) -> tuple[Path, torch.nn.Module, torch.nn.Module, torch.nn.Module]:
    """The checkpoint directory (created) and seeded random (ve, t3, s3gen) of `model` at `size`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    return directory, build_voice_encoder(size), build_t3(size, model), build_s3gen(size, model)


def make_checkpoint(directory: str | Path, size: Size = "tiny", seed: int = 0,
                    model: ModelKind = "standard") -> Path:
    """Write `model`'s weight files, tokenizer and conds.pt (plus synthetic.json) to `directory`
    (standard or turbo; the multilingual layout is `mtl_checkpoint`'s)."""
    directory, *modules = random_modules(directory, size, seed, model)
    with torch.no_grad():
        for module, name in zip(modules, LAYOUTS[model].weights, strict=True):
            _save_weights(module, directory / name)
    if model == "turbo":
        write_turbo_tokenizer(directory)
    else:
        build_tokenizer().save(str(directory / "tokenizer.json"))
    write_synthetic_marker(directory, model, size, seed)
    _write_default_voice(directory, model, *modules)
    return directory


def write_synthetic_marker(directory: Path, model: ModelKind, size: Size, seed: int) -> None:
    """synthetic.json: what the loader reads the size from (the official loader ignores it)."""
    (directory / SYNTHETIC_MARKER).write_text(json.dumps(
        {"model": model, "size": size, "seed": seed, "chatterbox_tts": "0.1.7"}))


def _make_multilingual(directory: str | Path, size: Size = "tiny", seed: int = 0) -> Path:
    from app.engine.chatterbox.mtl_checkpoint import make_multilingual_checkpoint

    return make_multilingual_checkpoint(directory, size, seed)


# `make-checkpoint --model NAME`: one writer per model, each in that model's official layout.
CHECKPOINT_WRITERS: dict[ModelKind, Callable[..., Path]] = {
    "standard": make_checkpoint,
    "turbo": functools.partial(make_checkpoint, model="turbo"),
    "multilingual": _make_multilingual,
}
