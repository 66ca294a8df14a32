"""Synthetic checkpoints: chatterbox's real module classes with random weights, in the official file layout.

Model weights cannot be downloaded in our CI, so every loading and synthesis path is exercised on checkpoints
written here. `full` has the real dimensions (same compute as the released model); `tiny` keeps the classes at
a fraction of the size. The default voice (`conds.pt`) is computed from a real speech recording
(`assets/reference.wav`) through chatterbox's own `ChatterboxTTS.prepare_conditionals`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers

from app.engine.chatterbox.arch import Size, build_s3gen, build_t3, build_voice_encoder

REFERENCE_WAV = Path(__file__).parent / "assets" / "reference.wav"
SYNTHETIC_MARKER = "synthetic.json"

# Chatterbox's English tokenizer: [STOP]=0 (stop_text_token) and [START]=255 (start_text_token) are the ids T3
# uses; text is encoded character by character with spaces replaced by [SPACE].
_SPECIALS = {"[STOP]": 0, "[UNK]": 1, "[SPACE]": 2, "[PAD]": 3, "[SEP]": 4, "[CLS]": 5, "[MASK]": 6,
             "[START]": 255}
_CHARACTERS = ("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
               ".,!?;:'\"-()&%$#@/*+=<>[]_~`^|\\{}…—–’‘“”")


def build_tokenizer() -> Tokenizer:
    vocab = dict(_SPECIALS)
    free_ids = (i for i in range(7, 1000) if i != _SPECIALS["[START]"])
    for char in _CHARACTERS:
        vocab[char] = next(free_ids)
    for unused in range(len(vocab) - 1, _SPECIALS["[START]"]):  # no holes below [START]
        vocab[f"[UNUSED{unused}]"] = unused
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tokenizer.add_special_tokens(list(_SPECIALS))
    return tokenizer


def _save_weights(module: torch.nn.Module, path: Path) -> None:
    # safetensors refuses shared or non-contiguous storage; weights are saved as independent copies.
    state = {name: tensor.detach().clone().contiguous() for name, tensor in module.state_dict().items()}
    save_file(state, str(path))


def _write_default_voice(directory: Path, ve: torch.nn.Module, t3: torch.nn.Module, s3gen: torch.nn.Module) -> None:
    """conds.pt through upstream's own conditioning code, with the modules just written (no reload)."""
    from chatterbox.models.tokenizers import EnTokenizer
    from chatterbox.tts import ChatterboxTTS

    tokenizer = EnTokenizer(str(directory / "tokenizer.json"))
    save_default_voice(ChatterboxTTS(t3.eval(), s3gen.eval(), ve.eval(), tokenizer, "cpu"), directory)


def save_default_voice(tts, directory: Path) -> None:
    """conds.pt from the reference recording through an upstream TTS object's `prepare_conditionals`."""
    tts.prepare_conditionals(str(REFERENCE_WAV), exaggeration=0.5)
    tts.conds.save(directory / "conds.pt")


def random_modules(directory: str | Path, size: Size, seed: int, model: str = "standard"
                   ) -> tuple[Path, torch.nn.Module, torch.nn.Module, torch.nn.Module]:
    """The checkpoint directory (created) and seeded random (ve, t3, s3gen) of `model` at `size`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    return directory, build_voice_encoder(size), build_t3(size, model), build_s3gen(size)


def make_checkpoint(directory: str | Path, size: Size = "tiny", seed: int = 0) -> Path:
    """Write ve/t3_cfg/s3gen safetensors, tokenizer.json and conds.pt (plus synthetic.json) to `directory`."""
    directory, ve, t3, s3gen = random_modules(directory, size, seed)
    with torch.no_grad():
        _save_weights(ve, directory / "ve.safetensors")
        _save_weights(t3, directory / "t3_cfg.safetensors")
        _save_weights(s3gen, directory / "s3gen.safetensors")
    build_tokenizer().save(str(directory / "tokenizer.json"))
    (directory / SYNTHETIC_MARKER).write_text(json.dumps({"size": size, "seed": seed, "chatterbox_tts": "0.1.7"}))
    _write_default_voice(directory, ve, t3, s3gen)
    return directory


def _make_multilingual(directory: str | Path, size: Size = "tiny", seed: int = 0) -> Path:
    from app.engine.chatterbox.mtl_checkpoint import make_multilingual_checkpoint

    return make_multilingual_checkpoint(directory, size, seed)


# `make-checkpoint --model NAME`: one writer per model kind, each in that model's official layout.
CHECKPOINT_WRITERS: dict[str, Callable[..., Path]] = {
    "standard": make_checkpoint,
    "multilingual": _make_multilingual,
}
