"""The Chatterbox models and sizes this project builds, by name only: the CLI lists them without loading torch.

Every per-model table (`arch.T3_CONFIGS`, `loader.LAYOUTS`, `checkpoint.CHECKPOINT_WRITERS`) is keyed by these names.
"""

from __future__ import annotations

from typing import Literal

Size = Literal["tiny", "full"]
SIZES: tuple[Size, ...] = ("tiny", "full")
ModelKind = Literal["standard", "turbo", "multilingual"]
MODEL_KINDS: tuple[ModelKind, ...] = ("standard", "turbo", "multilingual")
