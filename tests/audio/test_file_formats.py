import io
import struct
import wave

import numpy as np
import pytest
import soundfile as sf

from app.audio.encode import (FILE_FORMATS, SAMPLE_RATES, content_type, decode_audio, encode_file,
                              streaming_wav_header)
from audio_checks import peak_hz, sine

LOSSLESS = ("wav", "flac")
LOSSY = ("mp3", "opus")


@pytest.mark.parametrize("fmt", LOSSLESS)
@pytest.mark.parametrize("rate", SAMPLE_RATES)
def test_lossless_round_trip_is_exact_to_16_bits(fmt, rate):
    tone = sine(1.0, rate)
    pcm, decoded_rate = decode_audio(encode_file(tone, rate, fmt))
    assert decoded_rate == rate
    assert pcm.size == tone.size
    assert np.abs(pcm - tone).max() <= 1 / 32767


@pytest.mark.parametrize("fmt", LOSSY)
@pytest.mark.parametrize("rate", [8000, 24000, 48000])
def test_lossy_round_trip_keeps_rate_length_and_pitch(fmt, rate):
    tone = sine(1.0, rate)
    pcm, decoded_rate = decode_audio(encode_file(tone, rate, fmt))
    assert decoded_rate == rate
    # Encoder priming/padding may add up to one codec frame (1152 samples for MP3).
    assert tone.size <= pcm.size <= tone.size + 1152
    assert abs(peak_hz(pcm[: tone.size], rate) - 440) <= 2 * rate / tone.size
    assert np.sqrt(np.mean(pcm**2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.1)


@pytest.mark.parametrize("rate", [22050, 44100])
def test_opus_at_a_rate_it_lacks_is_written_at_48k(rate):
    tone = sine(1.0, rate)
    pcm, decoded_rate = decode_audio(encode_file(tone, rate, "opus"))
    assert decoded_rate == 48000
    assert pcm.size == pytest.approx(48000, abs=1)
    assert abs(peak_hz(pcm, 48000) - 440) <= 2


def test_pcm_is_raw_s16le_with_clipping():
    data = encode_file(np.array([0.0, 0.25, -1.0, 2.0], dtype=np.float32), 24000, "pcm")
    np.testing.assert_array_equal(np.frombuffer(data, dtype="<i2"), [0, 8192, -32767, 32767])


def test_wav_is_16_bit_pcm_and_clips():
    data = encode_file(np.array([0.0, 2.0, -2.0], dtype=np.float32), 16000, "wav")
    with wave.open(io.BytesIO(data)) as reader:
        assert (reader.getframerate(), reader.getsampwidth(), reader.getnchannels()) == (16000, 2, 1)
        np.testing.assert_array_equal(np.frombuffer(reader.readframes(10), dtype="<i2"), [0, 32767, -32767])


@pytest.mark.parametrize("fmt", ("wav", "flac", "mp3", "opus"))
def test_empty_audio_still_gives_a_valid_file(fmt):
    info = sf.info(io.BytesIO(encode_file(np.zeros(0, dtype=np.float32), 24000, fmt)))
    assert info.samplerate == 24000 and info.frames <= 1


@pytest.mark.parametrize("fmt,expected", [("wav", "audio/wav"), ("pcm", "audio/pcm"), ("flac", "audio/flac"),
                                          ("mp3", "audio/mpeg"), ("opus", "audio/ogg")])
def test_content_type(fmt, expected):
    assert content_type(fmt) == expected


def test_unknown_format_is_rejected():
    assert set(FILE_FORMATS) == {"wav", "pcm", "flac", "mp3", "opus"}
    with pytest.raises(ValueError, match="unsupported format 'aac'"):
        encode_file(sine(1.0, 24000), 24000, "aac")
    with pytest.raises(ValueError, match="unsupported format"):
        content_type("aac")


def test_streaming_wav_header_parses_and_reads_what_follows():
    header = streaming_wav_header(22050)
    assert len(header) == 44
    riff, riff_size, wave_id, fmt_id, fmt_size = struct.unpack("<4sI4s4sI", header[:20])
    tag, channels, rate, byte_rate, align, bits = struct.unpack("<HHIIHH", header[20:36])
    data_id, data_size = struct.unpack("<4sI", header[36:44])
    assert (riff, wave_id, fmt_id, data_id) == (b"RIFF", b"WAVE", b"fmt ", b"data")
    assert riff_size == data_size == 0xFFFFFFFF
    assert (fmt_size, tag, channels, rate, byte_rate, align, bits) == (16, 1, 1, 22050, 44100, 2, 16)

    samples = np.arange(-500, 500, dtype="<i2")
    pcm, sample_rate = sf.read(io.BytesIO(header + samples.tobytes()), dtype="int16")
    assert sample_rate == 22050
    np.testing.assert_array_equal(pcm, samples)


def test_streaming_wav_header_for_float32():
    header = streaming_wav_header(48000, bits=32)
    samples = np.linspace(-1, 1, 64, dtype="<f4")
    pcm, rate = sf.read(io.BytesIO(header + samples.tobytes()), dtype="float32")
    assert rate == 48000
    np.testing.assert_array_equal(pcm, samples)
    with pytest.raises(ValueError, match="bits"):
        streaming_wav_header(48000, bits=8)
