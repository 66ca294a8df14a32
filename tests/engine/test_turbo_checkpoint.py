"""Synthetic Chatterbox-Turbo checkpoints: the hub layout, a GPT-2 byte-level BPE tokenizer with the tags as
added tokens, loadable by upstream's own `ChatterboxTurboTTS.from_local` and by our loader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from app.engine.chatterbox.loader import LAYOUTS, CheckpointError, load_models
from app.engine.chatterbox.turbo_tokenizer import END_OF_TEXT_ID, PARALINGUISTIC_TAGS, VOCAB_SIZE


def test_tiny_turbo_checkpoint_has_the_hub_layout(tiny_turbo_checkpoint: Path):
    for name in LAYOUTS["turbo"].required:
        assert (tiny_turbo_checkpoint / name).is_file(), name
    assert not (tiny_turbo_checkpoint / "t3_cfg.safetensors").exists()
    assert json.loads((tiny_turbo_checkpoint / "synthetic.json").read_text())["model"] == "turbo"


def test_tokenizer_is_gpt2_byte_level_bpe_with_the_tags_as_added_tokens(tiny_turbo_checkpoint: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_turbo_checkpoint)
    assert len(tokenizer) == VOCAB_SIZE == 50276
    assert tokenizer.eos_token == "<|endoftext|>" and tokenizer.eos_token_id == END_OF_TEXT_ID
    for tag in PARALINGUISTIC_TAGS:
        ids = tokenizer(f"Well {tag} okay").input_ids
        assert sum(i > END_OF_TEXT_ID for i in ids) == 1, tag  # the tag is one token, never split
    text = "Hi there, $29.99! Ünïcode ✓ [laugh] and [not a tag]"
    ids = tokenizer(text).input_ids
    assert tokenizer.decode(ids) == text  # byte-level: any text round-trips
    assert max(ids) < VOCAB_SIZE
    assert len(ids) < len(text.encode())  # merges were learned: common words are fewer tokens than bytes


def test_our_loader_detects_and_loads_turbo(tiny_turbo_models, tiny_turbo_checkpoint: Path):
    from chatterbox.models.s3gen import S3Gen
    from chatterbox.models.t3 import T3
    from safetensors.torch import load_file

    models = tiny_turbo_models
    assert models.model == "turbo"
    assert isinstance(models.t3, T3) and models.t3.is_gpt and models.t3.hp.speech_cond_prompt_len == 375
    assert isinstance(models.s3gen, S3Gen) and models.s3gen.meanflow
    written = load_file(str(tiny_turbo_checkpoint / "t3_turbo_v1.safetensors"))
    assert torch.equal(written["speech_head.bias"], models.t3.state_dict()["speech_head.bias"])
    assert models.conds.t3.speaker_emb.shape == (1, 256)
    assert 0 < models.conds.t3.cond_prompt_speech_tokens.shape[1] <= 375
    assert models.tokenizer.tags == sorted(PARALINGUISTIC_TAGS)
    tokens = models.tokenizer.text_to_tokens("hello [sigh] there")
    assert tokens.shape[0] == 1 and (tokens == 50256 + 1 + PARALINGUISTIC_TAGS.index("[sigh]")).sum() == 1


def test_digests_differ_between_model_kinds(tiny_turbo_models, tiny_models):
    assert tiny_turbo_models.digest != tiny_models.digest


def test_asking_for_the_wrong_kind_names_the_missing_files(tiny_turbo_checkpoint: Path):
    with pytest.raises(CheckpointError, match=r"standard checkpoint .* missing t3_cfg.safetensors, "
                                              r"s3gen.safetensors, tokenizer.json"):
        load_models(str(tiny_turbo_checkpoint), model="standard")


def test_upstream_from_local_loads_the_tiny_checkpoint_and_generates(tiny_turbo_checkpoint: Path, monkeypatch):
    """Upstream's loader and its Turbo T3 inference, with its two hard-coded architecture choices (the GPT-2
    medium config name, `S3Gen(meanflow=True)`) pointed at the tiny builders: everything else is upstream's."""
    import chatterbox.tts_turbo as tts_turbo
    from chatterbox.models.t3.llama_configs import LLAMA_CONFIGS

    from app.engine.chatterbox.arch import TINY_GPT2, build_s3gen

    monkeypatch.setitem(LLAMA_CONFIGS, "GPT2_medium", LLAMA_CONFIGS[TINY_GPT2])
    monkeypatch.setattr(tts_turbo, "S3Gen", lambda meanflow: build_s3gen("tiny", "turbo" if meanflow else "standard"))
    tts = tts_turbo.ChatterboxTurboTTS.from_local(tiny_turbo_checkpoint, "cpu")
    assert len(tts.tokenizer) == 50276 and tts.conds is not None
    text_tokens = tts.tokenizer(tts_turbo.punc_norm("Hello [laugh] there"), return_tensors="pt").input_ids
    torch.manual_seed(0)
    speech = tts.t3.inference_turbo(tts.conds.t3, text_tokens, max_gen_len=4)
    # the token sampled from the prefill, then up to max_gen_len steps
    assert speech.shape[0] == 1 and 1 <= speech.shape[1] <= 5 and int(speech.max()) < 6563


@pytest.mark.slow
def test_full_turbo_checkpoint_loads_with_chatterbox_itself(tmp_path: Path):
    """`make-checkpoint --model turbo --size full` is loadable by upstream's own ChatterboxTurboTTS.from_local."""
    from chatterbox.tts_turbo import ChatterboxTurboTTS

    from app.engine.chatterbox.arch import parameter_count
    from app.engine.chatterbox.checkpoint import make_checkpoint

    make_checkpoint(tmp_path / "full", size="full", model="turbo")
    tts = ChatterboxTurboTTS.from_local(tmp_path / "full", "cpu")
    assert tts.t3.cfg.n_layer == 24 and tts.t3.cfg.n_embd == 1024 and tts.s3gen.meanflow
    assert 350e6 < parameter_count(tts.t3) < 480e6
    assert tts.conds is not None and len(tts.tokenizer) == 50276
