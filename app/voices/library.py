"""The voice library: uploaded reference recordings, their records, and cached engine conditionals.

Layout under `root` (every file is written to a temporary name and moved into place, so a crash never leaves
a half-written file under a real name):

    _records/<voice id>.json        one record per voice, shared by all engines
    _audio/<sha256>.wav             the cleaned reference (float32, 24 kHz), shared by all engines
    <engine_key>/<sha256>.cond      that engine's conditionals for the reference, written by its `save`

Conditionals are keyed by the SHA-256 of the cleaned audio, so uploading the same recording again (under any
name) reuses them, and a library opened by a different engine (another `engine_key`) recomputes its own
conditionals from the stored reference on first use. Engine keys cannot start with "_", so they never
collide with the shared folders.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from app.audio.encode import AudioDecodeError, decode_audio
from app.audio.resample import resample
from app.engine.types import SAMPLE_RATE
from app.errors import ClientError

log = logging.getLogger(__name__)

DEFAULT_VOICE_ID = "default"
VOICE_ID_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")  # fullmatch: no trailing newline
_ENGINE_KEY_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,127}")

MIN_SAMPLE_RATE = 8000  # below telephone bandwidth too little of the voice's timbre survives
# Less sound than this gives speaker encoders (and espeak's pitch estimate) too little to average over.
MIN_SECONDS = 1.0
# Only the first REFERENCE_SECONDS are used, so a much longer upload is most likely the wrong file; the cap
# also bounds the decoding work and memory one upload can cost.
MAX_UPLOAD_SECONDS = 60.0
REFERENCE_SECONDS = 10.0  # Chatterbox conditions on 10 s of reference audio
SILENCE_RMS = 10 ** (-50 / 20)  # frames quieter than -50 dBFS count as silence
TRIM_BELOW_PEAK_DB = 40.0  # ... and so do frames 40 dB below the loudest frame (room noise between words)
_TRIM_FRAME_SECONDS = 0.02


class VoiceError(ClientError):
    """A library failure a client can act on."""


@dataclass(frozen=True)
class VoiceRecord:
    id: str
    name: str  # the validated name the voice was created with; it is also its id
    hash: str  # SHA-256 of the cleaned reference audio; "" for the built-in voice
    duration: float  # seconds of reference audio kept
    created: float  # Unix time
    builtin: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_DEFAULT_RECORD = VoiceRecord(id=DEFAULT_VOICE_ID, name=DEFAULT_VOICE_ID, hash="", duration=0.0, created=0.0,
                              builtin=True)


def validate_voice_id(voice_id: str) -> str:
    if not isinstance(voice_id, str) or not VOICE_ID_PATTERN.fullmatch(voice_id):
        raise VoiceError("invalid_voice_name",
                         f"invalid voice name {str(voice_id)[:80]!r}: use 1-64 characters of a-z, 0-9, '_' and "
                         "'-', starting with a letter or digit", 400)
    return voice_id


class VoiceLibrary:
    def __init__(self, root: Path, engine_key: str, max_upload_bytes: int,
                 embed: Callable[[np.ndarray, int], Awaitable[Any]], save: Callable[[Any, str], None],
                 load: Callable[[str], Any], default_voice: Any, memory_cache_size: int = 32):
        if not _ENGINE_KEY_PATTERN.fullmatch(engine_key):
            raise ValueError(f"engine_key {engine_key!r} must match {_ENGINE_KEY_PATTERN.pattern}")
        self._records_dir = Path(root) / "_records"
        self._audio_dir = Path(root) / "_audio"
        self._conditionals_dir = Path(root) / engine_key
        for folder in (self._records_dir, self._audio_dir, self._conditionals_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self._root = Path(root)
        self._max_upload_bytes = max_upload_bytes
        self._embed = embed
        self._save = save
        self._load = load
        self._default_voice = default_voice
        self._memory: OrderedDict[str, Any] = OrderedDict()  # hash -> conditionals, least recently used first
        self._memory_cache_size = memory_cache_size
        self._records = self._read_records()
        self._create_lock = asyncio.Lock()
        self._load_lock = asyncio.Lock()

    # ---- queries ------------------------------------------------------------------------------------------

    def list(self) -> list[VoiceRecord]:
        return [_DEFAULT_RECORD, *sorted(self._records.values(), key=lambda record: record.id)]

    def get(self, voice_id: str) -> VoiceRecord:
        if voice_id == DEFAULT_VOICE_ID:
            return _DEFAULT_RECORD
        record = self._records.get(validate_voice_id(voice_id))
        if record is None:
            raise VoiceError("unknown_voice", f"no voice named {voice_id!r}", 404)
        return record

    async def conditionals(self, voice_id: str) -> Any:
        record = self.get(voice_id)
        if record.builtin:
            return self._default_voice
        cached = self._remember(record.hash)
        if cached is not None:
            return cached
        async with self._load_lock:  # one load or embed per miss, however many contexts ask at once
            cached = self._remember(record.hash)
            return cached if cached is not None else await self._load_or_embed(record.hash, None)

    # ---- changes ------------------------------------------------------------------------------------------

    async def create(self, name: str, data: bytes, filename: str | None = None) -> VoiceRecord:
        """Validate and clean an uploaded recording, compute (or reuse) its conditionals, store the voice.

        `filename` is only used in log lines: the format is recognised from the bytes."""
        voice_id = validate_voice_id(name)
        self._check_available(voice_id)
        if len(data) > self._max_upload_bytes:
            raise VoiceError("upload_too_large",
                             f"the upload is {len(data)} bytes; the limit is {self._max_upload_bytes}", 413)
        if not data:
            raise VoiceError("bad_audio", "the upload is empty", 400)
        async with self._create_lock:
            self._check_available(voice_id)
            reference = await asyncio.to_thread(clean_reference, data)
            digest = hashlib.sha256(reference.astype("<f4", copy=False).tobytes()).hexdigest()
            async with self._load_lock:
                if self._remember(digest) is None:
                    await self._load_or_embed(digest, reference)
            # No awaits from here on: a concurrent delete sees either no record or a complete voice.
            audio_path = self._audio_path(digest)
            if not audio_path.exists():
                _write_atomically(audio_path, lambda tmp: sf.write(tmp, reference, SAMPLE_RATE,
                                                                   format="WAV", subtype="FLOAT"))
            record = VoiceRecord(id=voice_id, name=voice_id, hash=digest,
                                 duration=round(reference.size / SAMPLE_RATE, 3), created=time.time())
            _write_atomically(self._record_path(voice_id),
                              lambda tmp: Path(tmp).write_text(json.dumps(record.as_dict()), encoding="utf-8"))
            self._records[voice_id] = record
        log.info("voice %s created from %s (%.1f s, %s)", voice_id, filename or "upload", record.duration,
                 digest[:12])
        return record

    def delete(self, voice_id: str) -> None:
        """Remove a voice; its reference and cached conditionals go too unless another voice shares them."""
        if voice_id == DEFAULT_VOICE_ID:
            raise VoiceError("invalid_voice_name", "the default voice is built in and cannot be deleted", 400)
        record = self.get(voice_id)
        self._record_path(voice_id).unlink(missing_ok=True)
        del self._records[voice_id]
        if any(other.hash == record.hash for other in self._records.values()):
            return
        self._memory.pop(record.hash, None)
        self._audio_path(record.hash).unlink(missing_ok=True)
        for conditionals in self._root.glob(f"*/{record.hash}.cond"):  # every engine's copy
            conditionals.unlink(missing_ok=True)

    # ---- internals ----------------------------------------------------------------------------------------

    def _check_available(self, voice_id: str) -> None:
        if voice_id == DEFAULT_VOICE_ID or voice_id in self._records:
            raise VoiceError("voice_exists", f"a voice named {voice_id!r} already exists", 409)

    def _remember(self, digest: str) -> Any:
        """The cached conditionals for `digest` (marking them recently used), or None."""
        if digest in self._memory:
            self._memory.move_to_end(digest)
            return self._memory[digest]
        return None

    def _cache(self, digest: str, conditionals: Any) -> Any:
        self._memory[digest] = conditionals
        while len(self._memory) > self._memory_cache_size:
            self._memory.popitem(last=False)
        return conditionals

    async def _load_or_embed(self, digest: str, reference: np.ndarray | None) -> Any:
        """Conditionals from this engine's file, else embedded from `reference` (or the stored audio)."""
        path = self._conditionals_path(digest)
        if path.exists():
            try:
                return self._cache(digest, await asyncio.to_thread(self._load, str(path)))
            except Exception:  # e.g. written by an older engine version: recompute from the reference
                log.warning("cached conditionals %s unreadable; recomputing", path, exc_info=True)
        if reference is None:
            reference = await asyncio.to_thread(_read_reference, self._audio_path(digest))
        try:
            conditionals = await self._embed(reference, SAMPLE_RATE)
        except ValueError as exc:  # the engine found nothing usable in the recording
            raise VoiceError("bad_audio", f"cannot build a voice from this recording: {exc}", 422) from exc
        await asyncio.to_thread(_write_atomically, path, lambda tmp: self._save(conditionals, tmp))
        return self._cache(digest, conditionals)

    def _read_records(self) -> dict[str, VoiceRecord]:
        records = {}
        for path in sorted(self._records_dir.glob("*.json")):
            try:
                record = VoiceRecord(**json.loads(path.read_text(encoding="utf-8")))
                if record.id != path.stem or record.builtin:
                    raise ValueError("record does not match its file name")
                records[validate_voice_id(record.id)] = record
            except (ValueError, TypeError, VoiceError) as exc:
                log.warning("skipping unreadable voice record %s: %s", path, exc)
        return records

    def _record_path(self, voice_id: str) -> Path:
        return self._records_dir / f"{voice_id}.json"

    def _audio_path(self, digest: str) -> Path:
        return self._audio_dir / f"{digest}.wav"

    def _conditionals_path(self, digest: str) -> Path:
        return self._conditionals_dir / f"{digest}.cond"


def clean_reference(data: bytes) -> np.ndarray:
    """An upload as the reference engines embed: decoded, checked, trimmed of silence, 24 kHz, ≤ 10 s."""
    try:
        pcm, rate = decode_audio(data, max_seconds=MAX_UPLOAD_SECONDS)
    except AudioDecodeError as exc:
        raise VoiceError("bad_audio", str(exc), 415) from exc
    if rate < MIN_SAMPLE_RATE:
        raise VoiceError("bad_audio", f"the sample rate is {rate} Hz; at least {MIN_SAMPLE_RATE} Hz is needed", 422)
    sound = trim_silence(pcm, rate)
    if sound.size == 0:
        raise VoiceError("bad_audio", "the recording is silent", 422)
    if sound.size < MIN_SECONDS * rate:
        raise VoiceError("bad_audio", f"the recording has {sound.size / rate:.2f} s of sound; at least "
                                      f"{MIN_SECONDS:g} s is needed", 422)
    return resample(sound, rate, SAMPLE_RATE)[: int(REFERENCE_SECONDS * SAMPLE_RATE)]


def trim_silence(pcm: np.ndarray, rate: int) -> np.ndarray:
    """`pcm` from its first to its last non-silent 20 ms frame; empty when every frame is silent."""
    frame = max(1, int(rate * _TRIM_FRAME_SECONDS))
    count = pcm.size // frame
    if count == 0:
        return pcm[:0]
    frame_rms = np.sqrt(np.mean(np.square(pcm[: count * frame].reshape(count, frame), dtype=np.float64), axis=1))
    threshold = max(float(frame_rms.max()) * 10 ** (-TRIM_BELOW_PEAK_DB / 20), SILENCE_RMS)
    loud = np.flatnonzero(frame_rms >= threshold)
    if loud.size == 0:
        return pcm[:0]
    return pcm[loud[0] * frame: (loud[-1] + 1) * frame]


def _read_reference(path: Path) -> np.ndarray:
    pcm, _ = sf.read(path, dtype="float32")
    return pcm


def _write_atomically(path: Path, write: Callable[[str], object]) -> None:
    """Have `write` fill a temporary file beside `path`, then move it into place in one step."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        write(str(temporary))
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
