"""Hostile text: every pattern on client text runs in linear time, and no chunk exceeds what the engine takes.

Linearity is judged by how the cost grows, never by an absolute time: 8x the input may cost about 8x (a
quadratic pattern costs about 64x); the best of a few runs damps a busy machine.
"""

from __future__ import annotations

import time

import pytest

from app.text.chunker import AdaptiveChunker, ChunkerConfig
from app.text.normalize import normalize_stream, prepare_for_engine

FRAGMENTS = ["](", ".", "*", "_", "[", "[1]", ", ", "a.", "1", "-", "--", "...", "?.", "a:", "](x", "!", "*a",
             "http://", "\u2026", "\u2014", "a\u2013", "((", "))", "'", '"']
SMALL, LARGE = 1_500, 12_000


def _best_seconds(work, text: str, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        work(text)
        best = min(best, time.perf_counter() - start)
    return max(best, 1e-5)


def _normalize_and_prepare(text: str) -> None:
    normalize_stream(text)
    prepare_for_engine(text, True)
    prepare_for_engine(text, False)


def _chunk(text: str) -> None:
    chunker = AdaptiveChunker(ChunkerConfig())
    chunker.push(text, 0.0)
    chunker.end()


@pytest.mark.parametrize("work", [_normalize_and_prepare, _chunk], ids=["normalize", "chunker"])
@pytest.mark.parametrize("fragment", FRAGMENTS)
def test_cost_grows_linearly_with_adversarial_input(work, fragment):
    small = _best_seconds(work, fragment * SMALL + "x")
    large = _best_seconds(work, fragment * LARGE + "x")
    assert large / small < 30, f"{fragment!r}: 8x the input cost {large / small:.1f}x (quadratic is ~64x)"


def test_the_negative_control_a_quadratic_pattern_fails_the_bound():
    import re
    quadratic = re.compile(r"\]\([^\s)]*\)")  # the markdown-link pattern as it was

    def work(text: str) -> None:
        quadratic.sub("", text)

    ratio = _best_seconds(work, "](" * LARGE) / _best_seconds(work, "](" * SMALL)
    assert ratio >= 30


@pytest.mark.parametrize("text", ["x" * 20_000, "a/" * 10_000, "Hello there. " + "y" * 5_000 + " and on.",
                                  "1" * 9_000, "https://example.com/" + "p" * 3_000, "ab" * 300])
@pytest.mark.parametrize("streamed", [False, True])
def test_no_chunk_exceeds_the_budget_even_without_word_boundaries(text, streamed):
    config = ChunkerConfig()
    chunker = AdaptiveChunker(config)
    chunks = []
    if streamed:
        for i in range(0, len(text), 7):
            chunks += chunker.push(text[i:i + 7], i / 1000)
    else:
        chunks += chunker.push(text, 0.0)
    chunks += chunker.end()
    assert "".join(chunk.text for chunk in chunks) == normalize_stream(text)
    assert max(len(chunk.text.strip()) for chunk in chunks) <= config.max_chars + config.max_word_chars


def test_an_overlong_word_is_cut_after_punctuation_where_it_has_some():
    chunker = AdaptiveChunker(ChunkerConfig())
    chunks = chunker.push("see " + "segment/" * 200 + " ok", 0.0) + chunker.end()
    inner = [chunk.text.strip() for chunk in chunks[:-1]]
    assert all(text.endswith("/") for text in inner if "segment" in text)
