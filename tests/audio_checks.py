"""Test signals and independent reference decoders shared by the audio and server tests (`import audio_checks`)."""

from __future__ import annotations

import io

import numpy as np
import soundfile as sf

RATE = 24000  # the engine's rate


def sine(seconds: float, rate: int = RATE, hz: float = 440.0, amplitude: float = 0.5) -> np.ndarray:
    return (amplitude * np.sin(2 * np.pi * hz * np.arange(int(rate * seconds)) / rate)).astype(np.float32)


def peak_hz(pcm: np.ndarray, rate: int) -> float:
    """The strongest frequency of `pcm`."""
    return float(np.argmax(np.abs(np.fft.rfft(pcm * np.hanning(pcm.size)))) * rate / pcm.size)


def sound_file(pcm: np.ndarray, rate: int, container: str = "WAV", subtype: str = "PCM_16") -> bytes:
    """`pcm` as a file written by libsndfile (a 16-bit WAV unless told otherwise)."""
    buffer = io.BytesIO()
    sf.write(buffer, pcm, rate, format=container, subtype=subtype)
    return buffer.getvalue()


def s16le_to_float(data: bytes) -> np.ndarray:
    return np.frombuffer(data, "<i2").astype(np.float32) / 32768


def mulaw_expand(codes: np.ndarray) -> np.ndarray:
    """ITU-T G.711 mu-law decoding to 16-bit linear."""
    inverted = ~codes.astype(np.int32) & 0xFF
    exponent, mantissa = (inverted >> 4) & 7, inverted & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return np.where(inverted & 0x80, -magnitude, magnitude)
