"""Streamed vs whole-utterance S3Gen decodes: the measurements benchmarks and tests use (not served code)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from app.engine.chatterbox.s3gen_stream import S3GenStream, S3GenStreamer


@dataclass(frozen=True)
class StreamingQuality:
    """Streamed decode vs whole-utterance decode of the same tokens with the same noise."""

    snr_db: float  # whole-decode energy over the energy of the difference
    edge_jump: float  # largest sample-to-sample jump at chunk edges
    inside_jump: float  # largest jump anywhere else
    samples_streamed: int
    samples_whole: int
    chunks: int
    streamed_seconds: float  # wall time of the streamed decode
    whole_seconds: float

    @property
    def edge_jump_ratio(self) -> float:
        return self.edge_jump / max(self.inside_jump, 1e-12)

    @classmethod
    def compare(cls, parts: list[np.ndarray], whole: np.ndarray, streamed_seconds: float = 0.0,
                whole_seconds: float = 0.0) -> StreamingQuality:
        """Quality of the streamed chunks `parts` against the whole-utterance decode `whole`."""
        streamed = np.concatenate(parts)
        jumps = np.abs(np.diff(streamed))
        at_edge = np.zeros(len(jumps), dtype=bool)
        for edge in np.cumsum([len(p) for p in parts[:-1]]):
            at_edge[max(0, edge - 2):edge + 1] = True
        return cls(snr_db(whole, streamed), float(jumps[at_edge].max(initial=0.0)), float(jumps[~at_edge].max()),
                   len(streamed), len(whole), len(parts), streamed_seconds, whole_seconds)


def stream_chunks(streamer: S3GenStreamer, stream: S3GenStream, tokens: torch.Tensor, first: int,
                  chunk: int) -> list[np.ndarray]:
    """Decode `tokens` as a stream would arrive: the first `first` (+ lookahead) tokens, then `chunk` at a time."""
    parts, count = [], first + streamer.lookahead
    while count < len(tokens):
        parts.append(streamer.decode(stream, tokens[:count], finalize=False))
        count += chunk
    parts.append(streamer.decode(stream, tokens, finalize=True))
    return parts


def snr_db(reference: np.ndarray, other: np.ndarray) -> float:
    n = min(len(reference), len(other))
    error = other[:n] - reference[:n]
    return float(10 * np.log10(np.sum(reference[:n] ** 2) / max(float(np.sum(error ** 2)), 1e-20)))


def streaming_quality(streamer: S3GenStreamer, ref: dict, tokens: torch.Tensor, first: int, chunk: int,
                      seed: int = 0) -> StreamingQuality:
    """Decode `tokens` as a stream (first `first` tokens, then `chunk` at a time) and whole; compare."""
    started = time.perf_counter()
    parts = stream_chunks(streamer, streamer.open(ref, seed=seed), tokens, first, chunk)
    streamed_seconds = time.perf_counter() - started
    started = time.perf_counter()
    whole = streamer.decode_whole(streamer.open(ref, seed=seed), tokens)
    return StreamingQuality.compare(parts, whole, streamed_seconds, time.perf_counter() - started)
