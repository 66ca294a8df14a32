"""A tiny synthetic checkpoint, built once and reused across runs (var/ is git-ignored)."""

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


def tiny_mtl_checkpoint_path() -> Path:
    from app.engine.chatterbox.mtl_checkpoint import make_multilingual_checkpoint

    fingerprint = _builder_fingerprint(("arch.py", "checkpoint.py", "mtl_checkpoint.py"))
    directory = ROOT / "var" / "test-checkpoints" / f"tiny-mtl-{fingerprint}"
    if not (directory / "conds.pt").exists():
        make_multilingual_checkpoint(directory, size="tiny", seed=0)
    return directory


@pytest.fixture(scope="session")
def tiny_mtl_checkpoint() -> Path:
    return tiny_mtl_checkpoint_path()


@pytest.fixture(scope="session")
def tiny_mtl_models(tiny_mtl_checkpoint):
    from app.engine.chatterbox.loader import load_models

    return load_models(str(tiny_mtl_checkpoint), model="multilingual")


@pytest.fixture(scope="session")
def tiny_checkpoint() -> Path:
    return tiny_checkpoint_path()


@pytest.fixture(scope="session")
def tiny_models(tiny_checkpoint):
    from app.engine.chatterbox.loader import load_models

    return load_models(str(tiny_checkpoint))
