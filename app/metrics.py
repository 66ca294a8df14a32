"""Prometheus metrics of one app instance.

Each app owns its own `CollectorRegistry` (not the process-global one) so several apps can live in one process
(tests) without clashing. Units are base units (seconds); counters end in `_total`; no per-connection labels,
so cardinality stays fixed however many clients connect.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

_TTFA_BUCKETS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
_RTF_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.ttfa = Histogram("chatterbox_ttfa_seconds",
                              "Time from a context's first text to its first audio byte handed to the socket.",
                              ["model"], buckets=_TTFA_BUCKETS, registry=r)
        self.rtf = Histogram("chatterbox_rtf", "Per text chunk: synthesis wall time / audio duration.", ["model"],
                             buckets=_RTF_BUCKETS, registry=r)
        self.active_streams = Gauge("chatterbox_active_streams", "Contexts currently open (speaking or waiting).",
                                    registry=r)
        self.active_connections = Gauge("chatterbox_active_connections", "Open /v1/stream connections.",
                                        registry=r)
        self.queue_depth = Gauge("chatterbox_queue_depth", "Requests held by the engine worker, not yet finished.",
                                 registry=r)
        self.batch_size = Histogram("chatterbox_batch_size", "Requests that produced output in one engine step.",
                                    buckets=_BATCH_BUCKETS, registry=r)
        self.speech_tokens = Counter("chatterbox_speech_tokens", "Speech tokens generated.", ["model"], registry=r)
        self.chunks = Counter("chatterbox_chunks", "Text chunks synthesized.", ["model"], registry=r)
        self.cache_hits = Counter("chatterbox_cache_hits", "Response-cache hits.", registry=r)
        self.cache_misses = Counter("chatterbox_cache_misses", "Response-cache misses.", registry=r)
        self.compile_seconds = Gauge("chatterbox_compile_seconds", "Seconds spent compiling at warm-up.",
                                     registry=r)
        self.errors = Counter("chatterbox_errors", "Errors reported to clients, by code.", ["code"], registry=r)
        self.underruns = Counter("chatterbox_underruns",
                                 "Times a listener's playback buffer would have run dry while text was waiting.",
                                 registry=r)

    def on_step(self, batch_size: int, seconds: float) -> None:
        """The engine worker's per-step callback (runs on the worker thread; prometheus_client is thread-safe)."""
        if batch_size:
            self.batch_size.observe(batch_size)

    def track_queue_depth(self, depth: Callable[[], float]) -> None:
        """Read the depth at scrape time, so the gauge is exact even while the worker sleeps."""
        self.queue_depth.set_function(depth)

    def render(self) -> bytes:
        return generate_latest(self.registry)
