"""Load Chatterbox from the model hub or a local directory in the official layout, through one code path.

Three models, each with its official layout (`LAYOUTS`): `standard` (ResembleAI/chatterbox: ve.safetensors,
t3_cfg.safetensors, s3gen.safetensors, tokenizer.json, conds.pt), `turbo` (ResembleAI/chatterbox-turbo:
ve.safetensors, t3_turbo_v1.safetensors, s3gen_meanflow.safetensors, GPT-2 tokenizer files, conds.pt) and
`multilingual` (ResembleAI/chatterbox: ve.pt, t3_mtl23ls_v2.safetensors, s3gen.pt,
grapheme_mtl_merged_expanded_v1.json, Cangjie5_TC.json, conds.pt). `source` is `hub` (the model's repo,
downloaded once into the hub cache) or a directory; a directory's model is read from its files. Synthetic
checkpoints (see checkpoint.py) use the same layouts plus `synthetic.json`, which names their size. Unlike upstream
(`strict=False` for S3Gen), every tensor must match: a checkpoint that silently leaves random weights behind
is a bug we want to hear about, with the file named.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from app.engine.chatterbox.arch import build_s3gen, build_t3, build_voice_encoder
from app.engine.chatterbox.model_names import SIZES, ModelKind, Size
from app.engine.chatterbox.turbo_tokenizer import FILES as TURBO_TOKENIZER_FILES

WEIGHT_FILES = ("ve.safetensors", "t3_cfg.safetensors", "s3gen.safetensors")  # the standard model's


@dataclass(frozen=True)
class Layout:
    """Where a model's files live: its hub repo and the file names of its official layout."""

    model: ModelKind
    repo_id: str
    weights: tuple[str, str, str]  # voice encoder, T3, S3Gen
    tokenizer: tuple[str, ...]  # the text files it reads; the first is the tokenizer itself

    @property
    def required(self) -> tuple[str, ...]:
        return (*self.weights, *self.tokenizer, "conds.pt")


LAYOUTS: dict[ModelKind, Layout] = {
    "standard": Layout("standard", "ResembleAI/chatterbox", WEIGHT_FILES, ("tokenizer.json",)),
    "turbo": Layout("turbo", "ResembleAI/chatterbox-turbo",
                    ("ve.safetensors", "t3_turbo_v1.safetensors", "s3gen_meanflow.safetensors"),
                    TURBO_TOKENIZER_FILES),
    "multilingual": Layout("multilingual", "ResembleAI/chatterbox",
                           ("ve.pt", "t3_mtl23ls_v2.safetensors", "s3gen.pt"),
                           ("grapheme_mtl_merged_expanded_v1.json", "Cangjie5_TC.json")),
}
REQUIRED_FILES = LAYOUTS["standard"].required
# Buffers S3Gen computes itself; the released s3gen.safetensors does not carry them.
_S3GEN_OPTIONAL = ("tokenizer._mel_filters", "tokenizer.window")


class CheckpointError(Exception):
    """A missing or malformed checkpoint; the message names the file."""


@dataclass
class ChatterboxModels:
    t3: Any
    s3gen: Any
    ve: Any
    tokenizer: Any
    conds: Any  # chatterbox.tts.Conditionals of the built-in voice
    size: Size
    directory: Path
    digest: str  # identifies the weights, so cached voice conditionings never cross checkpoints
    model: ModelKind = "standard"


def resolve_checkpoint(source: str, model: ModelKind = "standard") -> Path:
    """Directory holding the checkpoint files; `hub` downloads `model`'s files first."""
    if source == "hub":
        from huggingface_hub import snapshot_download

        layout = LAYOUTS[model]
        return Path(snapshot_download(repo_id=layout.repo_id, allow_patterns=list(layout.required)))
    directory = Path(source).expanduser()
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint directory {directory} does not exist")
    return directory


def detect_model(directory: Path) -> ModelKind:
    """The model whose T3 weights file the directory holds (standard when none is there, so the missing-file
    error names the standard layout)."""
    for model in ("turbo", "multilingual"):
        if (directory / LAYOUTS[model].weights[1]).is_file():
            return model
    return "standard"


def check_layout(directory: Path, layout: Layout) -> None:
    missing = [name for name in layout.required if not (directory / name).is_file()]
    if missing:
        raise CheckpointError(f"{layout.model} checkpoint {directory} is missing {', '.join(missing)} "
                              f"(expected {', '.join(layout.required)})")


def checkpoint_size(directory: Path) -> Size:
    marker = directory / "synthetic.json"
    if not marker.exists():
        return "full"
    try:
        size = json.loads(marker.read_text())["size"]
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{marker}: malformed ({exc})") from None
    if size not in SIZES:
        raise CheckpointError(f"{marker}: unknown size {size!r}")
    return size


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file, or (`.pt`, the multilingual release) a torch-saved state dict read without pickled
    code."""
    if path.suffix == ".pt":
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch.load raises many types for corrupt files
            raise CheckpointError(f"{path}: not a readable torch state dict ({exc})") from None
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None


def _load_into(module: torch.nn.Module, path: Path, optional: tuple[str, ...] = ()) -> None:
    state = _read_weights(path)
    if "model" in state and len(state) == 1:  # an upstream packaging variant
        state = state["model"][0]  # type: ignore[assignment]  # a state dict inside a list, as upstream saves it
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise CheckpointError(f"{path}: does not fit the model ({str(exc).splitlines()[0]} ...)") from None
    missing = [key for key in result.missing_keys if key not in optional]
    if missing or result.unexpected_keys:
        raise CheckpointError(f"{path}: {len(missing)} missing tensors ({', '.join(missing[:3])}...) and "
                              f"{len(result.unexpected_keys)} unexpected ({', '.join(result.unexpected_keys[:3])})")


def _load_tokenizer(directory: Path, layout: Layout) -> Any:
    """An object with `text_to_tokens(text) -> (1, n) LongTensor`, as chatterbox's EnTokenizer has."""
    path = directory / layout.tokenizer[0]
    try:
        if layout.model == "turbo":
            from app.engine.chatterbox.turbo_tokenizer import TurboTextTokenizer

            return TurboTextTokenizer.from_directory(directory)
        if layout.model == "multilingual":
            from app.engine.chatterbox.languages import load_mtl_tokenizer

            return load_mtl_tokenizer(path, directory / layout.tokenizer[1])
        from chatterbox.models.tokenizers import EnTokenizer

        return EnTokenizer(str(path))
    except Exception as exc:  # tokenizers/transformers raise their own types; all mean "unusable files"
        raise CheckpointError(f"{path}: not a usable tokenizer ({exc})") from None


def _load_conds(path: Path, device: str) -> Any:
    from chatterbox.tts import Conditionals  # tts_turbo's Conditionals is the same structure and file format

    try:
        return Conditionals.load(path, map_location="cpu").to(device)
    except Exception as exc:  # torch.load raises many types for corrupt pickles
        raise CheckpointError(f"{path}: not a readable conditionals file ({exc})") from None


def _digest(directory: Path, layout: Layout) -> str:
    h = hashlib.sha256(layout.model.encode())
    for name in (*layout.weights, *layout.tokenizer):
        stat = (directory / name).stat()
        h.update(f"{name}:{stat.st_size}:{int(stat.st_mtime)}".encode())
    return h.hexdigest()[:16]


def load_models(source: str, device: str = "cpu", model: ModelKind | None = None) -> ChatterboxModels:
    """Build the modules for the checkpoint's model and size and load every file into them, in float32 on
    `device` (the engine casts what it runs in reduced precision). `model` is required for `hub` (default
    standard); for a directory it is read from the files, and a given `model` must match them."""
    directory = resolve_checkpoint(source, model or "standard")
    layout = LAYOUTS[model or detect_model(directory)]
    check_layout(directory, layout)
    size = checkpoint_size(directory)
    ve, t3, s3gen = build_voice_encoder(size), build_t3(size, layout.model), build_s3gen(size, layout.model)
    ve_file, t3_file, s3gen_file = layout.weights
    _load_into(ve, directory / ve_file)
    _load_into(t3, directory / t3_file)
    _load_into(s3gen, directory / s3gen_file, optional=_S3GEN_OPTIONAL)
    tokenizer = _load_tokenizer(directory, layout)
    conds = _load_conds(directory / "conds.pt", device)
    for module in (ve, t3, s3gen):
        module.to(device).eval()
    return ChatterboxModels(t3, s3gen, ve, tokenizer, conds, size, directory, _digest(directory, layout),
                            layout.model)
