"""A light CPU engine that speaks through espeak-ng, behind the same `Engine` contract as Chatterbox.

It lets a machine without a GPU or model weights run the whole streaming pipeline with intelligible speech.
A request is synthesized in one `espeak-ng` call on its first step; its audio is then handed out one
`SLICE_SECONDS` slice per step, so streaming, cancellation and batching behave as with the model.

Mapping of Chatterbox concepts:
- voice: an `EspeakVoice` (language voice, male/female variant, pitch, speed). `embed_voice` estimates the
  reference speaker's median F0 and picks the variant and pitch whose measured F0 is closest.
- `exaggeration` (0-2, neutral 0.5) scales the intonation's pitch range (SSML prosody range 0%-400%,
  100% at 0.5), the closest thing espeak has to expressiveness.
- `seed`, temperature and the other sampling settings have no effect: espeak is deterministic.
- a "speech token" is 40 ms of audio (Chatterbox's 25 Hz token rate): `speech_tokens` counts them, and
  `max_new_tokens` (and, for load tests, a fixed token count) cap or fix the audio length as for the model.
- requests go through the same `Scheduler` as the model's: one new synthesis per step, the fair pick across
  clients (then the most urgent).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
import struct
import subprocess
import sys
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import escape

import numpy as np

from app.audio.resample import as_mono_f32, resample
from app.engine.base import Engine
from app.engine.chatterbox.model_names import TURBO_TAGS
from app.engine.config import EngineConfig
from app.engine.scheduler import Scheduler, Sequence
from app.engine.types import SAMPLE_RATE, EngineError, EngineInfo, EngineOutput, EngineRequest, GenerationSettings

log = logging.getLogger(__name__)

SLICE_SECONDS = 0.25
SLICE_SAMPLES = int(SLICE_SECONDS * SAMPLE_RATE)
SAMPLES_PER_TOKEN = SAMPLE_RATE // 25  # Chatterbox's S3 speech tokens run at 25 Hz
DEFAULT_SPEED_WPM = 175  # espeak's own default

_NEUTRAL_EXAGGERATION = 0.5
_PITCH_RANGE_PERCENT_PER_EXAGGERATION = 100 / _NEUTRAL_EXAGGERATION

# Median F0 (Hz) espeak-ng 1.51 produces for en-us with each variant at pitch settings 0, 11, ..., 99,
# measured with `median_f0` on three sentences. `embed_voice` inverts these curves.
_PITCH_STEPS = np.arange(0, 100, 11)
_VARIANT_F0 = {
    "m3": np.array([76.2, 81.7, 84.6, 95.5, 100.9, 110.3, 122.4, 135.0, 153.3, 171.1]),
    "f2": np.array([139.0, 149.8, 159.7, 169.2, 183.9, 202.3, 225.8, 250.5, 282.8, 319.3]),
}
_FEMALE_F0_FROM_HZ = 165.0  # the usual boundary between typical male and female speaking pitch
_F0_SEARCH_HZ = (50.0, 500.0)
_MIN_VOICING_PROBABILITY = 0.1
_MIN_VOICED_FRAMES = 5
_ANALYSIS_SECONDS = 10.0  # as much reference as Chatterbox conditions on

_VOICE_NAME = re.compile(r"^[a-z]{2,3}(-[a-z0-9]{1,8})*$")
_VARIANT_NAME = re.compile(r"^[a-z][a-z0-9]{0,15}$")


@dataclass(frozen=True)
class EspeakVoice:
    """An espeak voice: language voice name (`en-us`), optional variant (`m3`, `f2`), pitch 0-99, speed wpm."""

    name: str = "en-us"
    variant: str | None = None
    pitch: int = 50
    speed: int = DEFAULT_SPEED_WPM

    def __post_init__(self) -> None:
        # Voices come back from JSON files, so every field is checked before it reaches a command line.
        if not isinstance(self.name, str) or not _VOICE_NAME.match(self.name):
            raise ValueError(f"invalid espeak voice name {self.name!r}")
        if self.variant is not None and (not isinstance(self.variant, str) or not _VARIANT_NAME.match(self.variant)):
            raise ValueError(f"invalid espeak variant {self.variant!r}")
        if isinstance(self.pitch, bool) or not isinstance(self.pitch, int) or not 0 <= self.pitch <= 99:
            raise ValueError(f"pitch must be an integer in [0, 99], got {self.pitch!r}")
        if isinstance(self.speed, bool) or not isinstance(self.speed, int) or not 80 <= self.speed <= 450:
            raise ValueError(f"speed must be an integer in [80, 450] wpm, got {self.speed!r}")

    @property
    def espeak_name(self) -> str:
        return self.name if self.variant is None else f"{self.name}+{self.variant}"


# Our language codes as espeak-ng voice names where they differ (Norwegian Bokmål, Mandarin).
_ESPEAK_LANGUAGES = {"no": "nb", "zh": "cmn"}


def _in_language(voice: Any, language: str) -> Any:
    """The voice speaking `language` (its variant, pitch and speed kept); English keeps the voice's own accent."""
    if not language or language == "en" or not isinstance(voice, EspeakVoice):
        return voice
    return dataclasses.replace(voice, name=_ESPEAK_LANGUAGES.get(language, language))


class EspeakEngine(Engine):
    info = EngineInfo(name="espeak", device="cpu", dtype="int16")

    def __init__(self, config: EngineConfig | None = None, executable: str = "espeak-ng", timeout_s: float = 30.0):
        path = shutil.which(executable)
        if path is None:
            raise RuntimeError(f"{executable} not found; install espeak-ng (apt-get install espeak-ng)")
        self._executable = path
        self._timeout_s = timeout_s
        # Standing in for Turbo, it knows Turbo's tags (and reads them as words).
        if config is not None and config.model == "turbo":
            self.info = EngineInfo(name="espeak", device="cpu", dtype="int16", details={"tags": list(TURBO_TAGS)})
        # No decode rows to run out of: every started request advances each step.
        self.scheduler = Scheduler(config or EngineConfig(engine="espeak"), max_running=sys.maxsize)

    # ---- requests -----------------------------------------------------------------------------------------

    def add_request(self, request: EngineRequest) -> None:
        self.scheduler.add(request)

    def abort_request(self, request_id: str) -> None:
        self.scheduler.remove(request_id)

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    def step(self, only: Collection[str] | None = None) -> list[EngineOutput]:
        # Synthesis (a subprocess) is the costly part: start at most one new request per step, so a reply's first
        # chunk is not queued behind the whole rest of the text. It runs before anything advances.
        failed = [self._start(sequence) for sequence in self.scheduler.admit(1, only)]
        return [output for output in failed if output is not None] + [
            self._advance(sequence) for sequence in self.scheduler.decode_batch(only)]

    def _start(self, sequence: Sequence) -> EngineOutput | None:
        """Synthesize a newly admitted request's whole audio; the failed output if that fails (it alone)."""
        request = sequence.request
        try:
            voice = _in_language(request.voice, request.language)
            sequence.state = _fit_length(self.synthesize(request.text, voice, request.settings), sequence)
        except Exception as exc:
            log.warning("espeak synthesis failed for %s: %s", request.request_id, exc)
            self.scheduler.remove(request.request_id)
            return EngineOutput.failed(request.request_id, EngineError.wrap(exc, "synthesis failed"))
        return None

    def _advance(self, sequence: Sequence) -> EngineOutput:
        pcm, start = sequence.state, sequence.samples_emitted
        piece = pcm[start:start + SLICE_SAMPLES]
        sequence.finished = start + piece.size >= pcm.size
        self.scheduler.audio_emitted(sequence, piece.size)
        return EngineOutput(sequence.request_id, piece, finished=sequence.finished,
                            speech_tokens=-(-sequence.samples_emitted // SAMPLES_PER_TOKEN))

    # ---- synthesis ----------------------------------------------------------------------------------------

    def synthesize(self, text: str, voice: EspeakVoice, settings: GenerationSettings = GenerationSettings()
                   ) -> np.ndarray:
        """The whole utterance as float32 mono at SAMPLE_RATE (before a request's token budget cuts or pads it)."""
        if not isinstance(voice, EspeakVoice):
            raise EngineError("bad_voice", f"the espeak engine cannot use a {type(voice).__name__} voice")
        wav = self._run_espeak(_ssml(text, settings.exaggeration), voice)
        pcm, rate = _parse_wav(wav)
        return resample(pcm, rate, SAMPLE_RATE)

    def _run_espeak(self, ssml: str, voice: EspeakVoice) -> bytes:
        # Text goes through stdin (never argv), so text starting with "-" cannot be read as an option.
        command = [self._executable, "--stdout", "--stdin", "-m", "-b", "1", "-v", voice.espeak_name,
                   "-p", str(voice.pitch), "-s", str(voice.speed)]
        try:
            done = subprocess.run(command, input=ssml.encode("utf-8"), capture_output=True,
                                  timeout=self._timeout_s, check=False)
        except subprocess.TimeoutExpired:
            raise EngineError("engine_error", f"espeak-ng took longer than {self._timeout_s:g} s") from None
        if done.returncode != 0:
            reason = done.stderr.decode("utf-8", "replace").strip() or f"exit status {done.returncode}"
            raise EngineError("engine_error", f"espeak-ng failed: {reason}")
        return done.stdout

    # ---- voices -------------------------------------------------------------------------------------------

    def default_voice(self) -> EspeakVoice:
        return EspeakVoice()

    def embed_voice(self, wav: np.ndarray, sample_rate: int) -> EspeakVoice:
        """The variant and pitch whose espeak F0 is closest to the reference speaker's median F0."""
        f0 = median_f0(wav, sample_rate)
        variant = "f2" if f0 >= _FEMALE_F0_FROM_HZ else "m3"
        pitch = np.interp(np.log(f0), np.log(_VARIANT_F0[variant]), _PITCH_STEPS)  # clamps to 0..99
        return EspeakVoice(variant=variant, pitch=round(float(pitch)))

    def save_voice(self, voice: EspeakVoice, path: str) -> None:
        with open(path, "w", encoding="utf-8") as file:
            json.dump(dataclasses.asdict(voice), file)

    def load_voice(self, path: str) -> EspeakVoice:
        with open(path, encoding="utf-8") as file:
            data = json.load(file)
        if not isinstance(data, dict):
            raise ValueError(f"{path}: not an espeak voice")
        return EspeakVoice(**data)

    def warmup(self) -> None:
        # librosa's pitch tracker is numba-compiled on first use (seconds, up to ~20 s on a fresh install);
        # pay that before the server reports ready rather than on the first voice upload.
        tone = np.sin(2 * np.pi * 120.0 * np.arange(SAMPLE_RATE) / SAMPLE_RATE).astype(np.float32)
        self.embed_voice(tone, SAMPLE_RATE)
        self.synthesize("Ready.", self.default_voice())


def median_f0(wav: np.ndarray, sample_rate: int) -> float:
    """Median fundamental frequency (Hz) over the voiced frames of the first seconds of a recording."""
    import librosa  # heavy import, only needed for voice uploads

    pcm = as_mono_f32(wav)[: int(_ANALYSIS_SECONDS * sample_rate)]
    f0, voiced, probability = librosa.pyin(pcm, fmin=_F0_SEARCH_HZ[0], fmax=_F0_SEARCH_HZ[1], sr=sample_rate)
    # pyin's voicing path marks even noise voiced, at its floor probability (0.01); speech frames score higher.
    voiced_f0 = f0[voiced & (probability >= _MIN_VOICING_PROBABILITY) & np.isfinite(f0)]
    if voiced_f0.size < _MIN_VOICED_FRAMES:
        raise ValueError("the reference recording has no voiced speech to take a pitch from")
    return float(np.median(voiced_f0))


def _ssml(text: str, exaggeration: float) -> str:
    range_percent = round(exaggeration * _PITCH_RANGE_PERCENT_PER_EXAGGERATION)
    return f'<speak><prosody range="{range_percent}%">{escape(text)}</prosody></speak>'


def _parse_wav(data: bytes) -> tuple[np.ndarray, int]:
    """16-bit mono PCM from espeak's streamed WAV, whose chunk sizes are placeholders (so no strict reader)."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise EngineError("engine_error", "espeak-ng did not produce a WAV stream")
    position, rate = 12, 0
    while position + 8 <= len(data):
        chunk_id, size = data[position:position + 4], struct.unpack_from("<I", data, position + 4)[0]
        body = position + 8
        if chunk_id == b"fmt ":
            _, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", data, body)
            if channels != 1 or bits != 16:
                raise EngineError("engine_error", f"unexpected espeak-ng output: {channels} ch, {bits} bit")
        elif chunk_id == b"data":
            if rate == 0:
                raise EngineError("engine_error", "espeak-ng output has audio before its format")
            samples = data[body:len(data) - (len(data) - body) % 2]
            return np.frombuffer(samples, dtype="<i2").astype(np.float32) / 32768.0, rate
        position = body + size + size % 2
    raise EngineError("engine_error", "espeak-ng output has no audio data")


def _fit_length(pcm: np.ndarray, sequence: Sequence) -> np.ndarray:
    """Apply the token budget: exactly `token_limit` tokens for a fixed length (padding with silence), else at
    most that many."""
    target = sequence.token_limit * SAMPLES_PER_TOKEN
    if sequence.ignore_stop:
        return np.pad(pcm[:target], (0, max(0, target - pcm.size)))
    return pcm[:target]
