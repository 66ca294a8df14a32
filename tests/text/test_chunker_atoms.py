"""Whole thoughts at every LLM rate: the chunker never splits an atom (a number with its unit, a date, a time,
a phone number, a title and its name, a URL, an e-mail, code or a command line, a tag) and never ends a chunk
on a function word, whether the reply arrives at 2 or at 100 tokens a second.

The replies are fed token by token on a fake clock, polled at every `next_deadline`, with the queued audio
either empty (the chunker's most eager band) or growing and draining as a player would.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.text.chunker import AdaptiveChunker, ChunkerConfig, TextChunk

ATOMS = {
    "number and unit": [
        "5 p.m.", "3.5 GB", "100 km/h", "$1.2 million", "25 percent", "-5 degrees", "+3.2 points", "1,000 users",
        "10 kg", "12 ounces", "60 mph", "4 hours", "30 minutes", "7 days", "2 weeks", "18 months", "3 years",
        "42 dollars", "250 ml", "9.81 m/s", "1.5 liters", "500 MB", "8 GB of RAM", "99.9 percent", "6 feet",
        "20 seconds",
    ],
    "date": [
        "Jan. 5th, 2025", "January 5, 2025", "Feb. 14", "March 3rd", "Dec. 25", "Sept. 1, 2024", "2025-01-05",
        "Monday, May 5", "the 4th of July", "Oct. 31st", "Aug. 15, 1947", "Nov. 11", "April 1st, 2026",
        "Friday, June 13",
    ],
    "time": [
        "3:30 p.m.", "10 a.m.", "7:45 a.m.", "12 noon", "14:00", "9:15 p.m.", "6:05 p.m.",
        "11:59 p.m.", "8:00 a.m.", "5 p.m.",
    ],
    "phone": [
        "+1 (555) 010-9999", "(555) 123-4567", "555-0100", "+44 20 7946 0958", "1-800-555-0199",
        "+49 30 901820", "020 7946 0018", "+1 555 010 9999",
    ],
    "title and name": [
        "Mr. Smith", "Mrs. Jones", "Dr. Jane Doe", "Prof. Alan Turing", "St. Louis", "Mr. and Mrs. Smith",
        "Dr. Who", "Ms. Rivera", "Gen. Patton", "Sgt. Pepper", "New York", "San Francisco", "Jane Doe",
        "Capt. Kirk",
    ],
    "url": [
        "https://example.com/a.b?x=1", "www.example.org/docs", "example.com", "http://localhost:8000/health",
        "github.com/resemble-ai/chatterbox", "docs.python.org/3/library", "https://x.io",
    ],
    "e-mail": [
        "a.b@c.org", "support@example.com", "jane.doe+tts@mail.example.net", "ops@localhost",
        "first.last@company.co.uk",
    ],
    "code and command": [
        "`pip install -U foo`", "`npm run build`", "`git status`", "pip install -U foo", "git commit -m",
        "`docker compose up -d`", "`kubectl get pods`", "npm install", "`python -m pytest -q`", "curl -fsSL",
        "`ls -la`", "`cd /tmp`", "brew install ffmpeg", "`make test`", "sudo apt-get install",
        "`uv pip sync`",
    ],
    "tag": [
        "[laugh]", "[clear throat]", "[sigh]", "[whispering]", "[chuckle]", "[click here](https://x.io/a)",
        "[1]", "[very happy]",
    ],
}
ALL_ATOMS = [(kind, atom) for kind, atoms in ATOMS.items() for atom in atoms]
TEMPLATES = [
    "{atom}",
    "Okay, {atom} works.",
    "The one I meant is {atom} and nothing else.",
    "Sure thing, I found {atom} in the notes you sent me yesterday afternoon.",
    "Let me think about it for a moment while I look up {atom} for you.",
    "So basically we will need {atom} before the deadline.",
]
FUNCTION_WORDS = frozenset(
    "a an the of to in on at by for with from into onto about as and or but nor so if than that which who "
    "whom whose what when where while how why is are was were be been am do does did has have had will would "
    "can could should may might must shall not my your his her its our their this these those it i you he "
    "she we they me him us them very more most just also then there here".split()
)
RATES = (2, 3, 5, 10, 20, 50, 100)
SPEECH_CHARS_PER_S = 15.0


def test_the_table_has_a_hundred_atoms_of_every_kind() -> None:
    assert len(ALL_ATOMS) >= 100 and len(ATOMS) == 9 and all(len(atoms) >= 5 for atoms in ATOMS.values())


def llm_tokens(text: str) -> list[str]:
    """Tokens as an LLM streams them: short word pieces with their leading space, digits and marks alone."""
    return re.findall(r" ?[A-Za-z']{1,6}| ?[0-9]{1,3}| ?[^A-Za-z0-9\s]|\s+", text)


def feed(text: str, rate: float, player: bool, config: ChunkerConfig = ChunkerConfig()) -> list[TextChunk]:
    """The reply at `rate` tokens a second, polled at every deadline; `player`: queued audio grows with each
    chunk and drains in real time (else it stays empty)."""
    chunker = AdaptiveChunker(config)
    tokens = llm_tokens(text)
    assert "".join(tokens) == text
    chunks: list[TextChunk] = []
    queued_until = 0.0

    def buffered(now: float) -> float:
        return max(0.0, queued_until - now) if player else 0.0

    def take(new: list[TextChunk], now: float) -> None:
        nonlocal queued_until
        for chunk in new:
            queued_until = max(queued_until, now + 0.2) + len(chunk.text) / SPEECH_CHARS_PER_S
        chunks.extend(new)

    now = 0.0
    for token in tokens:
        take(chunker.push(token, now, buffered(now)), now)
        arrival = now + 1.0 / rate
        while (deadline := chunker.next_deadline()) is not None and deadline < arrival:
            take(chunker.poll(deadline, buffered(deadline)), deadline)
        now = arrival
    take(chunker.poll(now + 10.0, buffered(now + 10.0)), now + 10.0)  # the reply's silence after its last token
    chunks.extend(chunker.end())
    return chunks


def boundaries(chunks: list[TextChunk]) -> list[int]:
    ends, position = [], 0
    for chunk in chunks[:-1]:
        position += len(chunk.source)
        ends.append(position)
    return ends


def assert_whole_thoughts(chunks: list[TextChunk], text: str, atom: str) -> None:
    assert "".join(chunk.source for chunk in chunks) == text
    start = text.index(atom)
    inside = [cut for cut in boundaries(chunks) if start < cut < start + len(atom)]
    assert not inside, f"{atom!r} split: {[chunk.source for chunk in chunks]}"
    for chunk in chunks[:-1]:
        last = chunk.text.rsplit(" ", 1)[-1]
        assert last.lower() not in FUNCTION_WORDS, f"ends on {last!r}: {[chunk.source for chunk in chunks]}"


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("player", [False, True], ids=["empty-buffer", "player"])
@pytest.mark.parametrize("kind, atom", ALL_ATOMS, ids=[atom for _, atom in ALL_ATOMS])
def test_no_atom_is_split_at_any_rate(kind: str, atom: str, rate: int, player: bool) -> None:
    for template in TEMPLATES:
        text = template.format(atom=atom)
        assert_whole_thoughts(feed(text, rate, player), text, atom)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(ALL_ATOMS), st.sampled_from(TEMPLATES[1:]), st.floats(2.0, 100.0), st.booleans(),
       st.sampled_from(["", " ", "\n\n"]), st.sampled_from(["", " Then we can move on to the next item.",
                                                               " and after that, the rest of the plan"]))
def test_no_atom_is_split_at_any_rate_between_any_words(kind_atom: tuple[str, str], template: str, rate: float,
                                                        player: bool, lead: str, tail: str) -> None:
    text = lead + template.format(atom=kind_atom[1]) + tail
    assert_whole_thoughts(feed(text, rate, player), text, kind_atom[1])


def test_a_negative_control_splits_atoms_when_every_word_may_end_a_chunk() -> None:
    """The test above can fail: with the deadline floor removed and a tiny first chunk, a slow stream is cut
    mid-atom."""
    config = ChunkerConfig(deadline_min_chars=0, first_chunk_min_chars=1, first_chunk_max_chars=8)
    split = 0
    for _, atom in ALL_ATOMS:
        text = f"So basically we will need {atom} before the deadline."
        chunks = feed(text, 2, player=False, config=config)
        start = text.index(atom)
        split += any(start < cut < start + len(atom) for cut in boundaries(chunks))
    assert split > 0


# ---- the sentence hold -------------------------------------------------------------------------------------

def test_a_sentence_then_a_pause_is_one_chunk_at_three_tokens_a_second() -> None:
    """"Let me check that for you." and then a tool call: spoken whole, after the hold, not cut by the deadline."""
    chunker = AdaptiveChunker()
    now, released = 0.0, []
    for token in llm_tokens("Let me check that for you."):
        released += chunker.push(token, now)
        now += 1 / 3
        while (deadline := chunker.next_deadline()) is not None and deadline < now:
            released += chunker.poll(deadline)
    assert released == []  # the sentence end is not known yet: "you." could still be "you.com"
    pause_end = now + 2.0
    while (deadline := chunker.next_deadline()) is not None and deadline < pause_end:
        released += chunker.poll(deadline)
    assert [(chunk.source, chunk.reason, chunk.ends_sentence) for chunk in released] == [
        ("Let me check that for you.", "hold", True)]
    assert released[0].speak_text == "Let me check that for you."


def test_the_hold_follows_the_streams_own_rate() -> None:
    fast, slow = AdaptiveChunker(), AdaptiveChunker()
    for i, token in enumerate(llm_tokens("It costs $29.")):
        fast.push(token, i * 0.01)
        slow.push(token, i * 0.5)  # 2 tokens a second: "99" may well come 0.5 s after "."
    assert fast.next_deadline() == pytest.approx(0.04 + ChunkerConfig().sentence_hold_s)
    assert slow.next_deadline() == pytest.approx(2.0 + 2.5 * 0.5)
    assert slow.poll(2.6) == []
    assert [chunk.source for chunk in slow.push("99", 2.5) + slow.push(" today.", 3.0)] == []
    assert [chunk.source for chunk in slow.poll(10.0)] == ["It costs $29.99 today."]


@pytest.mark.parametrize("text", ["Please call Dr.", "It was J.", "It's e.g."])
def test_no_hold_after_an_abbreviation_that_announces_more(text: str) -> None:
    chunker = AdaptiveChunker()
    for i, token in enumerate(llm_tokens(text)):
        chunker.push(token, i * 0.01)
    assert chunker.poll(30.0) == []
    assert [chunk.source for chunk in chunker.push(" Smith is in.", 30.0) + chunker.poll(60.0)] == [
        text + " Smith is in."]


def test_a_held_sentence_waits_while_the_listener_is_well_supplied() -> None:
    """Above the healthy buffer sentences are packed: the hold settles the sentence end, the drain releases it."""
    chunker = AdaptiveChunker()
    first = chunker.push("Hello there, my friend. ", 0.0, buffered_audio_s=0.0)
    assert [chunk.source for chunk in first] == ["Hello there,"]
    assert chunker.push("Yes.", 0.1, buffered_audio_s=6.0) == []
    assert chunker.poll(1.0, buffered_audio_s=5.1) == []  # held, but the buffer is still healthy
    deadline = chunker.next_deadline()
    assert deadline == pytest.approx(1.0 + 5.1 - ChunkerConfig().healthy_buffer_s)
    assert [chunk.source for chunk in chunker.poll(deadline, buffered_audio_s=4.0)] == [" my friend. Yes."]


def test_month_before_a_number_is_not_a_sentence_end() -> None:
    chunks = feed("It is due Jan. 5th at noon. Then we rest.", 50, player=False)
    assert [chunk.source for chunk in chunks] == ["It is due Jan. 5th at noon.", " Then we rest."]
