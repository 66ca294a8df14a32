"""Text normalization for a streamed LLM reply, split in two layers.

`normalize_stream` is the position-independent part: what Chatterbox's own `punc_norm` replaces (whitespace
runs, curly quotes, ellipses, dashes, colons and semicolons) plus what an LLM adds that a voice should not read
(markdown markers, emoji, control and zero-width characters). `prepare_for_engine` is the position-dependent
part, applied to one released chunk: a capital first letter and the right final punctuation.

Applying it incrementally: `StreamNormalizer` reads the stream piece by piece and emits a word only once it
is complete, i.e. once the next non-space character has arrived (or at `finish`). Every rule looks at one
character, or at one complete word plus the count of line breaks before it, and the whitespace between words
is decided when the next word is known. So the emitted words never change afterwards, and

    "".join(w.sep + w.text for w in feed(piece_1) + ... + feed(piece_n) + finish()) == normalize_stream(whole)

for any split of the stream into pieces. Every word also carries its `source`: the caller's characters it came
from, with the whitespace and dropped markup before it, so the sources of all words rejoin exactly to the input
(what a client reads back as its transcript). The chunker cuts only between emitted words, so its chunks rejoin
exactly to `normalize_stream` of everything it was given. (`flush` is the one exception: it emits a word
before it is complete; a continuation without a space is glued back without one, which only differs from the
whole-text result when the flush fell inside a multi-character rule such as "..." or "https://".)

What the output never contains, so that `punc_norm(prepare_for_engine(...))` leaves it unchanged: runs of
whitespace, newlines, "...", "…", ":", ";", " - ", " ,", em or en dashes, curly quotes.
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass, replace
from itertools import accumulate

# Characters with a fixed replacement. Everything else is classified in `_map_codepoint`.
_REPLACEMENTS = {
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u00ab": '"', "\u00bb": '"', "\u2033": '"',
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2039": "'", "\u203a": "'", "\u2032": "'",
    "\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2212": "-",
    # "A → B" is read "A to B"; other arrows are decoration.
    "\u2192": " to ", "\u27f6": " to ", "\u21d2": " to ", "\u2794": " to ", "\u279c": " to ",
    # list bullets and table pipes separate words; they are not read
    "\u2022": " ", "\u2023": " ", "\u25e6": " ", "\u2043": " ", "\u2219": " ", "|": " ",
    "\u2122": "", "\u00a9": "", "\u00ae": "",  # trademark signs are glued to words and not read
    "\ufe0e": "", "\ufe0f": "", "\u20e3": "",  # emoji presentation selectors and keycap
}

# Pictographs (emoji, dingbats, arrows, box drawing, geometric shapes) become a space: an emoji between
# words must not glue them together, and runs of spaces collapse anyway.
_PICTOGRAPH_RANGES = (
    (0x2190, 0x21FF), (0x2300, 0x23FF), (0x2460, 0x24FF), (0x2500, 0x25FF), (0x2600, 0x27BF),
    (0x27F0, 0x27FF), (0x2900, 0x297F), (0x2B00, 0x2BFF), (0x3030, 0x3030), (0x303D, 0x303D),
    (0x3297, 0x3297), (0x3299, 0x3299), (0x1F000, 0x1FAFF),
)


def _map_codepoint(cp: int) -> str | None:
    """The replacement of one character (None: keep it). Depends on nothing but the character."""
    char = chr(cp)
    if char in _REPLACEMENTS:
        return _REPLACEMENTS[char]
    if char.isspace():
        return None
    if any(lo <= cp <= hi for lo, hi in _PICTOGRAPH_RANGES):
        return " "
    category = unicodedata.category(char)
    if category == "Cs":  # a lone surrogate (half an emoji split by a client): like the emoji, a space
        return " "
    if category in ("Cc", "Cf", "Co") or 0xE0100 <= cp <= 0xE01EF:  # controls, zero-width, private use
        return ""
    return None


class _CharTable(dict):
    """A `str.translate` table that classifies each character on first sight and remembers it."""

    def __missing__(self, cp: int) -> str:
        replacement = _map_codepoint(cp)
        self[cp] = chr(cp) if replacement is None else replacement  # None in a table would delete it
        return self[cp]


_CHAR_TABLE = _CharTable()

# Scripts written without spaces between sentences and clauses (CJK) or with their own marks (Devanagari,
# Arabic) end them with these; the normalizer keeps them and treats the place after one as a word boundary
# without a space, so the chunker can cut there.
SPACELESS_SENTENCE_MARKS = "\u3002\uff01\uff1f\u0964\u0965\u061f"  # 。！？ । ॥ ؟
SPACELESS_CLAUSE_MARKS = "\uff0c\u3001\uff1b\uff1a\u060c\u061b"  # ，、；： ، ؛
SPACELESS_MARKS = SPACELESS_SENTENCE_MARKS + SPACELESS_CLAUSE_MARKS
_RUN = re.compile(rf"\s+|[^\s{SPACELESS_MARKS}]*[{SPACELESS_MARKS}]+|[^\s{SPACELESS_MARKS}]+")
_LINE_BREAKS = frozenset("\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029")

# Word rules (applied to one complete word).
_LINE_MARKER = re.compile(r"#{1,6}|[-*+>]+|[-*_=~`]{3,}\w*|\[[ xX]?\]")  # only where a line starts
_CITATION = re.compile(r"\[\d+\]")
# The target stops at the next "]" too: otherwise every "](" of "]((](..." rescans the rest of the word.
_LINK_TARGET = re.compile(r"\]\([^\s)\]]*\)")
_MARKUP = re.compile(r"!?\[|[\]`\\]|~~")
_EDGE_EMPHASIS = re.compile(r"(?<![^\W_])[*_]+|[*_]+(?![^\W_])")  # "**bold**", "_it_", not "snake_case"
_SCHEME = re.compile(r"(?i)\b(?:https?|ftp|file)://|\bmailto:")
_INNER_COLON = re.compile(r"(?<=[^\W_]):(?=[^\W_])")  # "10:30", "localhost:8000"
_ELLIPSIS = re.compile(r"\u2026+|\.{3,}")
_LONG_DASH = re.compile(r"[\u2014\u2015]+|-{2,}")
_INNER_EN_DASH = re.compile(r"(?<=[^\W_])\u2013(?=[^\W_])")  # "1–5", "New York–London"
_LONE_HYPHEN = re.compile(r"(?<![^\W_])-(?![^\W_])")  # not joining words: a dash, as in "one - two"
_PUNCT_RUN = re.compile(r"[,.!?](?:\s*[,.!?])*")
_SPACES = re.compile(r"\s+")
_AFTER_COMMA = re.compile(r"(?<=,) ")
_ATTACHES = re.compile(r",|[.!?]++(?: |$)")  # a word that is punctuation joins the word before it
_TAG = re.compile(r"(\[[^\[\]]{1,40}\])([,.!?]*)")  # "[laugh]", "[clear throat]," (a tag if the model knows it)


def _tidy_punct_run(match: re.Match[str]) -> str:
    marks = match.group().replace(" ", "")
    if set(marks) == {","}:
        return ","
    return marks.replace(",", "")  # "wait…?" -> "wait?", not "wait,?"


def normalize_word(raw: str, starts_line: bool, tags: frozenset[str] = frozenset(), language: str = "en") -> str:
    """Normalize one whitespace-free word (or a multi-word tag); "" drops it. `starts_line`: it is the first word
    of its line. A known tag (`tags`, lower case, brackets included) stays as it is, with the marks after it.
    Greek writes its question mark as ";" (NFC makes U+037E one): a question, not a pause."""
    word = unicodedata.normalize("NFC", raw)
    if language == "el":
        word = word.replace(";", "?")
    tag = _TAG.fullmatch(word)
    if tag and tag.group(1).lower() in tags:
        return tag.group(1).lower() + _PUNCT_RUN.sub(_tidy_punct_run, tag.group(2))
    if starts_line and _LINE_MARKER.fullmatch(word):
        return ""  # bullet, header, quote marker, rule, code fence, task box
    word = _CITATION.sub("", word)
    word = _LINK_TARGET.sub("", word)
    word = _MARKUP.sub("", word)
    word = _EDGE_EMPHASIS.sub("", word)
    word = _SCHEME.sub("", word)  # "https://" is noise when spoken; the host and path stay intact
    word = _INNER_COLON.sub(" ", word)
    word = _ELLIPSIS.sub(", ", word)
    word = _LONG_DASH.sub(", ", word)
    word = _INNER_EN_DASH.sub("-", word)
    word = word.replace("\u2013", ", ").replace(":", ", ").replace(";", ", ")
    word = _LONE_HYPHEN.sub(",", word)
    word = _PUNCT_RUN.sub(_tidy_punct_run, word)
    return _SPACES.sub(" ", word).strip()


def _count_line_breaks(run: str, after_cr: bool) -> int:
    if after_cr and run.startswith("\n"):
        run = run[1:]  # the "\r" of this "\r\n" was counted with the previous piece
    return sum(char in _LINE_BREAKS for char in run.replace("\r\n", "\n"))


@dataclass(frozen=True)
class Word:
    """One normalized word as the stream emits it. Its place in the text is `sep + text`."""

    text: str  # empty only for `StreamNormalizer.finish`'s bare tail
    sep: str  # "" (start of the stream, punctuation that attaches, a glued continuation) or " "
    breaks_before: int  # line breaks in the whitespace before it (2 or more: a paragraph break)
    starts_line: bool
    source: str = ""  # the caller's characters it came from, with the whitespace and dropped words before it


@dataclass(frozen=True)
class Lookahead:
    """The start of the next, not yet emitted word."""

    head: str  # its raw characters so far (after the per-character mapping)
    breaks_before: int


CLOSING_MARKS = "\"')]}"
OPENING_MARKS = "\"'([{"
_SENTENCE_OR_CLAUSE_MARKS = ",.!?"
_FINAL_MARKS = _SENTENCE_OR_CLAUSE_MARKS + SPACELESS_MARKS


def _ends_with_mark(text: str) -> bool:
    mark = text.rstrip(CLOSING_MARKS)[-1:]
    return mark != "" and mark in _FINAL_MARKS


class StreamNormalizer:
    """Incremental `normalize_stream`: feed pieces, get the words that became final. `tags`: the model's
    bracketed tags (lower case), kept whole and verbatim; a tag of several words is read as one word."""

    def __init__(self, tags: frozenset[str] = frozenset(), language: str = "en") -> None:
        self._tags = tags
        self._language = language
        self._tag_prefixes = frozenset(tag[:end + 1] for tag in tags for end, char in enumerate(tag) if char == " ")
        self._start_over()

    def _start_over(self) -> None:
        self._word = ""  # raw characters of the word being read, or of a complete one awaiting emission
        self._word_complete = False  # whitespace followed it
        self._word_breaks = 0
        self._word_starts_line = True
        self._word_glued = False
        self._breaks = 0  # line breaks since the last word ended
        self._carried_breaks = 0  # line breaks before a dropped word (a bullet) belong to the next one
        self._after_cr = False
        self._starts_line = True  # no word kept yet on the current line
        self._glue_next = False  # a flush cut a word: its continuation joins without a space
        self._last_text = ""  # text of the last emitted word
        self._raw = ""  # the caller's characters not yet claimed by an emitted word
        self._raw_start = 0  # stream offset of _raw[0]
        self._word_raw_end = 0  # stream offset where the raw characters of the word being read end
        self._unclaimed = ""  # source of emitted words that normalized to nothing; the next word claims it

    @property
    def pending_chars(self) -> int:
        return len(self._word)

    @property
    def lookahead(self) -> Lookahead | None:
        if not self._word:
            return None
        return Lookahead(self._word, max(self._word_breaks, self._carried_breaks))

    def feed(self, text: str) -> list[Word]:
        out: list[Word] = []
        mapped = text.translate(_CHAR_TABLE)
        raw_end = _raw_offsets(text, mapped)
        offset = self._raw_start + len(self._raw)
        self._raw += text
        for run in _RUN.finditer(mapped):
            if run.group().isspace():
                self._read_space(run.group())
            else:
                self._read_word(run.group(), out)
                self._word_raw_end = offset + raw_end(run.end())
        return out

    def flush(self) -> list[Word]:
        """Emit the word being read even though it may continue; it claims every character read so far."""
        out: list[Word] = []
        if self._word:
            self._glue_next = self._glue_next or not self._word_complete
            self._emit(out)
            self._claim_rest(out)
        return out

    def finish(self) -> list[Word]:
        """End of the stream: emit the rest and start over. The caller's characters after the last word
        (whitespace, dropped markup) go with it; when it was emitted before (by a flush), they come as a bare
        tail: a word with no text, only `source`."""
        out: list[Word] = []
        if self._word:
            self._emit(out)
        if not self._claim_rest(out):
            tail = self._unclaimed + self._raw
            if tail:
                out.append(Word("", "", 0, False, tail))
        self._start_over()
        return out

    def _claim_rest(self, out: list[Word]) -> bool:
        """Give the characters read after the last word of `out` to it (False: `out` has none)."""
        if not out:
            return False
        rest, self._unclaimed = self._unclaimed + self._raw, ""
        self._raw_start += len(self._raw)
        self._raw = ""
        if rest:
            out[-1] = replace(out[-1], source=out[-1].source + rest)
        return True

    def _read_space(self, run: str) -> None:
        if self._word and not self._word_complete and self._continues_a_tag(run):
            self._word += " "  # "[clear" + " " + "throat]": one word
            return
        if self._word:
            self._word_complete = True
        self._glue_next = False
        self._breaks += _count_line_breaks(run, self._after_cr)
        self._after_cr = run.endswith("\r")

    def _continues_a_tag(self, run: str) -> bool:
        return "\n" not in run and (self._word + " ").lower() in self._tag_prefixes

    def _read_word(self, run: str, out: list[Word]) -> None:
        self._after_cr = False
        if self._word_complete:
            self._emit(out)
        if not self._word:
            self._start_word(out)
        self._word += run
        if run[-1] in SPACELESS_MARKS:  # "你好，" is complete; "你好吗" follows it without a space
            self._word_complete = self._glue_next = True

    def _start_word(self, out: list[Word]) -> None:
        if self._breaks:
            self._starts_line = True
            if self._last_text and not _ends_with_mark(self._last_text):
                # A line that ends without punctuation (a header, a list item) still ends a sentence.
                self._append(".", sep="", breaks=0, starts_line=False, out=out)
        self._word_breaks = self._breaks
        self._word_starts_line = self._starts_line
        self._word_glued = self._glue_next
        self._breaks = 0
        self._glue_next = False

    def _emit(self, out: list[Word]) -> None:
        text = normalize_word(self._word, self._word_starts_line, self._tags, self._language)
        breaks = max(self._word_breaks, self._carried_breaks)
        sep = "" if self._word_glued or _ATTACHES.match(text) else " "
        self._word, self._word_complete = "", False
        source = self._take_source()
        if not text:
            self._carried_breaks = breaks
            self._unclaimed = source
            return
        self._carried_breaks = 0
        self._starts_line = False
        # "waited—then" became "waited, then": two words, so that a chunk may end at its comma.
        first, *rest = _AFTER_COMMA.split(text)
        if self._append(first, sep, breaks, self._word_starts_line, out, source, glued=self._word_glued):
            source = ""
        for part in rest:
            if self._append(part, " ", 0, False, out, source):
                source = ""
        self._unclaimed = source

    def _take_source(self) -> str:
        """The caller's characters up to the end of the word being emitted, with any unclaimed before them."""
        end = self._word_raw_end - self._raw_start
        source, self._raw = self._unclaimed + self._raw[:end], self._raw[end:]
        self._raw_start, self._unclaimed = self._word_raw_end, ""
        return source

    def _append(self, text: str, sep: str, breaks: int, starts_line: bool, out: list[Word], source: str = "",
                glued: bool = False) -> bool:
        """Emit one word; False when it turned out to say nothing."""
        if not self._last_text:
            sep = ""
        elif sep == "" and not glued and self._last_text[-1] in _SENTENCE_OR_CLAUSE_MARKS:
            # "wait, — no": the dash's comma would double the one already there
            rest = text.lstrip(_SENTENCE_OR_CLAUSE_MARKS)
            if len(rest) < len(text):
                text, sep = rest.lstrip(" "), " "
                if not text:
                    return False
        out.append(Word(text, sep, breaks, starts_line, source))
        self._last_text = text
        return True


def _raw_offsets(raw: str, mapped: str) -> Callable[[int], int]:
    """Maps an offset in `mapped` (= raw.translate(_CHAR_TABLE)) to the offset in `raw` where the characters
    that produced it end."""
    if mapped == raw:
        return lambda offset: offset
    ends = list(accumulate(len(_CHAR_TABLE[ord(char)]) for char in raw))
    return lambda offset: 0 if offset == 0 else bisect_left(ends, offset) + 1


def normalize_stream(text: str, tags: frozenset[str] = frozenset()) -> str:
    normalizer = StreamNormalizer(tags)
    words = normalizer.feed(text) + normalizer.finish()
    return "".join(word.sep + word.text for word in words)


_LEADING_MARKS = re.compile(r"^[\s,.!?]+")
_LEADING_TAGS = re.compile(r"(?:\[[^\]]*\] *)*")


def _split_final_marks(text: str) -> tuple[str, str, str]:
    """(body, its final ",.!?" run, the closing quotes and brackets after it); rstrip, not a regex, so that a
    long run of marks costs linear time."""
    without_closers = text.rstrip(CLOSING_MARKS)
    body = without_closers.rstrip(_FINAL_MARKS)
    return body, without_closers[len(body):], text[len(without_closers):]


def _capitalise(text: str) -> str:
    """Upper-case the first letter, also behind opening quotes (`punc_norm` only looks at the first one), but
    not inside leading [tags] (the normalizer leaves brackets only around a model's tags)."""
    start = _LEADING_TAGS.match(text).end()  # type: ignore[union-attr]  # it matches the empty string
    start += len(text[start:]) - len(text[start:].lstrip(OPENING_MARKS))
    if text[start:start + 1].islower():
        return text[:start] + text[start].upper() + text[start + 1:]
    return text


def prepare_for_engine(chunk_text: str, ends_sentence: bool) -> str:
    """What the engine speaks for one chunk; "" when there is nothing to say.

    A chunk that ends a sentence ends in ". ! ?" (a trailing comma becomes a full stop); one cut mid-sentence
    ends in "," so that Chatterbox neither appends a full stop nor gives it a final fall. Final punctuation
    goes after closing quotes and brackets, because `punc_norm` only looks at the very last character.
    """
    text = _LEADING_MARKS.sub("", chunk_text.strip())
    if not any(char.isalnum() for char in text):
        return ""
    body, marks, closers = _split_final_marks(_capitalise(text))
    marks = marks.rstrip("," + SPACELESS_CLAUSE_MARKS) if ends_sentence else marks
    if ends_sentence:
        final = marks if marks else "."
    elif marks.endswith(("!", "?", ",", *SPACELESS_MARKS)):
        final = marks
    else:
        final = marks + ","  # "the U.S.," keeps the abbreviation and still continues
    return body + closers + final
