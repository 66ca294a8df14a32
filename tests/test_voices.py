"""The voice library: uploads, validation, the conditionals cache, persistence; one test with real espeak."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from app.engine.espeak import EspeakEngine, EspeakVoice
from app.engine.types import SAMPLE_RATE
from app.engine.worker import EngineWorker
from app.voices.library import MAX_UPLOAD_SECONDS, REFERENCE_SECONDS, VoiceError, VoiceLibrary

DEFAULT_CONDITIONALS = {"voice": "built-in"}


class FakeEngine:
    """Counts embed/save/load calls; its conditionals are a small JSON-able summary of the reference."""

    def __init__(self, fail_embed: bool = False, fail_save: bool = False):
        self.embeds = self.saves = self.loads = 0
        self.embedded: list[np.ndarray] = []
        self.fail_embed = fail_embed
        self.fail_save = fail_save

    async def embed(self, wav: np.ndarray, rate: int) -> dict:
        self.embeds += 1
        self.embedded.append(wav)
        if self.fail_embed:
            raise ValueError("no voiced speech")
        return {"rate": rate, "samples": int(wav.size), "sum": round(float(wav.sum()), 3)}

    def save(self, conditionals: dict, path: str) -> None:
        self.saves += 1
        if self.fail_save:
            Path(path).write_text("{partial")
            raise OSError("disk full")
        Path(path).write_text(json.dumps(conditionals))

    def load(self, path: str) -> dict:
        self.loads += 1
        return json.loads(Path(path).read_text())


def make_library(root: Path, engine: FakeEngine, engine_key: str = "fake", **options) -> VoiceLibrary:
    options.setdefault("max_upload_bytes", 5 * 1024 * 1024)
    return VoiceLibrary(root, engine_key, embed=engine.embed, save=engine.save, load=engine.load,
                        default_voice=DEFAULT_CONDITIONALS, **options)


def tone(seconds: float, rate: int = 16000, f0: float = 150.0, lead: float = 0.0, tail: float = 0.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    voiced = sum(0.3 / k * np.sin(2 * np.pi * k * f0 * t) for k in range(1, 5))
    return np.concatenate([np.zeros(int(lead * rate)), voiced, np.zeros(int(tail * rate))]).astype(np.float32)


def wav_bytes(pcm: np.ndarray, rate: int = 16000) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, pcm, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def leftover_temporaries(root: Path) -> list[Path]:
    return list(root.rglob("*.tmp"))


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def library(tmp_path, engine) -> VoiceLibrary:
    return make_library(tmp_path, engine)


async def test_create_list_get_conditionals_delete(library, engine, tmp_path):
    upload = wav_bytes(tone(2.0, lead=0.5, tail=0.7))
    record = await library.create("alice", upload, "alice.wav")
    assert (record.id, record.name, len(record.hash)) == ("alice", "alice", 64)
    assert record.duration == pytest.approx(2.0, abs=0.05)  # silence trimmed on both ends
    assert [r.id for r in library.list()] == ["default", "alice"]
    assert library.get("alice") == record
    conditionals = await library.conditionals("alice")
    assert conditionals == {"rate": SAMPLE_RATE, "samples": engine.embedded[0].size, "sum": conditionals["sum"]}
    assert engine.embedded[0].size == pytest.approx(2.0 * SAMPLE_RATE, abs=0.05 * SAMPLE_RATE)

    library.delete("alice")
    with pytest.raises(VoiceError) as missing:
        library.get("alice")
    assert (missing.value.code, missing.value.status) == ("unknown_voice", 404)
    assert [r.id for r in library.list()] == ["default"]
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # record, audio and conditionals removed


async def test_default_voice_always_exists(library):
    assert await library.conditionals("default") is DEFAULT_CONDITIONALS
    assert library.get("default").builtin
    with pytest.raises(VoiceError) as taken:
        await library.create("default", wav_bytes(tone(2.0)), None)
    assert (taken.value.code, taken.value.status) == ("voice_exists", 409)
    with pytest.raises(VoiceError) as builtin:
        library.delete("default")
    assert builtin.value.status == 400


async def test_existing_name_is_refused(library):
    await library.create("bob", wav_bytes(tone(2.0)), None)
    with pytest.raises(VoiceError) as taken:
        await library.create("bob", wav_bytes(tone(3.0)), None)
    assert (taken.value.code, taken.value.status) == ("voice_exists", 409)


async def test_voices_survive_a_restart(tmp_path, engine):
    first = make_library(tmp_path, engine)
    record = await first.create("carol", wav_bytes(tone(2.5)), None)
    expected = await first.conditionals("carol")

    restarted_engine = FakeEngine()
    restarted = make_library(tmp_path, restarted_engine)
    assert [r.id for r in restarted.list()] == ["default", "carol"]
    assert restarted.get("carol") == record
    assert await restarted.conditionals("carol") == expected
    assert await restarted.conditionals("carol") == expected
    assert (restarted_engine.embeds, restarted_engine.loads) == (0, 1)  # read from disk once, then memory


async def test_same_audio_twice_embeds_once(library, engine):
    upload = wav_bytes(tone(2.0))
    first = await library.create("one", upload, None)
    second = await library.create("two", upload, None)
    assert first.hash == second.hash
    assert await library.conditionals("one") == await library.conditionals("two")
    assert (engine.embeds, engine.saves, engine.loads) == (1, 1, 0)


async def test_deleting_one_of_two_voices_sharing_audio_keeps_the_other(library, tmp_path):
    upload = wav_bytes(tone(2.0))
    await library.create("one", upload, None)
    await library.create("two", upload, None)
    library.delete("one")
    restarted_engine = FakeEngine()
    restarted = make_library(tmp_path, restarted_engine)
    assert await restarted.conditionals("two") == await library.conditionals("two")
    assert (restarted_engine.loads, restarted_engine.embeds) == (1, 0)


async def test_another_engine_computes_its_own_conditionals_from_the_stored_reference(tmp_path, engine):
    await make_library(tmp_path, engine).create("dave", wav_bytes(tone(2.0)), None)
    other_engine = FakeEngine()
    other = make_library(tmp_path, other_engine, engine_key="other-engine")
    await other.conditionals("dave")
    assert other_engine.embeds == 1
    np.testing.assert_array_equal(other_engine.embedded[0], engine.embedded[0])
    assert (tmp_path / "other-engine").is_dir() and (tmp_path / "fake").is_dir()


async def test_reference_is_resampled_and_capped_at_ten_seconds(library, engine):
    record = await library.create("long", wav_bytes(tone(25.0, rate=44100), rate=44100), None)
    assert record.duration == REFERENCE_SECONDS
    assert engine.embedded[0].size == REFERENCE_SECONDS * SAMPLE_RATE


async def test_memory_cache_is_bounded(tmp_path, engine):
    library = make_library(tmp_path, engine, memory_cache_size=1)
    await library.create("a", wav_bytes(tone(2.0, f0=120.0)), None)
    await library.create("b", wav_bytes(tone(2.0, f0=240.0)), None)
    await library.conditionals("a")  # evicted by b's creation: read back from disk
    await library.conditionals("a")
    assert engine.loads == 1


async def test_unreadable_cached_conditionals_are_recomputed(tmp_path, engine):
    record = await make_library(tmp_path, engine).create("eve", wav_bytes(tone(2.0)), None)
    (tmp_path / "fake" / f"{record.hash}.cond").write_text("not json")
    restarted_engine = FakeEngine()
    assert (await make_library(tmp_path, restarted_engine).conditionals("eve"))["rate"] == SAMPLE_RATE
    assert restarted_engine.embeds == 1


@pytest.mark.parametrize("name", ["../x", "a/b", "", "x" * 65, "Upper", "-lead", "_lead", ".hidden", "a b",
                                  "a\x00b", "voice.json", "é"])
async def test_bad_names_are_refused(library, engine, name):
    with pytest.raises(VoiceError) as refused:
        await library.create(name, wav_bytes(tone(2.0)), None)
    assert (refused.value.code, refused.value.status) == ("invalid_voice_name", 400)
    assert "a-z" in refused.value.message
    with pytest.raises(VoiceError) as lookup:
        library.get(name)
    assert lookup.value.code == "invalid_voice_name"
    assert engine.embeds == 0


async def test_longest_valid_name_is_accepted(library):
    assert (await library.create("a" * 64, wav_bytes(tone(2.0)), None)).id == "a" * 64


@pytest.mark.parametrize("upload, status, message", [
    (b"this is not audio at all" * 10, 415, ""),  # "" : the decoder's own wording
    (b"", 400, "empty"),
    (wav_bytes(np.zeros(32000, np.float32)), 422, "silent"),
    (wav_bytes(tone(3.0) * 1e-4), 422, "silent"),  # below -50 dBFS
    (wav_bytes(tone(0.5, lead=1.0, tail=1.0)), 422, "at least 1 s"),
    (wav_bytes(tone(MAX_UPLOAD_SECONDS + 1, rate=8000), rate=8000), 415, "60"),
    (wav_bytes(tone(2.0, rate=4000, f0=150.0), rate=4000), 422, "8000 Hz"),
])
async def test_bad_uploads_are_refused(library, engine, tmp_path, upload, status, message):
    with pytest.raises(VoiceError) as refused:
        await library.create("voice", upload, None)
    assert (refused.value.code, refused.value.status) == ("bad_audio", status)
    assert refused.value.message and message in refused.value.message
    assert engine.embeds == 0 and [r.id for r in library.list()] == ["default"]


async def test_too_large_upload_is_refused_before_decoding(tmp_path, engine):
    library = make_library(tmp_path, engine, max_upload_bytes=1000)
    with pytest.raises(VoiceError) as refused:
        await library.create("big", wav_bytes(tone(2.0)), None)
    assert (refused.value.code, refused.value.status) == ("upload_too_large", 413)


async def test_recording_the_engine_cannot_use_is_refused(tmp_path):
    engine = FakeEngine(fail_embed=True)
    library = make_library(tmp_path, engine)
    with pytest.raises(VoiceError) as refused:
        await library.create("noise", wav_bytes(tone(2.0)), None)
    assert (refused.value.code, refused.value.status) == ("bad_audio", 422)
    assert [r.id for r in library.list()] == ["default"]


async def test_failed_save_leaves_no_partial_files(tmp_path):
    library = make_library(tmp_path, FakeEngine(fail_save=True))
    with pytest.raises(OSError):
        await library.create("frank", wav_bytes(tone(2.0)), None)
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]
    assert [r.id for r in make_library(tmp_path, FakeEngine()).list()] == ["default"]


async def test_no_temporary_files_are_left_behind(library, tmp_path):
    await library.create("grace", wav_bytes(tone(2.0)), None)
    assert not leftover_temporaries(tmp_path)


async def test_real_espeak_voices_through_the_engine_worker(tmp_path):
    engine = EspeakEngine()
    worker = EngineWorker(engine)
    worker.start()
    try:
        def open_library() -> VoiceLibrary:
            return VoiceLibrary(tmp_path, "espeak", 5 * 1024 * 1024,
                                embed=lambda wav, rate: worker.call(engine.embed_voice, wav, rate),
                                save=engine.save_voice, load=engine.load_voice, default_voice=engine.default_voice())

        library = open_library()
        await library.create("low", wav_bytes(tone(2.0, f0=110.0, lead=0.3)), "low.wav")
        await library.create("high", wav_bytes(tone(2.0, f0=220.0, tail=0.3)), "high.wav")
        low, high = await library.conditionals("low"), await library.conditionals("high")
        assert isinstance(low, EspeakVoice) and (low.variant, high.variant) == ("m3", "f2")
        assert await open_library().conditionals("high") == high  # loaded from the saved JSON
        assert await library.conditionals("default") == EspeakVoice()
    finally:
        await worker.stop()
