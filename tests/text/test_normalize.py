"""normalize_stream, its incremental form StreamNormalizer, and prepare_for_engine."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path
from typing import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.text.normalize import StreamNormalizer, normalize_stream, prepare_for_engine

FAST = settings(max_examples=200, deadline=None)


def load_punc_norm() -> Callable[[str], str]:
    """Chatterbox's own `punc_norm`, taken from its source: importing chatterbox.tts loads torch (~20 s)."""
    spec = importlib.util.find_spec("chatterbox")
    source = (Path(spec.origin).parent / "tts.py").read_text()
    node = next(n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name == "punc_norm")
    namespace: dict = {}
    exec(compile(ast.Module([node], type_ignores=[]), "chatterbox/tts.py", "exec"), namespace)
    return namespace["punc_norm"]


punc_norm = load_punc_norm()

# Fragments that exercise every rule, glued with arbitrary separators by the strategies below.
FRAGMENTS = [
    "Hello", "world", "Mr.", "e.g.", "U.S.", "$29.99", "3.14", "1,000", "10:30", "etc.", "a.b@c.org",
    "https://example.com/a.b?x=1.", "...", "\u2026", "-", "--", "\u2014", "\u2013", ":", ";", ",", ".", "!", "?",
    "\u201cquoted\u201d", "\u2018it\u2019s\u2019", "**bold**", "_it_", "`code`", "# Title", "- item", "1.", "2)",
    "> quote", "[link](http://x.y)", "\U0001F389", "\U0001F44D\U0001F3FD", "\u2764\ufe0f", "caf\u0065\u0301",
    "\u00a0", "\u200b", "\x07", "\r\n", "\n", "\n\n", "\t", "  ", "(see", "above)", '"', "'", "\u2192", "snake_case",
    "\ud83c", "\udf89",
]
SEPARATORS = ["", " ", "\n", "\n\n", "  ", "\r\n"]

texts = st.lists(st.tuples(st.sampled_from(FRAGMENTS), st.sampled_from(SEPARATORS)), max_size=30).map(
    lambda parts: "".join(fragment + sep for fragment, sep in parts)
)
any_text = st.one_of(texts, st.text(max_size=80))


def split_at(text: str, cuts: list[int]) -> list[str]:
    bounds = [0, *sorted(c % (len(text) + 1) for c in cuts), len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:])]


def normalize_in_pieces(pieces: list[str]) -> str:
    normalizer = StreamNormalizer()
    words = [word for piece in pieces for word in normalizer.feed(piece)] + normalizer.finish()
    return "".join(word.sep + word.text for word in words)


@FAST
@given(any_text, st.lists(st.integers(min_value=0), max_size=12))
def test_piece_by_piece_equals_whole(text: str, cuts: list[int]) -> None:
    assert normalize_in_pieces(split_at(text, cuts)) == normalize_stream(text)


@FAST
@given(any_text)
def test_output_has_nothing_punc_norm_would_rewrite(text: str) -> None:
    out = normalize_stream(text)
    assert out == out.strip() and "  " not in out
    for forbidden in ("\n", "\r", "\t", "...", "\u2026", ":", ";", " - ", " ,", "\u2014", "\u2013",
                      "\u201c", "\u201d", "\u2018", "\u2019", "`", "\x07", "\u200b", "\ufe0f"):
        assert forbidden not in out
    assert all(not (0x1F300 <= ord(char) <= 0x1FAFF) for char in out)


@FAST
@given(any_text, st.booleans())
def test_prepared_text_is_a_fixed_point_of_punc_norm(text: str, ends_sentence: bool) -> None:
    spoken = prepare_for_engine(normalize_stream(text), ends_sentence)
    if spoken:
        assert punc_norm(spoken) == spoken
        assert spoken[-1] in ".!?," and (spoken[-1] != "," or not ends_sentence)


@pytest.mark.parametrize("raw, expected", [
    ("  Hello \t  world \n", "Hello world"),
    ("Hello\u00a0world\u200b!", "Hello world!"),
    ("bell\x07 and\x1b escape", "bell and escape"),
    ("\u201cQuoted,\u201d she said \u2018twice\u2019", '"Quoted," she said \'twice\''),
    ("Wait... what?", "Wait, what?"),
    ("Wait\u2026what", "Wait, what"),
    ("Hmm...?", "Hmm?"),
    ("I waited\u2014then left", "I waited, then left"),
    ("yes \u2014 no", "yes, no"),
    ("one - two", "one, two"),
    ("pages 1\u20135", "pages 1-5"),
    ("well-known -5 degrees", "well-known -5 degrees"),
    ("Note: this; that", "Note, this, that"),
    ("at 10:30 sharp", "at 10 30 sharp"),
    ("**Bold** and *it* and __init__ and snake_case", "Bold and it and init and snake_case"),
    ("use `pip install` now", "use pip install now"),
    ("## Title\nBody", "Title. Body"),
    ("Intro:\n- first\n- second\n\nDone.", "Intro, first. second. Done."),
    ("* a\n+ b\n> c", "a. b. c"),
    ("1. First\n2. Second", "1. First. 2. Second"),
    ("See [the docs](https://x.io/d) and ![a cat](c.png).", "See the docs and a cat."),
    ("a fact[1].", "a fact."),
    ("visit https://example.com/a.b?x=1. Then", "visit example.com/a.b?x=1. Then"),
    ("mail a.b@c.org or mailto:x@y.z", "mail a.b@c.org or x@y.z"),
    ("Great job \U0001F389! Next \U0001F44D\U0001F3FD step \u2764\ufe0f.", "Great job! Next step."),
    ("Input \u2192 output", "Input to output"),
    ("caf\u0065\u0301", "caf\u00e9"),
    ("line\r\nnext", "line. next"),
    ("Hello , world !", "Hello, world!"),
    ("Dear John,\n\nThanks", "Dear John, Thanks"),
    ('He said "stop"\nThen', 'He said "stop". Then'),
    ("\U0001F389\U0001F389", ""),
    ("", ""),
])
def test_normalize_table(raw: str, expected: str) -> None:
    assert normalize_stream(raw) == expected


def test_lookahead_shows_the_next_word_and_its_line_breaks() -> None:
    normalizer = StreamNormalizer()
    assert normalizer.feed("Hello.") == [] and normalizer.lookahead.head == "Hello."
    words = normalizer.feed("\n\nWor")
    assert [w.text for w in words] == ["Hello."]
    assert normalizer.lookahead.head == "Wor" and normalizer.lookahead.breaks_before == 2
    assert [(w.text, w.sep, w.breaks_before) for w in normalizer.feed("ld ")] == []
    assert [(w.text, w.sep, w.breaks_before) for w in normalizer.finish()] == [("World", " ", 2)]


def test_crlf_split_across_pieces_is_one_line_break() -> None:
    assert normalize_in_pieces(["a\r", "\nb"]) == normalize_stream("a\r\nb") == "a. b"
    assert normalize_in_pieces(["a\r", "\n\r", "\nb"]) == "a. b"


def test_flush_mid_word_glues_the_continuation() -> None:
    normalizer = StreamNormalizer()
    words = normalizer.feed("Hel") + normalizer.flush() + normalizer.feed("lo there") + normalizer.finish()
    assert "".join(w.sep + w.text for w in words) == "Hello there"


@pytest.mark.parametrize("text, ends_sentence, expected", [
    ("hello there", False, "Hello there,"),
    ("hello there", True, "Hello there."),
    ("hello there,", True, "Hello there."),
    ("Really?", False, "Really?"),
    ("the U.S.", False, "The U.S.,"),
    ('he said "stop."', True, 'He said "stop".'),
    ('"wait,"', False, '"Wait",'),
    ("(see above)", False, "(See above),"),
    (", and then", False, "And then,"),
    (" 3.14 is pi.", True, "3.14 is pi."),
    ("\u00df is sharp", True, "SS is sharp."),
    (", .", True, ""),
    ("", False, ""),
])
def test_prepare_for_engine(text: str, ends_sentence: bool, expected: str) -> None:
    assert prepare_for_engine(text, ends_sentence) == expected
