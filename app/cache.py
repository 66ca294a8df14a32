"""A byte-bounded LRU cache of finished synthesis results (encoded audio files).

Only requests whose audio is a pure function of their inputs may be cached, i.e. those with a seed; the key
names everything that shapes the audio: the text as synthesized, the voice and its content, the generation
settings, the output format, and any server-side options the caller adds.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable

from app.engine.types import GenerationSettings

CacheKey = tuple


def is_cacheable(settings: GenerationSettings) -> bool:
    """Without a seed, sampling differs on every request, so a cached answer would be wrong to replay."""
    return settings.seed is not None


def cache_key(text: str, voice_id: str, voice_hash: str, settings: GenerationSettings, output_format: str,
              sample_rate: int, extra: Hashable = ()) -> CacheKey:
    """The key for one response. `text` must be exactly what is synthesized (after the server's text
    normalization); `voice_hash` is a hash of the voice's content, so re-uploading a voice under the same id
    misses; `extra` holds anything else that changes the audio (e.g. chunk size, engine options)."""
    return (text, voice_id, voice_hash, settings.cache_key(), output_format, sample_rate, extra)


class ResponseCache:
    """Least-recently-used eviction by total value bytes; safe to use from several threads.

    A value larger than the whole budget is not stored; `max_bytes=0` disables the cache (every `get` is a
    miss). Sizes count the value bytes only, not keys.
    """

    def __init__(self, max_bytes: int):
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[CacheKey, bytes] = OrderedDict()
        self._bytes_used = 0
        self._hits = 0
        self._misses = 0
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    @property
    def hits(self) -> int:
        return self._hits

    @property
    def misses(self) -> int:
        return self._misses

    @property
    def bytes_used(self) -> int:
        return self._bytes_used

    @property
    def entries(self) -> int:
        return len(self._entries)

    def get(self, key: CacheKey) -> bytes | None:
        with self._lock:
            value = self._entries.get(key)
            if value is None:
                self._misses += 1
                return None
            self._entries.move_to_end(key)
            self._hits += 1
            return value

    def put(self, key: CacheKey, value: bytes) -> None:
        with self._lock:
            self._discard(key)  # a replaced value must not linger, even when the new one is not stored
            if not self.enabled or len(value) > self.max_bytes:
                return
            while self._bytes_used + len(value) > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes_used -= len(evicted)
            self._entries[key] = value
            self._bytes_used += len(value)

    def _discard(self, key: CacheKey) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes_used -= len(old)
