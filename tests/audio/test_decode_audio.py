import shutil
import subprocess

import numpy as np
import pytest

from app.audio import encode
from app.audio.encode import AudioDecodeError, FfmpegError, decode_audio, encode_file, run_ffmpeg
from audio_checks import sine, sound_file

RATE = 24000
COMPRESSED = ("flac", "mp3", "opus")


def test_error_is_a_value_error():
    assert issubclass(AudioDecodeError, ValueError)


def test_stereo_is_mixed_down_to_mono():
    left, right = sine(1.0), np.zeros(RATE, dtype=np.float32)
    pcm, rate = decode_audio(sound_file(np.stack([left, right], axis=1), RATE, "WAV", "FLOAT"))
    assert rate == RATE
    np.testing.assert_allclose(pcm, left / 2, atol=1e-7)


def test_ogg_vorbis_decodes():
    pcm, rate = decode_audio(sound_file(sine(1.0), 16000, "OGG", "VORBIS"))
    assert rate == 16000 and pcm.dtype == np.float32 and pcm.ndim == 1
    assert pcm.size == pytest.approx(RATE, abs=1152)


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg")
def test_vbr_mp3_without_xing_header_decodes_in_full(tmp_path):
    # libsndfile alone stops such files at mpg123's length estimate, a fraction of the audio.
    path = tmp_path / "noxing.mp3"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", "anoisesrc=d=3:a=0.3",
                    "-ar", "44100", "-ac", "2", "-c:a", "libmp3lame", "-q:a", "2", "-write_xing", "0", str(path)],
                   check=True)
    pcm, rate = decode_audio(path.read_bytes())
    assert rate == 44100
    assert 3.0 <= pcm.size / rate <= 3.1


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg")
def test_run_ffmpeg_returns_float_samples_and_reports_failures_and_time_limits():
    tone = sine(0.5)
    args = ["-f", "f32le", "-ar", str(RATE), "-ac", "1", "-i", "pipe:0"]
    np.testing.assert_array_equal(run_ffmpeg(args, tone.tobytes(), timeout_s=30), tone)
    with pytest.raises(FfmpegError, match="atempo") as failed:
        run_ffmpeg([*args, "-filter:a", "atempo=0.01"], tone.tobytes(), timeout_s=30)
    assert not failed.value.timed_out
    endless = ["-re", "-f", "lavfi", "-i", "sine=r=8000"]  # a source that never ends, read in real time
    with pytest.raises(FfmpegError) as slow:
        run_ffmpeg(endless, b"", timeout_s=0.5)
    assert slow.value.timed_out


def test_mp3_without_ffmpeg_falls_back_to_libsndfile(monkeypatch):
    monkeypatch.setattr(encode, "_FFMPEG", None)
    pcm, rate = decode_audio(encode_file(sine(1.0), RATE, "mp3"))
    assert rate == RATE and pcm.size == RATE


def test_longer_than_the_limit_is_refused():
    data = encode_file(sine(2.0), RATE, "flac")
    assert decode_audio(data, max_seconds=2.0)[0].size == 2 * RATE
    with pytest.raises(AudioDecodeError, match="longer than the 1.5 s limit"):
        decode_audio(data, max_seconds=1.5)


def test_mp3_longer_than_the_limit_is_refused():
    with pytest.raises(AudioDecodeError, match="longer than the 1 s limit"):
        decode_audio(encode_file(sine(3.0), RATE, "mp3"), max_seconds=1.0)


def test_non_finite_samples_are_refused():
    pcm = sine(1.0)
    pcm[100] = np.nan
    with pytest.raises(AudioDecodeError, match="non-finite"):
        decode_audio(sound_file(pcm, RATE, "WAV", "FLOAT"))


def test_formats_outside_the_allow_list_are_refused():
    with pytest.raises(AudioDecodeError, match="unsupported audio format AU"):
        decode_audio(sound_file(sine(1.0), RATE, "AU", "PCM_16"))


def test_header_claiming_an_absurd_sample_rate_is_refused():
    data = bytearray(encode_file(sine(1.0), RATE, "wav"))
    data[24:28] = (10**9).to_bytes(4, "little")
    with pytest.raises(AudioDecodeError, match="sample rate"):
        decode_audio(bytes(data))


def test_flac_claiming_2_to_the_36_samples_is_refused_quickly():
    data = bytearray(encode_file(sine(1.0), RATE, "flac"))
    streaminfo_tail = int.from_bytes(data[18:26], "big")  # rate, channels, bits, then 36 bits of length
    data[18:26] = (streaminfo_tail | (1 << 36) - 1).to_bytes(8, "big")
    with pytest.raises(AudioDecodeError):
        decode_audio(bytes(data))


@pytest.mark.parametrize("data", [
    b"",
    b"\x00",
    b"RIFF",
    b"hello, this is not audio at all\n" * 20,
    b"RIFF\x24\x00\x00\x00WAVEfmt ",
    b"fLaC" + bytes(100),
    b"OggS" + bytes(100),
    b"ID3\x04\x00\x00\x00\x00\x00\x00" + bytes(100),
], ids=["empty", "one-byte", "riff-only", "text", "wav-cut-in-fmt", "flac-magic", "ogg-magic", "id3-only"])
def test_corrupt_bytes_raise_decode_error(data):
    with pytest.raises(AudioDecodeError):
        decode_audio(data)


def test_wav_with_no_samples_raises_decode_error():
    with pytest.raises(AudioDecodeError, match="no samples"):
        decode_audio(encode_file(np.zeros(0, dtype=np.float32), RATE, "wav"))


@pytest.mark.parametrize("seed", range(20))
def test_random_noise_bytes_raise_decode_error(seed):
    rng = np.random.default_rng(seed)
    with pytest.raises(AudioDecodeError):
        decode_audio(rng.integers(0, 256, int(rng.integers(1, 20000)), dtype=np.uint8).tobytes())


@pytest.mark.parametrize("fmt", ("wav",) + COMPRESSED)
@pytest.mark.parametrize("keep", [4, 20, 40])
def test_file_cut_inside_its_header_raises_decode_error(fmt, keep):
    with pytest.raises(AudioDecodeError):
        decode_audio(encode_file(sine(1.0), RATE, fmt)[:keep])


@pytest.mark.parametrize("fmt", ("flac", "opus"))
@pytest.mark.parametrize("fraction", [0.05, 0.3])
def test_compressed_file_cut_mid_stream_raises_decode_error(fmt, fraction):
    data = encode_file(sine(1.0), RATE, fmt)
    with pytest.raises(AudioDecodeError):
        decode_audio(data[: int(len(data) * fraction)])


@pytest.mark.parametrize("fmt", ("wav",) + COMPRESSED)
def test_mutated_files_never_raise_anything_else(fmt):
    """Bytes overwritten, cut, or spliced in: each decode either succeeds with finite mono float32 or raises
    AudioDecodeError."""
    rng = np.random.default_rng(7)
    original = encode_file(sine(0.5), RATE, fmt)
    for _ in range(25 if fmt == "mp3" else 60):
        data = bytearray(original)
        for _ in range(int(rng.integers(1, 8))):
            data[int(rng.integers(0, len(data)))] = int(rng.integers(0, 256))
        if rng.random() < 0.5:
            position = int(rng.integers(0, len(data)))
            data[position:position] = rng.integers(0, 256, int(rng.integers(1, 300)), dtype=np.uint8).tobytes()
        try:
            pcm, rate = decode_audio(bytes(data))
        except AudioDecodeError:
            continue
        assert pcm.dtype == np.float32 and pcm.ndim == 1 and np.isfinite(pcm).all() and rate > 0
