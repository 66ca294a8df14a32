"""Sample-rate conversion of float32 mono PCM, for whole buffers and for streams that arrive in pieces."""

from __future__ import annotations

import numpy as np
import soxr

_QUALITY = "HQ"


def as_mono_f32(pcm: np.ndarray) -> np.ndarray:
    """`pcm` as a contiguous 1-D float32 array (no copy when it already is one)."""
    array = np.ascontiguousarray(pcm, dtype=np.float32)
    if array.ndim != 1:
        raise ValueError(f"expected mono PCM (a 1-D array), got shape {array.shape}")
    return array


def resample(pcm: np.ndarray, src_rate: int, dst_rate: int) -> np.ndarray:
    """Resample a whole buffer; the same output as streaming it through `StreamResampler` and flushing."""
    pcm = as_mono_f32(pcm)
    if src_rate == dst_rate:
        return pcm
    return soxr.resample(pcm, src_rate, dst_rate, quality=_QUALITY)


class StreamResampler:
    """Resamples a stream piece by piece; the concatenated output equals `resample` of the whole stream.

    soxr holds back a few milliseconds of filter delay, so output lags input slightly; `flush()` releases
    the tail and makes the resampler ready for a new, unrelated stream.
    """

    def __init__(self, src_rate: int, dst_rate: int):
        if src_rate <= 0 or dst_rate <= 0:
            raise ValueError(f"sample rates must be positive, got {src_rate} -> {dst_rate}")
        self.src_rate = src_rate
        self.dst_rate = dst_rate
        self._stream = (None if src_rate == dst_rate
                        else soxr.ResampleStream(src_rate, dst_rate, 1, dtype="float32", quality=_QUALITY))

    def process(self, pcm: np.ndarray) -> np.ndarray:
        pcm = as_mono_f32(pcm)
        if self._stream is None:
            return pcm
        return self._stream.resample_chunk(pcm)

    def flush(self) -> np.ndarray:
        if self._stream is None:
            return np.zeros(0, dtype=np.float32)
        tail = self._stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
        self._stream.clear()
        return tail
