"""ChunkPipeline against a real EngineWorker (the paced tone engine): requests, order, markers, failures,
cancellation and the per-chunk metrics that /v1/stream and the HTTP APIs share."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import AsyncIterator

import pytest

from app.engine.types import SAMPLE_RATE, EngineError, EngineRequest, GenerationSettings
from app.engine.worker import EngineWorker
from app.metrics import Metrics
from app.server.core.pipeline import SPEECH_CHARS_PER_SECOND, AudioPiece, ChunkDone, ChunkPipeline, Event, Marker
from app.text.chunker import TextChunk
from fake_engines import ToneEngine

SECONDS_PER_CHAR = 0.02
LONG = "A long first chunk that takes a while to synthesize."
SHORT = "Short one."


def chunk(index: int, text: str) -> TextChunk:
    return TextChunk(index, text, text, ends_sentence=True, reason="boundary")


@pytest.fixture
async def worker() -> AsyncIterator[EngineWorker]:
    engine = ToneEngine(seconds_per_char=SECONDS_PER_CHAR, step_s=0.05, step_sleep_s=0.005)
    worker = EngineWorker(engine)
    worker.start()
    yield worker
    await worker.stop()


def make_pipeline(worker: EngineWorker, metrics: Metrics, submitted: list[EngineRequest]) -> ChunkPipeline:
    def recording_submit(request: EngineRequest):
        submitted.append(request)
        return EngineWorker.submit(worker, request)

    worker.submit = recording_submit  # type: ignore[method-assign]
    services = SimpleNamespace(worker=worker, metrics=metrics, sample_rate=SAMPLE_RATE)
    return ChunkPipeline(services, "reply", voice="tone", settings=GenerationSettings(seed=3), priority=7)


def ended_reply(worker: EngineWorker, metrics: Metrics, *texts: str) -> ChunkPipeline:
    """A pipeline with `texts` released as chunks 0, 1, ... and then ended."""
    pipeline = make_pipeline(worker, metrics, [])
    now = time.monotonic()
    for index, text in enumerate(texts):
        pipeline.release(chunk(index, text), now)
    pipeline.mark(Marker.END)
    return pipeline


async def collect(events: AsyncIterator[Event]) -> list[Event]:
    return [event async for event in events]


def metric(metrics: Metrics, name: str) -> float:
    """A sample summed over its label sets (the per-chunk metrics carry a `model` label)."""
    return sum(sample.value for family in metrics.registry.collect() for sample in family.samples
               if sample.name == name)


async def test_chunks_synthesize_concurrently_and_come_back_in_order_with_markers(worker):
    metrics, submitted = Metrics(), []
    pipeline = make_pipeline(worker, metrics, submitted)
    now = time.monotonic()
    first = pipeline.release(chunk(0, LONG), now, buffered_s=1.5)
    pipeline.mark(Marker.FLUSH)
    second = pipeline.release(chunk(1, SHORT), now)
    blank = pipeline.release(chunk(2, ""), now)  # nothing to speak: no request
    pipeline.mark(Marker.END)
    events = await asyncio.wait_for(collect(pipeline.ordered()), 20)

    names = {first: "long", second: "short", blank: "blank"}
    labels = [event.value if isinstance(event, Marker)
              else f"{'audio' if isinstance(event, AudioPiece) else 'done'}:{names[event.job]}" for event in events]
    runs = [label for i, label in enumerate(labels) if i == 0 or label != labels[i - 1]]
    assert runs == ["audio:long", "done:long", "flush", "audio:short", "done:short", "done:blank", "end"]
    # The short chunk finished long before the long one it waited behind.
    assert second.times.last_synthesized < first.times.last_synthesized
    for job, text in ((first, LONG), (second, SHORT)):
        samples = sum(e.pcm.size for e in events if isinstance(e, AudioPiece) and e.job is job)
        assert samples == round(len(text) * SECONDS_PER_CHAR * SAMPLE_RATE)
        assert job.emitted_s == pytest.approx(samples / SAMPLE_RATE)
    assert [e.ends_chunk for e in events if isinstance(e, AudioPiece) and e.job is second][-1]
    assert pipeline.pending == []

    assert [r.request_id for r in submitted] == ["reply-0", "reply-1"]
    assert [r.first_in_context for r in submitted] == [True, False]
    assert all((r.voice, r.priority, r.settings.seed) == ("tone", 7, 3) for r in submitted)
    # A chunk is needed once the listener's buffer and the earlier chunks' estimated audio have played.
    assert submitted[0].deadline == pytest.approx(now + 1.5)
    assert submitted[1].deadline == pytest.approx(now + len(LONG) / SPEECH_CHARS_PER_SECOND)

    assert metric(metrics, "chatterbox_speech_tokens_total") == first.speech_tokens + second.speech_tokens > 0
    assert metric(metrics, "chatterbox_rtf_count") == 2  # the blank chunk has no audio to measure
    expected_rtf = sum(job.times.synthesis_s / job.emitted_s for job in (first, second))
    assert metric(metrics, "chatterbox_rtf_sum") == pytest.approx(expected_rtf)


async def test_a_failed_chunk_raises_its_engine_error_after_the_audio_before_it(worker):
    metrics = Metrics()
    pipeline = ended_reply(worker, metrics, SHORT, "This one will FAIL.")
    events = []
    with pytest.raises(EngineError, match="injected failure"):
        async for event in pipeline.ordered():
            events.append(event)
    assert isinstance(events[-1], ChunkDone) and events[-1].job.chunk.text == SHORT
    assert metric(metrics, "chatterbox_rtf_count") == 1


async def test_cancel_frees_the_engine_and_ends_the_audio_without_a_chunk_done(worker):
    metrics = Metrics()
    pipeline = ended_reply(worker, metrics, LONG * 20, LONG * 20)  # 20 s of tone each: about 2 s of steps
    events = pipeline.ordered()
    assert isinstance(await anext(events), AudioPiece)
    assert worker.active_requests == 2
    pipeline.cancel()
    rest = await asyncio.wait_for(collect(events), 5)
    assert all(isinstance(event, AudioPiece) for event in rest)
    assert worker.active_requests == 0 and pipeline.pending == []
    assert metric(metrics, "chatterbox_rtf_count") == 0


class RecordingSink:
    """Names each event it is handed; yields text only for audio, so `deliver` skips the other results."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def on_audio(self, piece: AudioPiece) -> str:
        self.seen.append(f"audio {piece.job.chunk.index}")
        return f"audio {piece.job.chunk.index}"

    def on_chunk_done(self, job) -> None:
        self.seen.append(f"done {job.chunk.index}")

    def on_marker(self, marker: Marker) -> None:
        self.seen.append(marker.value)


async def test_deliver_hands_every_event_to_the_sink_in_order_and_yields_what_it_returns(worker):
    metrics = Metrics()
    pipeline = ended_reply(worker, metrics, "First chunk.", "Second one.")
    sink = RecordingSink()
    yielded = await asyncio.wait_for(collect(pipeline.deliver(sink)), 20)
    events = [event for event in sink.seen if not event.startswith("audio")]
    assert events == ["done 0", "done 1", "end"]
    assert yielded == [event for event in sink.seen if event.startswith("audio")] and yielded
    assert sink.seen.index("done 0") < sink.seen.index("audio 1")  # chunk order, not arrival order
