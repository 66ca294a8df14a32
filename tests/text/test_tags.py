"""A model's bracketed tags (Turbo's "[laugh]", "[clear throat]") stay whole and verbatim through the normalizer
and the chunker, at every split position of an LLM token stream; a bracketed word the model does not know is
spoken as text, as before."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from app.engine.chatterbox.model_names import TURBO_TAGS
from app.text.chunker import AdaptiveChunker, ChunkerConfig, TextChunk
from app.text.normalize import normalize_stream, prepare_for_engine

TAGS = frozenset(TURBO_TAGS)


def test_known_tags_are_kept_unknown_brackets_are_read():
    assert normalize_stream("Ha [laugh] that is [clear throat] funny [chuckle].", TAGS) == \
        "Ha [laugh] that is [clear throat] funny [chuckle]."
    assert normalize_stream("[LAUGH] ok", TAGS) == "[laugh] ok"  # the tokenizer's spelling
    assert normalize_stream("see [note] and [clear the air]", TAGS) == "see note and clear the air"
    assert normalize_stream("Ha [laugh] ok") == "Ha laugh ok"  # a model without tags reads them


def test_a_leading_tag_is_not_capitalised_and_the_text_after_it_is():
    assert prepare_for_engine("[sigh] well, fine", ends_sentence=True) == "[sigh] Well, fine."
    assert prepare_for_engine("[clear throat]", ends_sentence=True) == "[clear throat]."


def stream(pieces: list[str], config: ChunkerConfig) -> list[TextChunk]:
    chunker = AdaptiveChunker(config)
    chunks: list[TextChunk] = []
    for i, piece in enumerate(pieces):
        chunks += chunker.push(piece, now=i * 0.3)
        chunks += chunker.poll(i * 0.3 + 0.29)
    return chunks + chunker.end()


TEXTS = [
    "Oh [laugh] that is the best thing I have heard all day.",
    "Well [clear throat] as I was saying, the meeting is at noon.",
    "[whispering] Do not tell anyone, but the answer is yes. [sigh]",
    "Fine. [sarcastic] Great idea, really great, let us do it again and again.",
]


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(TEXTS), st.lists(st.integers(min_value=1, max_value=80), max_size=25))
def test_tags_are_never_split_at_any_token_split(text: str, cuts: list[int]) -> None:
    bounds = sorted({0, len(text), *(c % len(text) for c in cuts)})
    pieces = [text[a:b] for a, b in zip(bounds, bounds[1:])]
    chunks = stream(pieces, ChunkerConfig(tags=TAGS, first_chunk_min_chars=1, first_chunk_max_chars=12))
    assert "".join(chunk.source for chunk in chunks) == text
    spoken = "".join(chunk.text for chunk in chunks)
    for tag in TAGS:
        assert spoken.count(tag) == text.count(tag)  # never stripped
        for chunk in chunks:
            inner = chunk.text.strip()
            assert inner.count("[") == inner.count("]"), f"a tag split: {[c.text for c in chunks]}"
            if tag in chunk.text:
                assert tag in chunk.speak_text  # and spoken as the tag, verbatim


def test_negative_control_without_tags_the_brackets_are_read_as_words():
    chunks = stream(["Oh [la", "ugh] that is it."], ChunkerConfig())
    assert "[" not in "".join(chunk.speak_text for chunk in chunks)
