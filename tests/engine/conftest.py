"""Tiny synthetic checkpoints (standard and turbo), built once and reused across runs (var/ is git-ignored)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _builder_fingerprint(sources: tuple[str, ...] = ("arch.py", "checkpoint.py")) -> str:
    digest = hashlib.sha256()
    for name in sources:
        digest.update((ROOT / "app/engine/chatterbox" / name).read_bytes())
    return digest.hexdigest()[:12]


def tiny_checkpoint_path() -> Path:
    from app.engine.chatterbox.checkpoint import make_checkpoint

    directory = ROOT / "var" / "test-checkpoints" / f"tiny-{_builder_fingerprint()}"
    if not (directory / "conds.pt").exists():
        make_checkpoint(directory, size="tiny", seed=0)
    return directory


def tiny_turbo_checkpoint_path() -> Path:
    from app.engine.chatterbox.checkpoint import make_checkpoint

    fingerprint = _builder_fingerprint(("arch.py", "checkpoint.py", "turbo_tokenizer.py"))
    directory = ROOT / "var" / "test-checkpoints" / f"tiny-turbo-{fingerprint}"
    if not (directory / "conds.pt").exists():
        make_checkpoint(directory, size="tiny", seed=0, model="turbo")
    return directory


@pytest.fixture(scope="session")
def tiny_turbo_checkpoint() -> Path:
    return tiny_turbo_checkpoint_path()


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
