"""Tiny synthetic checkpoints (standard and turbo), built once and reused across runs (var/ is git-ignored)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


# What each kind's checkpoint is built from: a change to any of these files builds a fresh one.
_BUILDER_SOURCES = {"standard": ("arch.py", "checkpoint.py"),
                    "turbo": ("arch.py", "checkpoint.py", "turbo_tokenizer.py"),
                    "multilingual": ("arch.py", "checkpoint.py", "mtl_checkpoint.py")}


def _builder_fingerprint(model: str) -> str:
    digest = hashlib.sha256()
    for name in _BUILDER_SOURCES[model]:
        digest.update((ROOT / "app/engine/chatterbox" / name).read_bytes())
    return digest.hexdigest()[:12]


def tiny_checkpoint_path(model: str = "standard") -> Path:
    from app.engine.chatterbox.checkpoint import CHECKPOINT_WRITERS

    prefix = "tiny" if model == "standard" else f"tiny-{model}"
    directory = ROOT / "var" / "test-checkpoints" / f"{prefix}-{_builder_fingerprint(model)}"
    if not (directory / "conds.pt").exists():
        CHECKPOINT_WRITERS[model](directory, size="tiny", seed=0)
    return directory


@pytest.fixture(scope="session")
def tiny_mtl_checkpoint() -> Path:
    return tiny_checkpoint_path("multilingual")


@pytest.fixture(scope="session")
def tiny_mtl_models(tiny_mtl_checkpoint):
    from app.engine.chatterbox.loader import load_models

    return load_models(str(tiny_mtl_checkpoint), model="multilingual")


@pytest.fixture(scope="session")
def tiny_turbo_checkpoint() -> Path:
    return tiny_checkpoint_path("turbo")


@pytest.fixture(scope="session")
def tiny_turbo_models(tiny_turbo_checkpoint):
    from app.engine.chatterbox.loader import load_models

    return load_models(str(tiny_turbo_checkpoint))


@pytest.fixture(scope="session")
def tiny_checkpoint() -> Path:
    return tiny_checkpoint_path()


@pytest.fixture(scope="session")
def tiny_models(tiny_checkpoint):
    from app.engine.chatterbox.loader import load_models

    return load_models(str(tiny_checkpoint))


@pytest.fixture(scope="module")
def mtl_t3():
    """A tiny multilingual T3 with random weights (2454 text tokens)."""
    import torch

    from app.engine.chatterbox.arch import build_t3

    torch.manual_seed(5)
    return build_t3("tiny", "multilingual").eval()


@pytest.fixture(scope="module")
def mtl_cond():
    """A random speaker conditioning for T3 decoding tests."""
    import torch
    from chatterbox.models.t3.modules.cond_enc import T3Cond

    generator = torch.Generator().manual_seed(1)
    return T3Cond(speaker_emb=torch.randn(1, 256, generator=generator),
                  cond_prompt_speech_tokens=torch.randint(0, 6561, (1, 150), generator=generator),
                  emotion_adv=0.5 * torch.ones(1, 1, 1))
