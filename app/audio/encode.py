"""Turning float32 PCM into bytes for clients, and uploaded recordings back into float32 PCM.

Streams (WebSocket) use raw encodings at a chosen rate (`StreamEncoder`) or constant-bitrate MP3
(`Mp3StreamEncoder`); both are an `AudioEncoder`. Finished responses (HTTP) use file formats: `encode_file`.
Encoding goes through libsndfile (python-soundfile), which writes FLAC, MP3 (LAME) and Ogg Opus itself.
Decoding uploads uses libsndfile too, except MP3, which ffmpeg decodes when installed (see
`_decode_mp3_with_ffmpeg`); `run_ffmpeg` runs ffmpeg filters over float32 PCM for the HTTP APIs too.
"""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
from collections.abc import Callable
from typing import Protocol

import numpy as np
import soundfile as sf

from app.audio.resample import StreamResampler, as_mono_f32, resample
from app.engine.types import SAMPLE_RATE

STREAM_ENCODINGS = ("pcm_s16le", "pcm_f32le", "mulaw", "alaw")
SAMPLE_RATES = (8000, 16000, 22050, 24000, 32000, 44100, 48000)
FILE_FORMATS = ("wav", "pcm", "flac", "mp3", "opus")

BYTES_PER_SAMPLE = {"pcm_s16le": 2, "pcm_f32le": 4, "mulaw": 1, "alaw": 1}
_CONTENT_TYPES = {"wav": "audio/wav", "pcm": "audio/pcm", "flac": "audio/flac", "mp3": "audio/mpeg",
                  "opus": "audio/ogg"}
# libsndfile (format, subtype) per compressed file format.
_SNDFILE_FORMATS = {"flac": ("FLAC", "PCM_16"), "mp3": ("MP3", "MPEG_LAYER_III"), "opus": ("OGG", "OPUS")}
_OPUS_RATES = (8000, 12000, 16000, 24000, 48000)  # the only rates an Opus encoder accepts
_OPUS_FALLBACK_RATE = 48000

# Containers accepted for uploads. Others libsndfile knows (PAF, SDS, MAT...) are refused to keep rarely used
# parsers away from untrusted bytes.
_DECODABLE_FORMATS = frozenset({"WAV", "WAVEX", "RF64", "W64", "AIFF", "FLAC", "OGG", "MP3"})
_MAX_DECODE_RATE = 192_000
_DECODE_BLOCK_SAMPLES = 1 << 18
_FFMPEG = shutil.which("ffmpeg")
_FFMPEG_TIMEOUT_S = 30.0


class AudioDecodeError(ValueError):
    """An uploaded recording could not be decoded; the message says why and is safe to show a client."""


class FfmpegError(Exception):
    """ffmpeg failed (the message is what it wrote to stderr) or ran past its time limit (`timed_out`)."""

    def __init__(self, message: str, timed_out: bool = False):
        super().__init__(message)
        self.timed_out = timed_out


# --- raw sample encodings ----------------------------------------------------------------------------------


def float_to_s16(pcm: np.ndarray) -> np.ndarray:
    """Float samples in [-1, 1] to int16, clipping anything louder instead of wrapping around."""
    return np.rint(np.clip(pcm, -1.0, 1.0) * 32767.0).astype(np.int16)


def _mulaw_table() -> np.ndarray:
    """G.711 mu-law code for every int16 value, bit-exact with the ITU-T G.191 reference `ulaw_compress`
    (what Twilio/ElevenLabs `ulaw_8000` expect): magnitude (one's complement for negatives) clipped to 32635,
    biased by 0x84, coded as sign | 3-bit segment | 4-bit mantissa, all bits inverted."""
    linear = np.arange(-32768, 32768, dtype=np.int32)
    sign = np.where(linear < 0, 0x80, 0x00)
    biased = np.minimum(np.where(linear < 0, ~linear, linear), 32635) + 0x84
    segment = np.floor(np.log2(biased >> 7)).astype(np.int32)  # biased >> 7 is in [1, 255]: segment 0..7
    mantissa = (biased >> (segment + 3)) & 0x0F
    return (~(sign | (segment << 4) | mantissa) & 0xFF).astype(np.uint8)


def _alaw_table() -> np.ndarray:
    """G.711 A-law code for every int16 value, bit-exact with the ITU-T G.191 reference `alaw_compress`
    (what ElevenLabs `alaw_8000` carries): the 12-bit magnitude (one's complement for negatives) coded as
    3-bit segment | 4-bit mantissa, the sign bit set for non-negative values, even bits inverted."""
    linear = np.arange(-32768, 32768, dtype=np.int32)
    magnitude = np.where(linear < 0, ~linear, linear) >> 4  # 0..2047
    segment = np.where(magnitude > 15, np.floor(np.log2(np.maximum(magnitude, 16) >> 4)).astype(np.int32) + 1, 0)
    # Segment 0 keeps the magnitude as it is; segment s >= 1 keeps its top 5 bits, the leading 1 dropped.
    code = np.where(segment == 0, magnitude, (segment << 4) + (magnitude >> np.maximum(segment - 1, 0)) - 16)
    return ((code | np.where(linear >= 0, 0x80, 0x00)) ^ 0x55).astype(np.uint8)


_MULAW_CODES = _mulaw_table()
_ALAW_CODES = _alaw_table()


def _encode_s16(pcm: np.ndarray) -> bytes:
    return float_to_s16(pcm).astype("<i2", copy=False).tobytes()


def _encode_f32(pcm: np.ndarray) -> bytes:
    return pcm.astype("<f4", copy=False).tobytes()


def _encode_mulaw(pcm: np.ndarray) -> bytes:
    return _MULAW_CODES[float_to_s16(pcm).astype(np.int32) + 32768].tobytes()


def _encode_alaw(pcm: np.ndarray) -> bytes:
    return _ALAW_CODES[float_to_s16(pcm).astype(np.int32) + 32768].tobytes()


_ENCODERS: dict[str, Callable[[np.ndarray], bytes]] = {
    "pcm_s16le": _encode_s16, "pcm_f32le": _encode_f32, "mulaw": _encode_mulaw, "alaw": _encode_alaw}


class AudioEncoder(Protocol):
    """Engine PCM in, client bytes out, as one continuous stream."""

    sample_rate: int
    cpu_heavy: bool  # worth running off the event loop (MP3 encoding, resampling)

    @property
    def bytes_per_second(self) -> int: ...

    def encode(self, pcm: np.ndarray) -> bytes: ...

    def flush(self) -> bytes: ...


class StreamEncoder:
    """Resamples and encodes one continuous stream of engine PCM, piece by piece.

    Pieces encoded in turn and then `flush()` give exactly the bytes of encoding the whole stream at once.
    """

    def __init__(self, encoding: str, sample_rate: int, source_rate: int = SAMPLE_RATE):
        self.validate(encoding, sample_rate)
        self.encoding = encoding
        self.sample_rate = sample_rate
        self.cpu_heavy = sample_rate != source_rate
        self._resampler = StreamResampler(source_rate, sample_rate)
        self._encode = _ENCODERS[encoding]

    @staticmethod
    def validate(encoding: str, sample_rate: int) -> None:
        if encoding not in STREAM_ENCODINGS:
            raise ValueError(f"unsupported encoding {encoding!r}; expected one of {', '.join(STREAM_ENCODINGS)}")
        if isinstance(sample_rate, bool) or sample_rate not in SAMPLE_RATES:
            raise ValueError(f"unsupported sample_rate {sample_rate!r}; expected one of "
                             f"{', '.join(map(str, SAMPLE_RATES))}")

    @property
    def bytes_per_second(self) -> int:
        return self.sample_rate * BYTES_PER_SAMPLE[self.encoding]

    def encode(self, pcm: np.ndarray) -> bytes:
        return self._encode(self._resampler.process(pcm))

    def flush(self) -> bytes:
        """The resampler's held-back tail; call once at the end of the stream."""
        return self._encode(self._resampler.flush())


class Mp3StreamEncoder:
    """Streaming constant-bitrate MP3 (LAME, through libsndfile): `encode` returns the frames finished so far.
    `flush` ends the MP3 stream and the next audio starts a new one; decoders play the streams back to back."""

    cpu_heavy = True

    def __init__(self, sample_rate: int, kbps: int, source_rate: int = SAMPLE_RATE):
        self.sample_rate = sample_rate
        self.kbps = kbps
        self._resampler = StreamResampler(source_rate, sample_rate)
        self._file: sf.SoundFile | None = None
        self._buffer = io.BytesIO()
        self._taken = 0

    @property
    def bytes_per_second(self) -> int:
        return self.kbps * 1000 // 8

    def encode(self, pcm: np.ndarray) -> bytes:
        self._write(self._resampler.process(pcm))
        return self._take()

    def flush(self) -> bytes:
        self._write(self._resampler.flush())
        if self._file is None:
            return b""
        self._file.close()  # LAME's last frames
        self._file = None
        return self._take()

    def _write(self, pcm: np.ndarray) -> None:
        if not pcm.size:
            return
        if self._file is None:
            self._buffer, self._taken = io.BytesIO(), 0
            container, subtype = _SNDFILE_FORMATS["mp3"]
            self._file = sf.SoundFile(self._buffer, "w", self.sample_rate, 1, format=container, subtype=subtype,
                                      compression_level=self._compression_level(), bitrate_mode="CONSTANT",
                                      closefd=False)
        self._file.write(np.clip(pcm, -1.0, 1.0))

    def _take(self) -> bytes:
        data = self._buffer.getvalue()[self._taken:]
        self._taken += len(data)
        return data

    def _compression_level(self) -> float:
        """libsndfile maps its compression level linearly onto the bitrates of the MPEG version the sample
        rate implies (MPEG-1: 32-320 kb/s, MPEG-2: 8-160 kb/s); it refuses exactly 1.0."""
        high, low = (320, 32) if self.sample_rate >= 32000 else (160, 8)
        return min(0.999, (high - self.kbps) / (high - low))


# --- files ---------------------------------------------------------------------------------------------------


def content_type(fmt: str) -> str:
    _check_file_format(fmt)
    return _CONTENT_TYPES[fmt]


def streaming_wav_header(sample_rate: int, bits: int = 16) -> bytes:
    """A WAV header for a stream of unknown length: RIFF and data sizes are 0xFFFFFFFF, which players read
    as "until the end". `bits` 16 is PCM s16le, 32 is IEEE float32le."""
    return _wav_header(sample_rate, bits, 0xFFFFFFFF)


def _wav_header(sample_rate: int, bits: int, data_bytes: int) -> bytes:
    format_tags = {16: 1, 32: 3}  # WAVE_FORMAT_PCM, WAVE_FORMAT_IEEE_FLOAT
    if bits not in format_tags:
        raise ValueError(f"bits must be 16 (PCM) or 32 (float), got {bits}")
    block_align = bits // 8
    riff_bytes = min(36 + data_bytes, 0xFFFFFFFF)
    return (b"RIFF" + struct.pack("<I", riff_bytes) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, format_tags[bits], 1, sample_rate,
                                    sample_rate * block_align, block_align, bits)
            + b"data" + struct.pack("<I", data_bytes))


def encode_file(pcm: np.ndarray, sample_rate: int, fmt: str) -> bytes:
    """A complete file of mono `pcm` (float32 at `sample_rate`): wav (s16), pcm (raw s16le), flac (s16),
    mp3, or opus (Ogg). Opus only exists at 8/12/16/24/48 kHz, so other rates are resampled to 48 kHz."""
    _check_file_format(fmt)
    pcm = as_mono_f32(pcm)
    if fmt == "pcm":
        return _encode_s16(pcm)
    if fmt == "wav":
        samples = _encode_s16(pcm)
        return _wav_header(sample_rate, 16, len(samples)) + samples
    if fmt == "opus" and sample_rate not in _OPUS_RATES:
        pcm, sample_rate = resample(pcm, sample_rate, _OPUS_FALLBACK_RATE), _OPUS_FALLBACK_RATE
    if pcm.size == 0:
        # libsndfile writes nothing (FLAC, MP3) or a broken file (Opus) for zero frames; one silent sample
        # keeps the result a valid file.
        pcm = np.zeros(1, dtype=np.float32)
    container, subtype = _SNDFILE_FORMATS[fmt]
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(pcm, -1.0, 1.0), sample_rate, format=container, subtype=subtype)
    return buffer.getvalue()


def _check_file_format(fmt: str) -> None:
    if fmt not in FILE_FORMATS:
        raise ValueError(f"unsupported format {fmt!r}; expected one of {', '.join(FILE_FORMATS)}")


# --- decoding uploads ---------------------------------------------------------------------------------------


def decode_audio(data: bytes, max_seconds: float = 600.0) -> tuple[np.ndarray, int]:
    """Decode an uploaded recording (WAV, FLAC, Ogg Vorbis/Opus, MP3, AIFF) to float32 mono and its rate.

    Any failure raises `AudioDecodeError`. Decoding reads in blocks and stops past `max_seconds`, so a small
    hostile file cannot claim (or expand to) an unbounded amount of audio.
    """
    if not data:
        raise AudioDecodeError("the audio file is empty")
    try:
        with sf.SoundFile(io.BytesIO(data)) as sound:
            _check_decodable(sound)
            rate = sound.samplerate
            if sound.format == "MP3" and _FFMPEG is not None:
                pcm = _decode_mp3_with_ffmpeg(data, rate, sound.channels, max_seconds)
            else:
                pcm = _read_mono(sound, max_seconds)
    except AudioDecodeError:
        raise
    except Exception as exc:  # libsndfile reports corrupt input in several exception types
        raise AudioDecodeError(f"not a readable WAV, FLAC, Ogg or MP3 file: {_describe(exc)}") from exc
    if pcm.size == 0:
        raise AudioDecodeError("the audio file contains no samples")
    if not np.isfinite(pcm).all():
        raise AudioDecodeError("the audio file contains invalid (non-finite) samples")
    return pcm, rate


def _check_decodable(sound: sf.SoundFile) -> None:
    if sound.format not in _DECODABLE_FORMATS:
        raise AudioDecodeError(f"unsupported audio format {sound.format}; use WAV, FLAC, Ogg, or MP3")
    if not 1 <= sound.samplerate <= _MAX_DECODE_RATE:
        raise AudioDecodeError(f"unsupported sample rate {sound.samplerate}")
    if sound.channels < 1:
        raise AudioDecodeError("the audio file has no channels")


def _read_mono(sound: sf.SoundFile, max_seconds: float) -> np.ndarray:
    block_frames = max(1, _DECODE_BLOCK_SAMPLES // sound.channels)
    blocks: list[np.ndarray] = []
    frames = 0
    while True:
        block = sound.read(block_frames, dtype="float32", always_2d=True)
        if len(block) == 0:
            break
        frames += len(block)
        _check_duration(frames, sound.samplerate, max_seconds)
        blocks.append(_downmix(block))
    return np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.float32)


def _decode_mp3_with_ffmpeg(data: bytes, rate: int, channels: int, max_seconds: float) -> np.ndarray:
    """libsndfile stops an MP3 at mpg123's length estimate, which cuts VBR files without a Xing header short
    (3 s decoded as 0.3 s); ffmpeg decodes the whole stream."""
    try:
        samples = run_ffmpeg(["-f", "mp3", "-i", "pipe:0", "-t", f"{max_seconds + 1:g}", "-ar", str(rate),
                              "-ac", str(channels)], data, _FFMPEG_TIMEOUT_S)
    except FfmpegError as exc:
        if exc.timed_out:
            raise AudioDecodeError("decoding the MP3 file took too long") from None
        raise AudioDecodeError(f"could not decode the MP3 file: {str(exc).splitlines()[-1]}") from None
    frames = samples[: len(samples) - len(samples) % channels].reshape(-1, channels)
    _check_duration(len(frames), rate, max_seconds)
    return _downmix(frames)


def ffmpeg_available() -> bool:
    return _FFMPEG is not None


def run_ffmpeg(args: list[str], data: bytes, timeout_s: float) -> np.ndarray:
    """ffmpeg fed `data` on stdin, with `args` naming the input (`-i pipe:0`) and what to do with it, writing
    mono or interleaved float32 samples, which are returned (a read-only view). It runs in its own process
    under a time limit, so hostile input can neither hang nor crash the server. Raises `FfmpegError`."""
    if _FFMPEG is None:
        raise FfmpegError("ffmpeg is not installed")
    command = [_FFMPEG, "-nostdin", "-hide_banner", "-loglevel", "error", *args, "-f", "f32le", "pipe:1"]
    try:
        result = subprocess.run(command, input=data, capture_output=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise FfmpegError(f"ffmpeg took longer than {timeout_s:g} s", timed_out=True) from None
    if result.returncode != 0:
        raise FfmpegError(result.stderr.decode(errors="replace").strip() or "ffmpeg failed")
    return np.frombuffer(result.stdout, dtype="<f4")


def _downmix(frames: np.ndarray) -> np.ndarray:
    # Always a new, writable array: ffmpeg's frames are a read-only view of its output bytes.
    return frames.mean(axis=1, dtype=np.float32) if frames.shape[1] > 1 else frames[:, 0].astype(np.float32)


def _check_duration(frames: int, rate: int, max_seconds: float) -> None:
    if frames > max_seconds * rate:
        raise AudioDecodeError(f"the recording is longer than the {max_seconds:g} s limit")


def _describe(exc: Exception) -> str:
    # libsndfile messages name the in-memory file object ("Error opening <_io.BytesIO object at 0x...>: ...");
    # keep only the reason.
    return str(exc).rsplit(": ", 1)[-1].strip() or type(exc).__name__
