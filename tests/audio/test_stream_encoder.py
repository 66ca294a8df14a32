import numpy as np
import pytest

from app.audio.encode import SAMPLE_RATES, STREAM_ENCODINGS, StreamEncoder
from app.audio.resample import resample
from app.engine.types import SAMPLE_RATE
from audio_checks import mulaw_expand


def g191_ulaw_compress(x: int) -> int:
    """Straight port of the ITU-T G.191 reference `ulaw_compress` (one 16-bit sample)."""
    absno = ((~x) >> 2) + 33 if x < 0 else (x >> 2) + 33
    absno = min(absno, 0x1FFF)
    segno, i = 1, absno >> 6
    while i:
        segno, i = segno + 1, i >> 1
    code = ((8 - segno) << 4) | (0x0F - ((absno >> segno) & 0x0F))
    return code | 0x80 if x >= 0 else code


def g191_alaw_compress(x: int) -> int:
    """Straight port of the ITU-T G.191 reference `alaw_compress` (one 16-bit sample)."""
    ix = (~x) >> 4 if x < 0 else x >> 4
    if ix > 15:
        iexp = 1
        while ix > 16 + 15:
            ix >>= 1
            iexp += 1
        ix -= 16
        ix += iexp << 4
    if x >= 0:
        ix |= 0x80
    return ix ^ 0x55


def _encode_all(encoding: str, pcm: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    encoder = StreamEncoder(encoding, sample_rate)
    return encoder.encode(pcm) + encoder.flush()


def _every_s16_value_as_float() -> tuple[np.ndarray, np.ndarray]:
    linear = np.arange(-32767, 32768)
    return linear, (linear / 32767.0).astype(np.float32)


def test_mulaw_is_bit_exact_with_the_itu_reference():
    linear, pcm = _every_s16_value_as_float()
    codes = np.frombuffer(_encode_all("mulaw", pcm), dtype=np.uint8)
    expected = np.array([g191_ulaw_compress(int(x)) for x in linear], dtype=np.uint8)
    np.testing.assert_array_equal(codes, expected)


def test_alaw_is_bit_exact_with_the_itu_reference():
    linear, pcm = _every_s16_value_as_float()
    codes = np.frombuffer(_encode_all("alaw", pcm), dtype=np.uint8)
    expected = np.array([g191_alaw_compress(int(x)) for x in linear], dtype=np.uint8)
    np.testing.assert_array_equal(codes, expected)
    assert codes[linear == 0][0] == 0xD5  # A-law silence


def test_mulaw_known_codes():
    codes = _encode_all("mulaw", np.array([0.0, 1.0, -1.0, 5.0, -5.0], dtype=np.float32))
    assert codes == bytes([0xFF, 0x80, 0x00, 0x80, 0x00])


def test_mulaw_round_trip_error_within_g711_bounds():
    linear, pcm = _every_s16_value_as_float()
    decoded = mulaw_expand(np.frombuffer(_encode_all("mulaw", pcm), dtype=np.uint8))
    in_range = np.abs(linear) <= 32635  # beyond this G.711 clips
    # Half a quantization step: the step in segment s is 2**(s+3), and |x| + 0x84 >= 2**(s+7).
    bound = (np.abs(linear) + 0x84) / 32
    assert np.all(np.abs(decoded - linear)[in_range] <= bound[in_range])
    assert np.abs(decoded - linear).max() <= 32767 - 32124  # the largest code decodes to 32124


def test_s16_clips_instead_of_wrapping():
    pcm = np.array([0.0, 0.5, -0.5, 1.0, -1.0, 1.5, -3.0, 1e9], dtype=np.float32)
    samples = np.frombuffer(_encode_all("pcm_s16le", pcm), dtype="<i2")
    np.testing.assert_array_equal(samples, [0, 16384, -16384, 32767, -32767, 32767, -32767, 32767])


def test_f32_passes_samples_through_at_the_source_rate():
    pcm = np.random.default_rng(0).uniform(-1, 1, 1000).astype(np.float32)
    np.testing.assert_array_equal(np.frombuffer(_encode_all("pcm_f32le", pcm), dtype="<f4"), pcm)


@pytest.mark.parametrize("encoding", STREAM_ENCODINGS)
def test_pieces_encode_like_the_whole_resampled_stream(encoding):
    rng = np.random.default_rng(3)
    pcm = (0.4 * np.sin(2 * np.pi * 300 * np.arange(SAMPLE_RATE) / SAMPLE_RATE)).astype(np.float32)
    encoder = StreamEncoder(encoding, 8000)
    pieces = np.split(pcm, np.sort(rng.integers(0, pcm.size, 25)))
    streamed = b"".join(encoder.encode(p) for p in pieces) + encoder.flush()
    whole_at_8k = resample(pcm, SAMPLE_RATE, 8000)
    assert streamed == StreamEncoder(encoding, SAMPLE_RATE).encode(whole_at_8k)
    assert len(streamed) == encoder.bytes_per_second  # one second of audio


@pytest.mark.parametrize("encoding,width", [("pcm_s16le", 2), ("pcm_f32le", 4), ("mulaw", 1), ("alaw", 1)])
@pytest.mark.parametrize("rate", SAMPLE_RATES)
def test_bytes_per_second(encoding, width, rate):
    assert StreamEncoder(encoding, rate).bytes_per_second == rate * width


@pytest.mark.parametrize("encoding,rate,message", [
    ("mp3", 24000, "unsupported encoding 'mp3'.*pcm_s16le, pcm_f32le, mulaw, alaw"),
    ("pcm_s16le", 12345, "unsupported sample_rate 12345.*8000, 16000"),
    ("mulaw", "8000", "unsupported sample_rate '8000'"),
    ("mulaw", True, "unsupported sample_rate True"),
])
def test_validate_rejects_with_a_clear_message(encoding, rate, message):
    with pytest.raises(ValueError, match=message):
        StreamEncoder.validate(encoding, rate)
    with pytest.raises(ValueError, match=message):
        StreamEncoder(encoding, rate)
