import numpy as np
import pytest

from app.audio.encode import Mp3StreamEncoder, decode_audio
from audio_checks import RATE, peak_hz, sine

MP3_FRAME = 1152  # samples per MPEG-1 layer III frame (576 for the MPEG-2 rates below 32 kHz)


@pytest.mark.parametrize("rate, kbps", [(44100, 128), (22050, 32), (24000, 48)])
def test_pieces_stream_out_as_one_constant_bitrate_mp3_of_the_audio(rate, kbps):
    encoder = Mp3StreamEncoder(rate, kbps, source_rate=RATE)
    tone = sine(3.0)
    pieces = [encoder.encode(piece) for piece in np.array_split(tone, 30)]
    assert sum(map(len, pieces[:15])) > 0  # frames leave while audio is still coming
    mp3 = b"".join(pieces) + encoder.flush()
    assert encoder.bytes_per_second == kbps * 125
    assert len(mp3) == pytest.approx(3.0 * encoder.bytes_per_second, rel=0.05)
    pcm, decoded_rate = decode_audio(mp3)
    assert decoded_rate == rate
    assert 0 <= pcm.size - 3 * rate <= 3 * MP3_FRAME  # LAME's start delay and end padding
    assert peak_hz(pcm, rate) == pytest.approx(440.0, abs=2.0)


def test_flush_ends_one_mp3_stream_and_later_audio_starts_the_next():
    encoder = Mp3StreamEncoder(44100, 64)
    first = encoder.encode(sine(1.0)) + encoder.flush()
    assert encoder.flush() == b""  # nothing pending: no empty stream
    second = encoder.encode(sine(1.0, hz=880.0)) + encoder.flush()
    pcm, rate = decode_audio(first + second)
    assert 2 * rate <= pcm.size <= 2 * rate + 6 * MP3_FRAME  # the streams play back to back
    halves = pcm[: rate // 2], pcm[-rate // 2 - 2 * MP3_FRAME: -2 * MP3_FRAME]
    assert [peak_hz(half, rate) for half in halves] == [pytest.approx(440.0, abs=4.0), pytest.approx(880.0, abs=4.0)]


def test_no_audio_writes_no_stream():
    encoder = Mp3StreamEncoder(44100, 128)
    assert encoder.encode(np.zeros(0, np.float32)) == b"" and encoder.flush() == b""
