"""Tiny synthetic checkpoints (standard and turbo), built once and reused across runs (var/ is git-ignored)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


# What each kind's checkpoint is built from: a change to any of these files builds a fresh one.
_BUILDER_SOURCES = {"standard": ("arch.py", "checkpoint.py"),
                    "turbo": ("arch.py", "checkpoint.py", "turbo_tokenizer.py")}


def _builder_fingerprint(model: str) -> str:
    digest = hashlib.sha256()
    for name in _BUILDER_SOURCES[model]:
        digest.update((ROOT / "app/engine/chatterbox" / name).read_bytes())
    return digest.hexdigest()[:12]


def tiny_checkpoint_path(model: str = "standard") -> Path:
    from app.engine.chatterbox.checkpoint import make_checkpoint

    prefix = "tiny" if model == "standard" else f"tiny-{model}"
    directory = ROOT / "var" / "test-checkpoints" / f"{prefix}-{_builder_fingerprint(model)}"
    if not (directory / "conds.pt").exists():
        make_checkpoint(directory, size="tiny", seed=0, model=model)
    return directory


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
