"""The ElevenLabs transcripts on their own (elevenlabs_common.TranscriptAligner): whatever the audio pieces, the
chunks without audio and the unmarked chunk ends, every character of each text is sent exactly once, in order,
the caller's in `alignment` and the normalized ones in `normalizedAlignment`, over the same audio."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from app.server.elevenlabs_common import Alignment, TranscriptAligner
from app.text.chunker import TextChunk


_TEXT = st.text(alphabet=st.sampled_from("ab :.-/'3\n"), max_size=30)
# Per chunk: its caller text, its normalized text, the seconds of its audio pieces (none: nothing to speak),
# and whether its last piece is marked as its end.
_CHUNKS = st.lists(st.tuples(_TEXT, _TEXT, st.lists(st.floats(0.001, 2.0), max_size=6), st.booleans()),
                   max_size=8)


def _chars(alignments: list[Alignment | None]) -> str:
    return "".join(alignment.chars for alignment in alignments if alignment is not None)


@settings(max_examples=300, deadline=None)
@given(_CHUNKS)
def test_every_character_once_in_order_whatever_the_audio(chunks):
    aligner = TranscriptAligner()
    caller, normalized = [], []
    for index, (source, text, pieces, marked) in enumerate(chunks):
        chunk = TextChunk(index, text, "x" if pieces else "", True, "end", source=source)
        for number, seconds in enumerate(pieces):
            aligned = aligner.align(seconds, chunk, marked and number == len(pieces) - 1)
            for alignment in (aligned.caller, aligned.normalized):
                if alignment is not None:  # a message's characters span exactly its audio
                    assert alignment.seconds == seconds
            if not (marked and number == len(pieces) - 1):  # neither transcript runs ahead of the other
                assert (aligned.caller is None) == (aligned.normalized is None)
            caller.append(aligned.caller)
            normalized.append(aligned.normalized)
        done = aligner.finish_chunk(chunk)
        caller.append(done.caller)
        normalized.append(done.normalized)
        assert aligner.align(0.01, None, False).caller is None  # an encoder's tail owes no characters
    assert _chars(caller) == "".join(source for source, *_ in chunks)
    assert _chars(normalized) == "".join(text for _, text, *_ in chunks)


def test_times_in_both_shapes():
    alignment = Alignment("abcd", 0.4)
    assert alignment.websocket_json() == {"chars": ["a", "b", "c", "d"], "charStartTimesMs": [0, 100, 200, 300],
                                          "charDurationsMs": [100, 100, 100, 100]}
    assert alignment.http_json(offset_s=1.0) == {
        "characters": ["a", "b", "c", "d"], "character_start_times_seconds": [1.0, 1.1, 1.2, 1.3],
        "character_end_times_seconds": [1.1, 1.2, 1.3, 1.4]}


def test_a_word_goes_with_the_message_in_which_it_is_estimated_to_start():
    aligner = TranscriptAligner()
    chunk = TextChunk(0, "one two three four ", "x", True, "end", source="1 2 3 4 ")
    # At 15 characters a second the first 0.3 s are 24 % of the chunk: "two" starts at 21 % of the normalized
    # text, "three" at 42 %; "2" at 25 % of the caller's.
    first = aligner.align(0.3, chunk, False)
    assert first.normalized.chars == "one two " and first.caller.chars == "1 "
    rest = aligner.align(1.0, chunk, True)
    assert rest.normalized.chars == "three four " and rest.caller.chars == "2 3 4 "
    assert not aligner.finish_chunk(chunk)  # its marked end took everything


def test_measured_word_starts_decide_when_a_word_is_due():
    """With the model's measured starts (multilingual), a word goes with the message during which it was measured
    to start, whatever the speaking-rate estimate says; without them the estimate decides (the control)."""
    chunk = TextChunk(0, "one two three four", "x", True, "end", source="1 2 3 4")
    measured = TranscriptAligner()
    measured.measure(chunk, [0.0, 0.1, 0.9])  # "four" not reached yet
    first = measured.align(0.2, chunk, False)
    assert first.normalized.chars == "one two " and first.caller.chars == "1 2 "
    assert not measured.align(0.5, chunk, False)  # "three" starts at 0.9 s: not yet
    measured.measure(chunk, [0.0, 0.1, 0.9, 1.0])
    second = measured.align(0.3, chunk, False)  # 1.0 s spoken: "three" started, "four" keeps for the end
    assert second.normalized.chars == "three " and second.caller.chars == "3 "
    assert measured.align(0.4, chunk, True).normalized.chars == "four"

    estimated = TranscriptAligner()  # 15 characters a second: after 0.2 s only "one" has started
    assert estimated.align(0.2, chunk, False).normalized.chars == "one "
