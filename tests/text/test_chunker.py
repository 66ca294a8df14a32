"""AdaptiveChunker: exact rejoin, safe cut points, first-chunk size, deadlines and the audio-buffer bands."""

from __future__ import annotations

import itertools
import math
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.text.chunker import AdaptiveChunker, ChunkerConfig, TextChunk
from app.text.normalize import normalize_stream, prepare_for_engine

FAST = settings(max_examples=200, deadline=None)

# Every confirmed boundary releases at once: shows exactly where the chunker is willing to cut.
EAGER = ChunkerConfig(first_chunk_min_chars=1, min_chunk_chars=1)

PARAGRAPH = (
    "Sure! Here's a quick overview of how photosynthesis works. Plants capture sunlight using chlorophyll, "
    "a green pigment found in their leaves. The energy splits water molecules, releasing oxygen as a "
    "by-product\u2014which is why forests matter. Dr. Smith, who studies this at the U.S. Department of "
    "Agriculture, says a test costs about $29.99 per sample (e.g. with a leaf clip).\n\n"
    "**Key steps:**\n1. Light absorption\n2. Water splitting\n3. Sugar production \U0001F331"
)


def llm_tokens(text: str) -> list[str]:
    """Pieces shaped like an LLM's stream: a leading space and up to four characters."""
    return re.findall(r"\s*\S{1,4}|\s+", text)


def stream(pieces: list[str], config: ChunkerConfig = EAGER, buffered_s: float = 0.0,
           step_s: float = 0.0) -> list[TextChunk]:
    chunker = AdaptiveChunker(config)
    chunks: list[TextChunk] = []
    for i, piece in enumerate(pieces):
        chunks += chunker.push(piece, now=i * step_s, buffered_audio_s=buffered_s)
    return chunks + chunker.end()


def texts(chunks: list[TextChunk]) -> list[str]:
    return [chunk.text for chunk in chunks]


def split_at(text: str, cuts: list[int]) -> list[str]:
    bounds = [0, *sorted(c % (len(text) + 1) for c in cuts), len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:])]


def assert_well_formed(chunks: list[TextChunk], whole: str) -> None:
    assert "".join(texts(chunks)) == normalize_stream(whole)
    assert_sources_rejoin(chunks, whole)
    assert [chunk.index for chunk in chunks] == list(range(len(chunks)))
    for chunk in chunks[:-1]:
        assert chunk.text.strip()
    for chunk in chunks:
        assert chunk.speak_text == prepare_for_engine(chunk.text, chunk.ends_sentence)


def assert_sources_rejoin(chunks: list[TextChunk], whole: str) -> None:
    """The caller's text, character for character. A last chunk without text carries what the caller wrote
    after the last word was released (by a flush): whitespace, markup."""
    assert "".join(chunk.source for chunk in chunks) == whole
    if chunks and not chunks[-1].text:
        assert chunks[-1].source and not chunks[-1].speak_text


FRAGMENTS = [
    "Hello", "world", "Mr.", "Dr.", "e.g.", "i.e.", "U.S.", "etc.", "J.", "$29.99", "3.14", "1,000", "10:30",
    "a.b@c.org", "https://example.com/a.b?x=1.", "...", "\u2026", "-", "\u2014", ":", ";", ",", ".", "!", "?",
    "\u201cquoted\u201d", "**bold**", "# Title", "- item", "1.", "(see", "above)", '"', "\U0001F389",
    "\U0001F44D\U0001F3FD", "caf\u00e9", "\u6771\u4eac", "\n", "\n\n", "\r\n",
]
SEPARATORS = ["", " ", " ", " ", "\n", "\n\n"]
fragment_texts = st.lists(st.tuples(st.sampled_from(FRAGMENTS), st.sampled_from(SEPARATORS)), max_size=40).map(
    lambda parts: "".join(fragment + sep for fragment, sep in parts)
)
any_text = st.one_of(fragment_texts, st.text(max_size=120))
# The sentence hold flushes a word after a silence, and a flush inside a multi-character rule ("." then "..")
# is the one way the chunks' texts can differ from normalizing the whole text: these configs never hold.
configs = st.tuples(st.integers(25, 200), st.integers(1, 30), st.integers(0, 50), st.integers(1, 40)).map(
    lambda sizes: ChunkerConfig(chunk_size=sizes[0], first_chunk_min_chars=sizes[1],
                                first_chunk_max_chars=sizes[1] + sizes[2], min_chunk_chars=sizes[3],
                                sentence_hold_s=math.inf)
)
# Per piece: seconds since the previous one, the queued audio, and whether to poll before pushing.
events = st.lists(st.tuples(st.floats(0, 1.0), st.sampled_from([0.0, 0.5, 1.0, 2.5, 4.0, 6.0]), st.booleans()),
                  min_size=1, max_size=12)


def play(chunker: AdaptiveChunker, text: str, cuts: list[int], timeline: list[tuple[float, float, bool]]
         ) -> tuple[list[TextChunk], float]:
    """The text split at `cuts`, pushed on the timeline's clock (polling first where it says); the chunks and
    the clock at the end. Every deadline it reports lies ahead of the clock."""
    chunks: list[TextChunk] = []
    now = 0.0
    for piece, (dt, buffered, poll_first) in zip(split_at(text, cuts), itertools.cycle(timeline)):
        now += dt
        if poll_first:
            chunks += chunker.poll(now, buffered)
            deadline = chunker.next_deadline()
            assert deadline is None or deadline > now
        chunks += chunker.push(piece, now, buffered)
    return chunks, now


@FAST
@given(any_text, st.lists(st.integers(min_value=0), max_size=20), events, configs)
def test_chunks_rejoin_exactly_for_any_split_and_polls(text: str, cuts: list[int],
                                                       timeline: list[tuple[float, float, bool]],
                                                       config: ChunkerConfig) -> None:
    chunker = AdaptiveChunker(config)
    chunks, _ = play(chunker, text, cuts, timeline)
    assert_well_formed(chunks + chunker.end(), text)


@FAST
@given(any_text, st.lists(st.integers(min_value=0), max_size=20), events)
def test_sources_rejoin_to_the_callers_text_with_holds_and_polls(text: str, cuts: list[int],
                                                                 timeline: list[tuple[float, float, bool]]) -> None:
    chunker = AdaptiveChunker()
    chunks, now = play(chunker, text, cuts, timeline)
    chunks += chunker.poll(now + 5.0) + chunker.end()
    assert "".join(chunk.source for chunk in chunks) == text
    assert chunker.pending_chars == 0


word_like = st.one_of(
    st.from_regex(r"[A-Za-z]{1,9}", fullmatch=True),
    st.from_regex(r"\$?[0-9]{1,4}(\.[0-9]{1,3}|,[0-9]{3})?%?", fullmatch=True),
    st.sampled_from(["Mr.", "Mrs.", "Dr.", "e.g.", "i.e.", "U.S.", "etc.", "3.14", "$29.99", "a.b@c.org",
                     "example.com/a.b?x=1"]),
)
TITLES = ("Mr.", "Mrs.", "Dr.", "e.g.", "i.e.")


@FAST
@given(st.lists(st.tuples(word_like, st.sampled_from(["", "", ",", ".", "!", "?"])), min_size=1, max_size=60),
       st.lists(st.integers(min_value=0), max_size=30), st.floats(0, 8.0), configs)
def test_chunks_end_only_between_words(words: list[tuple[str, str]], cuts: list[int], buffered: float,
                                       config: ChunkerConfig) -> None:
    text = " ".join(word + mark for word, mark in words)
    pieces = split_at(text, cuts)
    chunks = stream(pieces, config, buffered, step_s=0.05)
    assert_well_formed(chunks, text)
    for chunk, after in zip(chunks, chunks[1:]):
        assert after.text.startswith(" ") and not chunk.text.endswith(" ")  # cut where the text had a space
        assert not chunk.text.endswith(TITLES)


@FAST
@given(fragment_texts, st.lists(st.integers(min_value=0), max_size=10))
def test_flush_between_words_keeps_the_rejoin_exact(text: str, cuts: list[int]) -> None:
    positions = sorted({c % (len(text) + 1) for c in cuts})
    chunker = AdaptiveChunker()
    chunks: list[TextChunk] = []
    start = 0
    for pos in positions:
        chunks += chunker.push(text[start:pos], now=0.0)
        if pos == len(text) or text[pos].isspace() or (pos and text[pos - 1].isspace()):
            chunks += chunker.flush()
        start = pos
    chunks += chunker.push(text[start:], now=0.0) + chunker.end()
    assert_well_formed(chunks, text)


@pytest.mark.parametrize("raw, expected", [
    ("It costs $29.99 today. Really.", ["It costs $29.99 today.", " Really."]),
    ("Pi is 3.14 exactly. Yes", ["Pi is 3.14 exactly.", " Yes"]),
    ("Mr. Smith and Mrs. Jones arrived. They sat.", ["Mr. Smith and Mrs. Jones arrived.", " They sat."]),
    ("Use e.g. this one or i.e. that", ["Use e.g. this one or i.e. that"]),
    ("The U.S. troops left. Then", ["The U.S. troops left.", " Then"]),
    ("J. K. Rowling wrote it. Yes", ["J. K. Rowling wrote it.", " Yes"]),
    ("I said no. Then No. 5 won. Ok", ["I said no.", " Then No. 5 won.", " Ok"]),
    ("Dr. Who came at 10:30 a.m. today. Ok", ["Dr. Who came at 10 30 a.m. today.", " Ok"]),
    ("visit https://example.com/a.b?x=1. Then go.", ["visit example.com/a.b?x=1.", " Then go."]),
    ("mail a.b@c.org now, please.", ["mail a.b@c.org now,", " please."]),
    ("Wait... what? Yes.", ["Wait,", " what?", " Yes."]),
    ("Wait \u2026 really", ["Wait,", " really"]),
    ('"Stop," she said. (See above.) Next', ['"Stop,"', " she said.", " (See above.)", " Next"]),
    ('He asked "why?" and left.', ['He asked "why?"', " and left."]),
    ("I waited\u2014then left.", ["I waited,", " then left."]),
    ("Steps:\n- Mix it\n- Bake it\n\nDone.", ["Steps,", " Mix it.", " Bake it.", " Done."]),
    ("## Title\nBody text", ["Title.", " Body text"]),
    ("1. First\n2. Second", ["1. First.", " 2. Second"]),
    ("Hello\nworld\n\nNew para", ["Hello.", " world.", " New para"]),
    ("Great job \U0001F389! Next \U0001F44D\U0001F3FD step.", ["Great job!", " Next step."]),
    ("Caf\u00e9 au lait, na\u00efve r\u00e9sum\u00e9. \u6771\u4eac rocks.",
     ["Caf\u00e9 au lait,", " na\u00efve r\u00e9sum\u00e9.", " \u6771\u4eac rocks."]),
])
def test_tricky_texts_cut_only_where_safe(raw: str, expected: list[str]) -> None:
    by_char = stream(list(raw))
    by_token = stream(llm_tokens(raw))
    assert texts(by_char) == texts(by_token) == expected
    assert_well_formed(by_char, raw)


def test_a_number_split_across_pieces_stays_whole() -> None:
    assert texts(stream(["It is $29", ".", "99 now", ". Pi is 3", ".", "14."])) == ["It is $29.99 now.",
                                                                                 " Pi is 3.14."]


def test_first_chunk_is_released_at_the_first_clause_past_the_minimum() -> None:
    chunker = AdaptiveChunker()
    released = [chunker.push(piece, now=0.0) for piece in llm_tokens("Well, you know, the weather is nice.")]
    first = next(chunks for chunks in released if chunks)
    assert texts(first) == ["Well, you know,"]
    assert (first[0].reason, first[0].ends_sentence, first[0].speak_text) == ("boundary", False, "Well, you know,")
    assert released.index(first) == len(llm_tokens("Well, you know, t")) - 1  # as soon as "t" arrived


def test_first_chunk_of_a_long_sentence_is_a_few_words() -> None:
    chunks = stream(llm_tokens(PARAGRAPH), ChunkerConfig(), step_s=0.02)
    first = chunks[0]
    assert 12 <= len(first.text) <= 40 and first.reason == "max_length" and not first.ends_sentence
    assert first.text == "Sure! Here's a quick overview"  # not cut after "of" or "how"
    assert first.speak_text == "Sure! Here's a quick overview,"


def test_deadline_releases_at_a_word_boundary() -> None:
    chunker = AdaptiveChunker()
    for i, piece in enumerate(llm_tokens("Hello there my dear old friend Sam of mi")):
        assert chunker.push(piece, now=0.1 + i * 0.01) == []
    assert chunker.next_deadline() == pytest.approx(0.7)
    assert chunker.poll(0.65) == []
    chunks = chunker.poll(0.71)
    assert texts(chunks) == ["Hello there my dear old friend Sam"]  # not after "of", and "mi" may still grow
    assert chunks[0].reason == "deadline" and not chunks[0].ends_sentence
    assert chunks[0].speak_text == "Hello there my dear old friend Sam,"
    assert chunks[0].first_text_at == pytest.approx(0.1)


def test_deadline_never_cuts_a_short_thought() -> None:
    chunker = AdaptiveChunker()
    for i, piece in enumerate(llm_tokens("Hello dear friend of mi")):
        assert chunker.push(piece, now=0.1 + i * 0.01) == []
    assert chunker.poll(5.0) == []  # "Hello dear friend" is shorter than deadline_min_chars
    control = AdaptiveChunker(ChunkerConfig(deadline_min_chars=0))
    for i, piece in enumerate(llm_tokens("Hello dear friend of mi")):
        control.push(piece, now=0.1 + i * 0.01)
    assert texts(control.poll(5.0)) == ["Hello dear friend"]


def test_deadline_waits_for_the_next_word_to_start() -> None:
    chunker = AdaptiveChunker()
    assert chunker.push("Hello there my dear old friend Samuel", now=0.0) == []
    assert chunker.poll(1.0) == [] and chunker.next_deadline() is None
    assert texts(chunker.push(" w", now=1.1)) == ["Hello there my dear old friend Samuel"]


def test_later_chunks_grow_with_the_audio_buffer() -> None:
    low = stream(llm_tokens(PARAGRAPH), ChunkerConfig(), buffered_s=0.0)
    normal = stream(llm_tokens(PARAGRAPH), ChunkerConfig(), buffered_s=2.0)
    healthy = stream(llm_tokens(PARAGRAPH), ChunkerConfig(), buffered_s=10.0)
    assert len(low) > len(normal) > len(healthy)
    assert any(not chunk.ends_sentence for chunk in low[1:-1])  # clause cuts when the buffer is low
    assert all(chunk.ends_sentence for chunk in normal[1:])  # sentence by sentence in between
    assert all(len(chunk.text) <= ChunkerConfig().max_chars for chunk in healthy)
    assert max(len(chunk.text) for chunk in healthy) > 150  # packed up to the budget


def test_draining_buffer_schedules_a_poll_that_releases_sentences() -> None:
    chunker = AdaptiveChunker()
    assert texts(chunker.push("First, a clause to get going. T", now=0.0)) == ["First, a clause to get going."]
    assert chunker.push("hen one sentence. And another one. More", now=10.0, buffered_audio_s=6.0) == []
    assert chunker.next_deadline() == pytest.approx(12.0)  # when 6 s of audio drain to the 4 s band
    released = chunker.poll(12.0, buffered_audio_s=3.9)
    assert texts(released) == [" Then one sentence. And another one."] and released[0].ends_sentence
    assert released[0].reason == "boundary"


def test_long_runs_without_punctuation_are_cut_at_words_within_the_budget() -> None:
    config = ChunkerConfig(chunk_size=25)
    text = " ".join(f"word{i}" for i in range(120))
    chunks = stream(llm_tokens(text), config, buffered_s=10.0)
    assert_well_formed(chunks, text)
    assert all(len(c.text) <= config.max_chars for c in chunks)
    assert {c.reason for c in chunks[:-1]} == {"max_length"}


def test_a_word_longer_than_the_budget_is_never_split() -> None:
    url = "https://example.com/" + "a" * 300
    chunks = stream(llm_tokens(f"See {url} for more. Thanks a lot for reading."), ChunkerConfig(chunk_size=25))
    assert any(url[len("https://"):] in chunk.text for chunk in chunks)


def test_flush_speaks_everything_now_and_keeps_going() -> None:
    chunker = AdaptiveChunker()
    assert chunker.push("Let me che", now=0.0) == []
    flushed = chunker.flush()
    assert texts(flushed) == ["Let me che"] and flushed[0].reason == "flush"
    assert flushed[0].speak_text == "Let me che." and chunker.pending_chars == 0
    assert texts(chunker.push("ck the weather", now=1.0) + chunker.end()) == ["ck the weather"]


def test_flush_holds_text_with_nothing_to_say() -> None:
    chunker = AdaptiveChunker()
    chunker.push("Done.", now=0.0)
    assert texts(chunker.flush()) == ["Done."]
    chunker.push(" )", now=0.1)
    assert chunker.flush() == [] and chunker.pending_chars == len(" )")
    assert texts(chunker.push(" Next one", now=0.2) + chunker.end()) == [" ) Next one"]


def test_end_closes_the_last_sentence_and_resets() -> None:
    chunker = AdaptiveChunker()
    chunker.push("No punctuation at the end", now=0.0)
    (last,) = chunker.end()
    assert (last.reason, last.ends_sentence, last.speak_text) == ("end", True, "No punctuation at the end.")
    assert chunker.end() == [] and chunker.next_deadline() is None
    (again,) = chunker.push("Next reply, short", now=5.0) + chunker.end()
    assert again.index == last.index + 1 and again.text == "Next reply, short"


def test_clear_drops_buffered_text_and_restarts_the_reply() -> None:
    chunker = AdaptiveChunker()
    chunker.push("Some long reply that is being interrupted right", now=0.0)
    assert chunker.pending_chars > 0
    chunker.clear()
    assert chunker.pending_chars == 0 and chunker.next_deadline() is None
    chunks = [c for piece in llm_tokens("Okay, stopping now, what is up?") for c in chunker.push(piece, now=1.0)]
    assert texts(chunks) == ["Okay, stopping now,"]  # first-chunk rules again, no leading space


def test_pending_chars_counts_text_not_yet_released() -> None:
    chunker = AdaptiveChunker()
    chunker.push("Hello   wor", now=0.0)
    assert chunker.pending_chars == len("Hello") + len("wor")


@pytest.mark.parametrize("bad", [dict(chunk_size=24), dict(chunk_size=201),
                                 dict(first_chunk_min_chars=50, first_chunk_max_chars=40),
                                 dict(low_buffer_s=5.0, healthy_buffer_s=4.0)])
def test_config_rejects_out_of_range_values(bad: dict) -> None:
    with pytest.raises(ValueError):
        ChunkerConfig(**bad)
