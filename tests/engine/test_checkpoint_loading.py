"""Loading through the official layout, and clear errors for broken checkpoints."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from app.engine.chatterbox.checkpoint import build_tokenizer
from app.engine.chatterbox.loader import REQUIRED_FILES, CheckpointError, load_models


def test_tiny_checkpoint_has_the_official_layout(tiny_checkpoint: Path):
    for name in REQUIRED_FILES:
        assert (tiny_checkpoint / name).is_file(), name


def test_loads_real_module_classes_with_the_written_weights(tiny_models, tiny_checkpoint: Path):
    from chatterbox.models.s3gen import S3Gen
    from chatterbox.models.t3 import T3
    from safetensors.torch import load_file

    assert isinstance(tiny_models.t3, T3) and isinstance(tiny_models.s3gen, S3Gen)
    written = load_file(str(tiny_checkpoint / "t3_cfg.safetensors"))
    loaded = tiny_models.t3.state_dict()
    assert torch.equal(written["speech_head.weight"], loaded["speech_head.weight"])
    assert tiny_models.conds is not None and tiny_models.conds.t3.speaker_emb.shape == (1, 256)
    assert tiny_models.conds.gen["prompt_feat"].shape[-1] == 80


@pytest.fixture()
def broken_copy(tiny_checkpoint: Path, tmp_path: Path):
    def copy() -> Path:
        target = tmp_path / "ckpt"
        shutil.copytree(tiny_checkpoint, target)
        return target
    return copy


@pytest.mark.parametrize("missing", REQUIRED_FILES)
def test_missing_file_is_named(broken_copy, missing: str):
    directory = broken_copy()
    (directory / missing).unlink()
    with pytest.raises(CheckpointError, match=missing.replace(".", r"\.")):
        load_models(str(directory))


def test_corrupt_weights_name_the_file(broken_copy):
    directory = broken_copy()
    (directory / "s3gen.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match=r"s3gen\.safetensors"):
        load_models(str(directory))


def test_weights_of_the_wrong_model_name_the_file(broken_copy):
    directory = broken_copy()
    shutil.copy(directory / "ve.safetensors", directory / "t3_cfg.safetensors")
    with pytest.raises(CheckpointError, match=r"t3_cfg\.safetensors"):
        load_models(str(directory))


def test_missing_directory_is_named(tmp_path: Path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_models(str(tmp_path / "nope"))


def test_synthetic_tokenizer_encodes_like_chatterbox(tmp_path: Path):
    from chatterbox.models.tokenizers import EnTokenizer

    path = tmp_path / "tokenizer.json"
    build_tokenizer().save(str(path))
    tokenizer = EnTokenizer(str(path))
    ids = tokenizer.encode("Hi there, $29.99!")
    assert 0 not in ids and 255 not in ids  # [STOP]/[START] are added by the model, not by encoding
    assert tokenizer.decode(ids) == "Hi there, $29.99!"
    assert tokenizer.tokenizer.token_to_id("[START]") == 255 and tokenizer.tokenizer.token_to_id("[STOP]") == 0


@pytest.mark.slow
def test_full_checkpoint_loads_with_chatterbox_itself(tmp_path: Path):
    """`make-checkpoint --size full` is loadable by upstream's own ChatterboxTTS.from_local."""
    from chatterbox.tts import ChatterboxTTS

    from app.engine.chatterbox.arch import parameter_count
    from app.engine.chatterbox.checkpoint import make_checkpoint

    make_checkpoint(tmp_path / "full", size="full")
    tts = ChatterboxTTS.from_local(tmp_path / "full", "cpu")
    assert 520e6 < parameter_count(tts.t3) < 540e6
    assert 255e6 < parameter_count(tts.s3gen) < 270e6
    assert tts.conds is not None


def test_every_model_has_one_entry_in_each_registry():
    from app.engine.chatterbox.arch import T3_CONFIGS
    from app.engine.chatterbox.checkpoint import CHECKPOINT_WRITERS
    from app.engine.chatterbox.loader import LAYOUTS
    from app.engine.chatterbox.model_names import MODEL_KINDS

    assert set(T3_CONFIGS) == set(LAYOUTS) == set(CHECKPOINT_WRITERS) == set(MODEL_KINDS)
    assert all(LAYOUTS[model].model == model for model in MODEL_KINDS)
