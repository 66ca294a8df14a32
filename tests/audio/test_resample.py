import numpy as np
import pytest

from app.audio.encode import SAMPLE_RATES
from app.audio.resample import StreamResampler, resample
from app.engine.types import SAMPLE_RATE


def _speechlike(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    tone = 0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t))
    return (tone + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


def _stream(resampler: StreamResampler, pcm: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Feed `pcm` in irregular pieces, including empty and one-sample ones, like an engine does."""
    cuts = rng.integers(0, pcm.size, 30)
    cuts = np.sort(np.concatenate([cuts, cuts[:3], [1, 2]]))  # repeated cuts give empty pieces
    pieces = np.split(pcm, cuts)
    assert any(p.size == 0 for p in pieces) and any(p.size == 1 for p in pieces)
    return np.concatenate([resampler.process(p) for p in pieces] + [resampler.flush()])


@pytest.mark.parametrize("dst_rate", SAMPLE_RATES)
def test_streaming_equals_whole_buffer(dst_rate):
    pcm = _speechlike(1.3)
    whole = resample(pcm, SAMPLE_RATE, dst_rate)
    streamed = _stream(StreamResampler(SAMPLE_RATE, dst_rate), pcm, np.random.default_rng(dst_rate))
    assert streamed.dtype == np.float32
    assert streamed.size == whole.size == round(pcm.size * dst_rate / SAMPLE_RATE)
    assert np.abs(streamed - whole).max() < 1e-6


def test_flush_readies_the_resampler_for_a_new_stream():
    resampler = StreamResampler(SAMPLE_RATE, 16000)
    rng = np.random.default_rng(1)
    first = _stream(resampler, _speechlike(0.5, seed=1), rng)
    second = _stream(resampler, _speechlike(0.5, seed=1), rng)
    np.testing.assert_array_equal(first, second)


def test_sine_keeps_frequency_and_level_when_downsampled():
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    sine = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    out = resample(sine, SAMPLE_RATE, 8000)[400:-400]  # skip the filter's edges
    spectrum = np.abs(np.fft.rfft(out * np.hanning(out.size)))
    peak_hz = np.argmax(spectrum) * 8000 / out.size
    assert abs(peak_hz - 1000) < 8000 / out.size
    rms_db = 20 * np.log10(np.sqrt(np.mean(out**2)) / (0.5 / np.sqrt(2)))
    assert abs(rms_db) < 0.1


def test_content_above_the_new_nyquist_is_removed():
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    tone_6k = (0.5 * np.sin(2 * np.pi * 6000 * t)).astype(np.float32)  # would alias to 2 kHz at 8 kHz
    out = resample(tone_6k, SAMPLE_RATE, 8000)[400:-400]
    assert np.sqrt(np.mean(out**2)) < 1e-3


def test_same_rate_is_identity():
    pcm = _speechlike(0.2)
    resampler = StreamResampler(SAMPLE_RATE, SAMPLE_RATE)
    np.testing.assert_array_equal(resampler.process(pcm), pcm)
    assert resampler.flush().size == 0
    np.testing.assert_array_equal(resample(pcm, SAMPLE_RATE, SAMPLE_RATE), pcm)


def test_rejects_multichannel_and_bad_rates():
    with pytest.raises(ValueError, match="mono"):
        StreamResampler(SAMPLE_RATE, 8000).process(np.zeros((10, 2), dtype=np.float32))
    with pytest.raises(ValueError, match="positive"):
        StreamResampler(0, 8000)
