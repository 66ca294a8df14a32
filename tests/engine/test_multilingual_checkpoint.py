"""The synthetic multilingual checkpoint: official layout, loadable by upstream and by our loader, and a
tokenizer that covers every supported script."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from app.engine.chatterbox.languages import SUPPORTED_LANGUAGES, check_language, preparation_status
from app.engine.chatterbox.loader import LAYOUTS, CheckpointError, load_models
from app.engine.chatterbox.mtl_checkpoint import TEXT_VOCAB_SIZE, build_mtl_tokenizer
from app.engine.types import EngineError

# One sentence per script family (and per language with its own preparation step).
SAMPLES = {
    "en": "Hello there, how are you today?",
    "fr": "Ça va très bien, merci !",
    "de": "Grüße aus München, schön!",
    "pl": "Zażółć gęślą jaźń.",
    "ru": "Привет, как дела?",
    "el": "Καλημέρα; Τι κάνεις;",
    "ar": "مرحبا، كيف حالك؟",
    "he": "שלום, מה שלומך?",
    "hi": "नमस्ते, आप कैसे हैं।",
    "zh": "你好，世界。今天天气很好！",
    "ja": "こんにちは、世界。東京へ行きます。",
    "ko": "안녕하세요, 세계!",
}
UNK = 1


@pytest.fixture()
def upstream_offline_hub(monkeypatch, tiny_mtl_checkpoint: Path):
    """Upstream's MTLTokenizer fetches Cangjie5_TC.json through the hub: serve it from the checkpoint."""
    import chatterbox.models.tokenizers.tokenizer as upstream_tokenizer

    monkeypatch.setattr(upstream_tokenizer, "hf_hub_download",
                        lambda repo_id, filename, cache_dir=None: str(Path(cache_dir) / filename))


def _tiny_upstream_constructors(monkeypatch) -> None:
    """Upstream's from_local builds full-size modules; point its constructors at the tiny architecture."""
    import chatterbox.mtl_tts as mtl_tts

    from app.engine.chatterbox.arch import build_s3gen, t3_config

    monkeypatch.setattr(mtl_tts.T3Config, "multilingual", classmethod(lambda cls: t3_config("tiny", "multilingual")))
    monkeypatch.setattr(mtl_tts, "S3Gen", lambda: build_s3gen("tiny"))


def test_layout_is_upstreams(tiny_mtl_checkpoint: Path):
    for name in ("ve.pt", "t3_mtl23ls_v2.safetensors", "s3gen.pt", "grapheme_mtl_merged_expanded_v1.json",
                 "conds.pt", "Cangjie5_TC.json"):
        assert (tiny_mtl_checkpoint / name).is_file(), name
    assert set(LAYOUTS["multilingual"].required) == {p.name for p in tiny_mtl_checkpoint.iterdir()} - {
        "synthetic.json"}


def test_tokenizer_ids_fit_the_multilingual_text_vocabulary():
    vocab = build_mtl_tokenizer().get_vocab()
    assert max(vocab.values()) == TEXT_VOCAB_SIZE - 1 and len(vocab) == TEXT_VOCAB_SIZE
    assert vocab["[START]"] == 255 and vocab["[STOP]"] == 0 and vocab["[UNK]"] == UNK
    assert all(f"[{lang}]" in vocab for lang in SUPPORTED_LANGUAGES)


def test_supported_languages_are_upstreams():
    from chatterbox.mtl_tts import SUPPORTED_LANGUAGES as UPSTREAM

    assert set(SUPPORTED_LANGUAGES) == set(UPSTREAM)


def test_upstream_from_local_loads_the_tiny_checkpoint(monkeypatch, upstream_offline_hub, tiny_mtl_checkpoint):
    from chatterbox.mtl_tts import ChatterboxMultilingualTTS

    _tiny_upstream_constructors(monkeypatch)
    tts = ChatterboxMultilingualTTS.from_local(tiny_mtl_checkpoint, "cpu")
    assert tts.t3.hp.is_multilingual and tts.t3.text_emb.num_embeddings == TEXT_VOCAB_SIZE
    assert tts.conds is not None and tts.conds.t3.speaker_emb.shape == (1, 256)
    assert tts.tokenizer.cangjie_converter.word2cj  # the Cangjie file was read
    for language, text in SAMPLES.items():
        ids = tts.tokenizer.text_to_tokens(text, language_id=language)[0].tolist()
        assert UNK not in ids, (language, tts.tokenizer.decode(ids))
        assert ids[0] == tts.tokenizer.tokenizer.token_to_id(f"[{language}]")


def test_our_loader_tokenizes_like_upstream(monkeypatch, upstream_offline_hub, tiny_mtl_models,
                                            tiny_mtl_checkpoint: Path):
    from chatterbox.models.tokenizers import MTLTokenizer

    assert tiny_mtl_models.model == "multilingual" and tiny_mtl_models.t3.hp.is_multilingual
    upstream = MTLTokenizer(str(tiny_mtl_checkpoint / "grapheme_mtl_merged_expanded_v1.json"))
    for language, text in SAMPLES.items():
        ours = tiny_mtl_models.tokenizer.text_to_tokens(text, language_id=language)
        assert torch.equal(ours, upstream.text_to_tokens(text, language_id=language)), language
    chinese = tiny_mtl_models.tokenizer.text_to_tokens(SAMPLES["zh"], language_id="zh")[0].tolist()
    assert tiny_mtl_models.tokenizer.tokenizer.token_to_id("[cj_.]") in chinese  # encoded as Cangjie codes


def test_loader_names_a_missing_multilingual_file(tiny_mtl_checkpoint: Path, tmp_path: Path):
    target = tmp_path / "ckpt"
    target.mkdir()
    for name in LAYOUTS["multilingual"].required:
        if name != "Cangjie5_TC.json":
            (target / name).symlink_to(tiny_mtl_checkpoint / name)
    with pytest.raises(CheckpointError, match=r"Cangjie5_TC\.json"):
        load_models(str(target), model="multilingual")


def test_standard_weights_do_not_load_as_multilingual(tiny_mtl_checkpoint: Path, tmp_path: Path):
    target = tmp_path / "ckpt"
    shutil.copytree(tiny_mtl_checkpoint, target, ignore=shutil.ignore_patterns("s3gen.pt"))
    shutil.copy(target / "ve.pt", target / "s3gen.pt")
    with pytest.raises(CheckpointError, match=r"s3gen\.pt"):
        load_models(str(target), model="multilingual")


def test_unsupported_language_lists_the_supported_ones():
    assert check_language(" FR ") == "fr"
    with pytest.raises(EngineError, match="supported: ar, da") as info:
        check_language("xx")
    assert info.value.code == "unsupported_language"


def test_preparation_status_names_each_optional_step():
    status = preparation_status()
    assert set(status) == {"ja", "zh", "he", "ru"}
    for entry in status.values():
        assert entry["active"] == (entry["skipped_because"] is None)


@pytest.mark.slow
def test_full_multilingual_checkpoint_loads_with_chatterbox_itself(upstream_offline_hub, tmp_path: Path):
    from chatterbox.mtl_tts import ChatterboxMultilingualTTS

    from app.engine.chatterbox.arch import parameter_count
    from app.engine.chatterbox.mtl_checkpoint import make_multilingual_checkpoint

    make_multilingual_checkpoint(tmp_path / "full", size="full")
    tts = ChatterboxMultilingualTTS.from_local(tmp_path / "full", "cpu")
    assert 520e6 < parameter_count(tts.t3) < 545e6
    assert tts.conds is not None
