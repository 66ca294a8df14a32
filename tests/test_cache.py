import threading

import pytest

from app.cache import ResponseCache, cache_key, is_cacheable
from app.engine.types import GenerationSettings

SEEDED = GenerationSettings(seed=42)


def _key(text: str, **overrides) -> tuple:
    args = dict(text=text, voice_id="default", voice_hash="abc", settings=SEEDED, output_format="mp3",
                sample_rate=24000)
    return cache_key(**(args | overrides))


def test_only_seeded_requests_are_cacheable():
    assert is_cacheable(SEEDED)
    assert not is_cacheable(GenerationSettings())


@pytest.mark.parametrize("change", [
    {"text": "Hello there"},
    {"voice_id": "other"},
    {"voice_hash": "def"},  # same voice id, re-uploaded with different audio
    {"settings": GenerationSettings(seed=43)},
    {"settings": GenerationSettings(seed=42, temperature=0.7)},
    {"output_format": "wav"},
    {"sample_rate": 48000},
    {"extra": ("chunk_size", 80)},
])
def test_key_changes_with_everything_that_shapes_the_audio(change):
    base = _key("Hello there.")
    assert _key("Hello there.") == base
    assert _key(**({"text": "Hello there."} | change)) != base


def test_hits_misses_and_counters():
    cache = ResponseCache(100)
    assert cache.get(_key("a")) is None
    cache.put(_key("a"), b"x" * 10)
    assert cache.get(_key("a")) == b"x" * 10
    assert (cache.hits, cache.misses, cache.bytes_used, cache.entries) == (1, 1, 10, 1)


def test_evicts_least_recently_used_by_bytes():
    cache = ResponseCache(100)
    cache.put(_key("a"), b"a" * 40)
    cache.put(_key("b"), b"b" * 40)
    cache.get(_key("a"))  # "b" is now the least recently used
    cache.put(_key("c"), b"c" * 30)  # 110 bytes would exceed the budget: "b" goes
    assert cache.get(_key("b")) is None
    assert cache.get(_key("a")) == b"a" * 40 and cache.get(_key("c")) == b"c" * 30
    assert (cache.bytes_used, cache.entries) == (70, 2)

    cache.put(_key("d"), b"d" * 100)  # needs the whole budget: everything else goes
    assert (cache.bytes_used, cache.entries) == (100, 1)
    assert cache.get(_key("d")) == b"d" * 100


def test_replacing_a_value_updates_the_byte_count():
    cache = ResponseCache(100)
    cache.put(_key("a"), b"1" * 60)
    cache.put(_key("a"), b"2" * 30)
    assert (cache.bytes_used, cache.entries) == (30, 1)
    assert cache.get(_key("a")) == b"2" * 30


def test_values_over_the_budget_are_not_stored_and_do_not_evict():
    cache = ResponseCache(100)
    cache.put(_key("a"), b"a" * 50)
    cache.put(_key("big"), b"x" * 101)
    assert cache.get(_key("big")) is None
    assert (cache.bytes_used, cache.entries) == (50, 1)

    cache.put(_key("a"), b"y" * 101)  # an oversized replacement drops the stale value
    assert cache.get(_key("a")) is None
    assert (cache.bytes_used, cache.entries) == (0, 0)


def test_zero_budget_disables():
    cache = ResponseCache(0)
    assert not cache.enabled
    cache.put(_key("a"), b"")
    cache.put(_key("b"), b"b")
    assert cache.get(_key("a")) is None and cache.get(_key("b")) is None
    assert (cache.entries, cache.bytes_used, cache.misses) == (0, 0, 2)
    with pytest.raises(ValueError):
        ResponseCache(-1)


def test_concurrent_use_keeps_the_books_consistent():
    cache = ResponseCache(10_000)
    values = {i: bytes([i]) * (50 + i) for i in range(60)}

    def worker(offset: int) -> None:
        for round_ in range(300):
            i = (offset + round_) % 60
            if cache.get(_key(str(i))) is None:
                cache.put(_key(str(i)), values[i])

    threads = [threading.Thread(target=worker, args=(n * 7,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stored = [i for i in values if cache.get(_key(str(i))) is not None]
    assert cache.bytes_used == sum(len(values[i]) for i in stored) <= 10_000
    assert cache.entries == len(stored)
    assert cache.hits + cache.misses == 6 * 300 + 60
