"""A synthetic GPT-2 tokenizer for Turbo checkpoints, in GPT-2's byte-level BPE file format.

Turbo's real vocabulary (GPT-2's 50 257 tokens plus 19 added tags) cannot be downloaded here, so a small
byte-level BPE is trained locally on a fixed English text and laid out like GPT-2's: byte-level tokens and
merges at the bottom, filler entries up to id 50 255 (never produced: no merge leads to them), `<|endoftext|>`
at 50 256 and the paralinguistic tags as added tokens 50 257..50 275, so `len(tokenizer)` is the 50 276 that
upstream's `from_local` expects and every id fits T3's text embedding.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from tokenizers import ByteLevelBPETokenizer

from app.engine.chatterbox.model_names import TURBO_TAGS

END_OF_TEXT = "<|endoftext|>"
END_OF_TEXT_ID = 50256
PARALINGUISTIC_TAGS = TURBO_TAGS
VOCAB_SIZE = END_OF_TEXT_ID + 1 + len(PARALINGUISTIC_TAGS)  # 50 276
FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")

_TRAINING_TEXT = (
    "The quick brown fox jumps over the lazy dog. Hello, how are you doing today? I'm doing well, thank you. "
    "Let me check that for you. Your appointment is on Monday at three o'clock in the afternoon. "
    "Thanks for calling; is there anything else I can help you with? That's a fair point, and I agree. "
    "She sells sea shells by the sea shore. We will be right back after this short break."
)


def _train_byte_level_bpe() -> ByteLevelBPETokenizer:
    tokenizer = ByteLevelBPETokenizer()
    tokenizer.train_from_iterator([_TRAINING_TEXT] * 4, vocab_size=600, min_frequency=2, show_progress=False)
    return tokenizer


def _gpt2_shaped_vocab(trained: dict[str, int]) -> dict[str, int]:
    vocab = dict(trained)
    for filler in range(len(vocab), END_OF_TEXT_ID):
        vocab[f"<|synthetic_unused_{filler}|>"] = filler
    vocab[END_OF_TEXT] = END_OF_TEXT_ID
    return vocab


def _special(content: str) -> dict:
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
            "special": True}


def write_turbo_tokenizer(directory: Path) -> None:
    """Write the files `AutoTokenizer.from_pretrained(directory)` reads as a GPT-2 tokenizer."""
    trained = _train_byte_level_bpe()
    trained.save_model(str(directory))  # vocab.json and merges.txt
    vocab = _gpt2_shaped_vocab(json.loads((directory / "vocab.json").read_text()))
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    added = {tag: END_OF_TEXT_ID + 1 + i for i, tag in enumerate(PARALINGUISTIC_TAGS)}
    (directory / "added_tokens.json").write_text(json.dumps(added, ensure_ascii=False, indent=1))
    (directory / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": END_OF_TEXT, "eos_token": END_OF_TEXT, "unk_token": END_OF_TEXT}, indent=1))
    decoder = {str(END_OF_TEXT_ID): _special(END_OF_TEXT)}
    decoder.update({str(i): {**_special(tag), "special": False} for tag, i in added.items()})
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "GPT2Tokenizer", "add_prefix_space": False, "model_max_length": 1024,
        "bos_token": END_OF_TEXT, "eos_token": END_OF_TEXT, "unk_token": END_OF_TEXT,
        "added_tokens_decoder": decoder,
    }, ensure_ascii=False, indent=1))


class TurboTextTokenizer:
    """Turbo's text preparation as upstream `ChatterboxTurboTTS.generate` does it (punctuation cleanup, then the
    GPT-2 tokenizer, no start/stop tokens), behind the `text_to_tokens` interface of chatterbox's EnTokenizer."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    @classmethod
    def from_directory(cls, directory: Path) -> TurboTextTokenizer:
        from transformers import AutoTokenizer

        return cls(AutoTokenizer.from_pretrained(directory))

    @property
    def tags(self) -> list[str]:
        """The bracketed added tokens (paralinguistic tags) of the loaded vocabulary."""
        return sorted(t for t in self.tokenizer.get_added_vocab() if t.startswith("[") and t.endswith("]"))

    def text_to_tokens(self, text: str) -> torch.Tensor:
        from chatterbox.tts_turbo import punc_norm

        ids = self.tokenizer(punc_norm(text), truncation=True).input_ids
        return torch.tensor([ids], dtype=torch.long)
