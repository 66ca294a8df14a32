"""Synthetic multilingual checkpoints in the layout of upstream's `ChatterboxMultilingualTTS.from_local`.

Files: `ve.pt` and `s3gen.pt` (torch state dicts), `t3_mtl23ls_v2.safetensors` (T3 with the 2454-entry text
vocabulary), `grapheme_mtl_merged_expanded_v1.json` (a grapheme tokenizer), `Cangjie5_TC.json` (Chinese
character -> Cangjie code list), `conds.pt` (the default voice through upstream's own `prepare_conditionals`),
plus our `synthetic.json`.

The tokenizer is ours, not the released one: it keeps the ids T3 relies on ([STOP]=0, [START]=255), the
special tokens and `[lang]` tokens `MTLTokenizer` emits, the `[cj_*]` Cangjie tokens, and one token per
character of every supported script after upstream's preparation (lowercase + NFKD, so Latin diacritics arrive
as combining marks; Korean as conjoining jamo; Chinese as Cangjie codes). Cangjie codes are synthetic too:
unique letter strings per character, in the released file's `char<TAB>code` format.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers

from app.engine.chatterbox.arch import ModelKind, Size
from app.engine.chatterbox.checkpoint import (
    SPECIALS,
    _save_weights,
    random_modules,
    save_default_voice,
    write_synthetic_marker,
)
from app.engine.chatterbox.loader import LAYOUTS
from app.engine.chatterbox.model_names import SUPPORTED_LANGUAGES

MODEL: ModelKind = "multilingual"
VE_FILE, T3_FILE, S3GEN_FILE = LAYOUTS[MODEL].weights
TOKENIZER_FILE, CANGJIE_FILE = LAYOUTS[MODEL].tokenizer
TEXT_VOCAB_SIZE = 2454  # upstream T3Config.multilingual()

_CANGJIE_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _span(first: int, last: int) -> str:
    return "".join(chr(c) for c in range(first, last + 1))


# Common Chinese characters (and the kanji tests use); zh text reaches T3 as Cangjie codes, ja kanji as kana
# when pykakasi is installed, otherwise as themselves.
COMMON_HANZI = (
    "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过家学对可她里后小么心"
    "多天而能好都然没日于起还发成事只作当想看文无开手十用主行方又如前所本见经头面公同三已老从动两长知民样现分将外"
    "但身些与高意进把法此实回二理美点月明其种声全工己话儿者向情部正名定女问力机给等几很业最间新什打便位因重被走电"
    "四第门相次东政海口使教西再平真听世气信北少关并内加化由却代军产入先山五太水万市眼体别处总才场师书比住员九笑性"
    "通目华报立马命张活难神数件安表原车白应路期叫死常提感金何更反合放做系计或司利受光王果亲界及今京务制解各任至清"
    "物台象记边共风战干接它许八特觉望直服毛林题建南度统色字请交爱让认算论百吃义科怎元社术结六功指思非流每青管夫连"
    "远资队跟带花快条院变联言权往展该领传近留红治决周保达办运武半候七必城父强步完革深区即求品士转量空甚众技轻程告"
    "江语英基派满式李息写呢识极令黄德收脸钱党倒未持取设始版双历越史商千片容研像找友孩站广改议形委早房音火际则首单"
    "你好世界今天气很谢请问吗欢迎中文日本語漢字東京"
)

# One token per character that upstream's preparation can hand the tokenizer, script by script.
_SCRIPTS = {
    "latin": _span(0x20, 0x7E).replace(" ", "") + "¡¿«»ßæøœðþłđıŋ€£¥°–—‘’“”…",
    "combining marks": _span(0x0300, 0x036F),  # NFKD splits é, ñ, ü, å, ç, ş ... into base + mark
    "greek": _span(0x0370, 0x03FF),
    "cyrillic": _span(0x0400, 0x04FF),
    "hebrew": _span(0x0591, 0x05F4),
    "arabic": _span(0x0600, 0x06FF),
    "devanagari": _span(0x0900, 0x097F),
    "hangul jamo": _span(0x1100, 0x11FF),
    "cjk punctuation": _span(0x3000, 0x303F),
    "kana": _span(0x3041, 0x30FF),
    "fullwidth": _span(0xFF01, 0xFF5E),
    "hanzi": COMMON_HANZI,
}


def cangjie_codes() -> dict[str, str]:
    """A unique synthetic Cangjie code (two or three letters) for every character in COMMON_HANZI."""
    codes: dict[str, str] = {}
    for index, char in enumerate(dict.fromkeys(COMMON_HANZI)):
        n, code = index + len(_CANGJIE_LETTERS), ""
        while n:
            n, digit = divmod(n, len(_CANGJIE_LETTERS))
            code = _CANGJIE_LETTERS[digit] + code
        codes[char] = code
    return codes


def special_tokens() -> list[str]:
    """Tokens matched before per-character splitting: upstream's specials, `[lang]` and `[cj_*]` tokens."""
    return [*SPECIALS, *(f"[{lang}]" for lang in SUPPORTED_LANGUAGES), *(f"[cj_{c}]" for c in _CANGJIE_LETTERS + ".")]


def build_mtl_tokenizer() -> Tokenizer:
    vocab = dict(SPECIALS)
    free_ids = (i for i in range(7, TEXT_VOCAB_SIZE) if i != SPECIALS["[START]"])
    for token in special_tokens()[len(SPECIALS):]:
        vocab[token] = next(free_ids)
    for char in dict.fromkeys("".join(_SCRIPTS.values())):
        vocab.setdefault(char, next(free_ids))
    for unused in range(len(vocab), TEXT_VOCAB_SIZE):  # every id T3 can embed names a token
        vocab[f"[UNUSED{unused}]"] = unused
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tokenizer.add_special_tokens(special_tokens())
    return tokenizer


def _save_state(module: torch.nn.Module, path: Path) -> None:
    torch.save({name: tensor.detach().clone() for name, tensor in module.state_dict().items()}, path)


def _write_default_voice(directory: Path, ve: torch.nn.Module, t3: torch.nn.Module, s3gen: torch.nn.Module) -> None:
    """conds.pt through upstream's multilingual conditioning code, with the modules just written."""
    from chatterbox.mtl_tts import ChatterboxMultilingualTTS

    save_default_voice(ChatterboxMultilingualTTS(t3.eval(), s3gen.eval(), ve.eval(), None, "cpu"), directory)


def make_multilingual_checkpoint(directory: str | Path, size: Size = "tiny", seed: int = 0) -> Path:
    directory, ve, t3, s3gen = random_modules(directory, size, seed, MODEL)
    with torch.no_grad():
        _save_state(ve, directory / VE_FILE)
        _save_weights(t3, directory / T3_FILE)
        _save_state(s3gen, directory / S3GEN_FILE)
    build_mtl_tokenizer().save(str(directory / TOKENIZER_FILE))
    entries = [f"{char}\t{code}" for char, code in cangjie_codes().items()]
    (directory / CANGJIE_FILE).write_text(json.dumps(entries, ensure_ascii=False), encoding="utf-8")
    write_synthetic_marker(directory, MODEL, size, seed)
    _write_default_voice(directory, ve, t3, s3gen)
    return directory
