"""The multilingual model's languages and the per-language text preparation upstream's `MTLTokenizer` does.

Preparation steps and the optional packages they need (upstream imports each lazily and skips the step when
the import fails, so a language always still speaks):

* ja: kanji -> hiragana readings (`pykakasi`)
* zh: word segmentation (`spacy-pkuseg`, whose default model is downloaded on first use) before the Cangjie
  encoding, which reads `Cangjie5_TC.json`
* he: diacritics (`dicta-onnx`)
* ru: stress marks (`russian-text-stresser`)
* ko: syllables -> conjoining jamo (pure Python, always on)

`MTLTokenizer` reads `Cangjie5_TC.json` through the model hub even when loaded from a directory, and builds
the pkuseg segmenter in its constructor (a network download that may raise). `load_mtl_tokenizer` builds the
same tokenizer from local files only and records what was skipped; `preparation_status` reports it.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path
from typing import Any

from app.engine.chatterbox.model_names import SUPPORTED_LANGUAGES
from app.engine.types import EngineError

log = logging.getLogger(__name__)


# language -> (import name, the step it enables)
_OPTIONAL_STEPS = {
    "ja": ("pykakasi", "kanji to hiragana readings"),
    "zh": ("spacy_pkuseg", "word segmentation before Cangjie encoding"),
    "he": ("dicta_onnx", "diacritics (niqqud)"),
    "ru": ("russian_text_stresser", "stress marks"),
}

_segmenter_error: str | None = None


def check_language(language: str | None) -> str:
    """The normalised code of a supported language, or a clear error listing the supported ones."""
    code = (language or "").strip().lower()
    if code not in SUPPORTED_LANGUAGES:
        raise EngineError("unsupported_language", f"unsupported language {language!r}; supported: "
                                                  f"{', '.join(SUPPORTED_LANGUAGES)}")
    return code


def preparation_status() -> dict[str, dict[str, Any]]:
    """Per language with an optional step: the package, whether the step runs, and why not (for
    /optimization-status)."""
    status = {}
    for language, (module, step) in _OPTIONAL_STEPS.items():
        installed = importlib.util.find_spec(module) is not None
        reason = None if installed else f"{module} is not installed"
        if language == "zh" and installed and _segmenter_error:
            reason = _segmenter_error
        status[language] = {"step": step, "package": module, "active": reason is None, "skipped_because": reason}
    return status


def _cangjie_converter(cangjie_path: Path) -> Any:
    """Upstream's `ChineseCangjieConverter` with its mapping read from the local file (no hub access)."""
    global _segmenter_error
    from chatterbox.models.tokenizers.tokenizer import ChineseCangjieConverter

    converter = ChineseCangjieConverter.__new__(ChineseCangjieConverter)
    converter.word2cj, converter.cj2word = {}, {}
    for entry in json.loads(cangjie_path.read_text(encoding="utf-8")):
        word, code = entry.split("\t")[:2]
        converter.word2cj[word] = code
        converter.cj2word.setdefault(code, []).append(word)
    converter.segmenter = None
    if importlib.util.find_spec("spacy_pkuseg") is not None:
        try:
            from spacy_pkuseg import pkuseg

            converter.segmenter = pkuseg()
            _segmenter_error = None
        except Exception as exc:  # its model download can fail in many ways; Chinese still speaks unsegmented
            _segmenter_error = f"pkuseg model unavailable ({type(exc).__name__}: {exc})"
            log.warning("Chinese word segmentation skipped: %s", _segmenter_error)
    return converter


def load_mtl_tokenizer(vocab_path: Path, cangjie_path: Path) -> Any:
    """Upstream's `MTLTokenizer` (same `text_to_tokens`), built from local files only."""
    from chatterbox.models.tokenizers import MTLTokenizer
    from tokenizers import Tokenizer

    tokenizer = MTLTokenizer.__new__(MTLTokenizer)
    tokenizer.tokenizer = Tokenizer.from_file(str(vocab_path))
    tokenizer.cangjie_converter = _cangjie_converter(cangjie_path)
    tokenizer.check_vocabset_sot_eot()
    return tokenizer
