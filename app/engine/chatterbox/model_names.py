"""The Chatterbox models and sizes this project builds, by name only: the CLI lists them without loading torch.

Every per-model table (`arch.T3_CONFIGS`, `loader.LAYOUTS`, `checkpoint.CHECKPOINT_WRITERS`) is keyed by these names.
"""

from __future__ import annotations

from typing import Literal

Size = Literal["tiny", "full"]
SIZES: tuple[Size, ...] = ("tiny", "full")
ModelKind = Literal["standard", "turbo", "multilingual"]
MODEL_KINDS: tuple[ModelKind, ...] = ("standard", "turbo", "multilingual")

# What each model speaks (ISO 639-1): the multilingual model's 23 languages, English for the others.
SUPPORTED_LANGUAGES = ("ar", "da", "de", "el", "en", "es", "fi", "fr", "he", "hi", "it", "ja", "ko", "ms", "nl",
                       "no", "pl", "pt", "ru", "sv", "sw", "tr", "zh")
MODEL_LANGUAGES: dict[str, tuple[str, ...]] = {"standard": ("en",), "turbo": ("en",),
                                               "multilingual": SUPPORTED_LANGUAGES}
DEFAULT_LANGUAGE = "en"

# Chatterbox-Turbo's tags: nine sounds, then ten delivery styles (the order of the released tokenizer is not
# known here; only membership matters to the server). The engine reads them from the loaded tokenizer.
TURBO_TAGS = (
    "[laugh]", "[chuckle]", "[sigh]", "[gasp]", "[cough]", "[clear throat]", "[sniff]", "[groan]", "[shush]",
    "[whispering]", "[angry]", "[fear]", "[surprised]", "[crying]", "[happy]", "[sarcastic]", "[dramatic]",
    "[narration]", "[advertisement]",
)
