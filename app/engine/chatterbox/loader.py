"""Load Chatterbox from the model hub or a local directory in the official layout, through one code path.

`source` is `hub` (ResembleAI/chatterbox, downloaded once into the hub cache) or a directory in the official
layout of the model kind (`LAYOUTS`): for the standard model ve.safetensors, t3_cfg.safetensors,
s3gen.safetensors, tokenizer.json and conds.pt; for the multilingual one ve.pt, t3_mtl23ls_v2.safetensors,
s3gen.pt, grapheme_mtl_merged_expanded_v1.json, Cangjie5_TC.json and conds.pt. Synthetic checkpoints (see
checkpoint.py) use the same layouts plus `synthetic.json`, which names their size. Unlike upstream
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

from app.engine.chatterbox.arch import SIZES, Size, build_s3gen, build_t3, build_voice_encoder

REPO_ID = "ResembleAI/chatterbox"
WEIGHT_FILES = ("ve.safetensors", "t3_cfg.safetensors", "s3gen.safetensors")  # the standard model's


@dataclass(frozen=True)
class Layout:
    """One model kind's official files: weights in (ve, t3, s3gen) order, then the text files it reads."""
    weights: tuple[str, str, str]
    text_files: tuple[str, ...]
    repo_id: str = REPO_ID

    @property
    def required(self) -> tuple[str, ...]:
        return (*self.weights, *self.text_files, "conds.pt")


LAYOUTS = {
    "standard": Layout(WEIGHT_FILES, ("tokenizer.json",)),
    "multilingual": Layout(("ve.pt", "t3_mtl23ls_v2.safetensors", "s3gen.pt"),
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
    model: str = "standard"


def resolve_checkpoint(source: str, layout: Layout = LAYOUTS["standard"]) -> Path:
    """Directory holding the checkpoint files; `hub` downloads them first."""
    if source == "hub":
        from huggingface_hub import hf_hub_download

        paths = [Path(hf_hub_download(repo_id=layout.repo_id, filename=name)) for name in layout.required]
        return paths[0].parent
    directory = Path(source).expanduser()
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint directory {directory} does not exist")
    return directory


def check_layout(directory: Path, layout: Layout = LAYOUTS["standard"]) -> None:
    missing = [name for name in layout.required if not (directory / name).is_file()]
    if missing:
        raise CheckpointError(f"checkpoint {directory} is missing {', '.join(missing)} "
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
        state = state["model"][0]
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise CheckpointError(f"{path}: does not fit the model ({str(exc).splitlines()[0]} ...)") from None
    missing = [key for key in result.missing_keys if key not in optional]
    if missing or result.unexpected_keys:
        raise CheckpointError(f"{path}: {len(missing)} missing tensors ({', '.join(missing[:3])}...) and "
                              f"{len(result.unexpected_keys)} unexpected ({', '.join(result.unexpected_keys[:3])})")


def _load_tokenizer(directory: Path, model: str) -> Any:
    path = directory / LAYOUTS[model].text_files[0]
    try:
        if model == "multilingual":
            from app.engine.chatterbox.languages import load_mtl_tokenizer

            return load_mtl_tokenizer(path, directory / LAYOUTS[model].text_files[1])
        from chatterbox.models.tokenizers import EnTokenizer

        return EnTokenizer(str(path))
    except Exception as exc:  # tokenizers raises its own exception types; all mean "unusable file"
        raise CheckpointError(f"{path}: not a usable tokenizer ({exc})") from None


def _load_conds(path: Path, device: str) -> Any:
    from chatterbox.tts import Conditionals

    try:
        return Conditionals.load(path, map_location="cpu").to(device)
    except Exception as exc:  # torch.load raises many types for corrupt pickles
        raise CheckpointError(f"{path}: not a readable conditionals file ({exc})") from None


def _digest(directory: Path, layout: Layout) -> str:
    h = hashlib.sha256()
    for name in (*layout.weights, *layout.text_files):
        stat = (directory / name).stat()
        h.update(f"{name}:{stat.st_size}:{int(stat.st_mtime)}".encode())
    return h.hexdigest()[:16]


def load_models(source: str, device: str = "cpu", model: str = "standard") -> ChatterboxModels:
    """Build the modules of `model` (a key of LAYOUTS) for the checkpoint's size and load every file into
    them, in float32 on `device` (the engine casts what it runs in reduced precision)."""
    layout = LAYOUTS[model]
    directory = resolve_checkpoint(source, layout)
    check_layout(directory, layout)
    size = checkpoint_size(directory)
    ve, t3, s3gen = build_voice_encoder(size), build_t3(size, model), build_s3gen(size)
    ve_file, t3_file, s3gen_file = layout.weights
    _load_into(ve, directory / ve_file)
    _load_into(t3, directory / t3_file)
    _load_into(s3gen, directory / s3gen_file, optional=_S3GEN_OPTIONAL)
    tokenizer = _load_tokenizer(directory, model)
    conds = _load_conds(directory / "conds.pt", device)
    for module in (ve, t3, s3gen):
        module.to(device).eval()
    return ChatterboxModels(t3, s3gen, ve, tokenizer, conds, size, directory, _digest(directory, layout), model)
