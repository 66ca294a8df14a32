"""Turn a streamed LLM reply into speakable chunks as soon as each is safe to say.

The chunker reads the stream through `StreamNormalizer`, which emits a word only once the next non-space
character has arrived, and cuts only between emitted words. So a chunk never ends inside a word, a number,
a URL or an e-mail address, and the chunks' texts rejoin exactly to `normalize_stream` of all input.

Where it may cut (strongest first):
- sentence: after ". ! ?" (and closing quotes/brackets after them), or at a line break;
- clause: after "," (the normalizer turned ; : — and ellipses into commas);
- word: anywhere else between words, e.g. after "U.S." or "etc." which end sentences only sometimes (used only
  by the deadline and the length budget, which avoid ending on a function word such as "of" or "the");
- never: after a title or an initial ("Mr.", "e.g.", "J."), after a list number at a line start ("2."),
  or before punctuation that attaches to the word before it.
A boundary after the last word waits for the first character of the next one: "$29." + "99" is one word, and
"." "!" "?" before a lower-case word are only clause ends ('"Why?" she asked').

When it cuts (`reason`):
- first chunk: at the first clause or sentence boundary past `first_chunk_min_chars` ("boundary"), else at
  the last word boundary once `first_chunk_max_chars` is exceeded ("max_length") or `first_chunk_max_wait_s`
  after its first text arrived ("deadline"): small, to cut time to first audio;
- later chunks, by how much audio is queued ahead of playback (`buffered_audio_s`):
  up to `low_buffer_s` like a first chunk (the last clause or sentence boundary past `min_chunk_chars`, or a
  word boundary `first_chunk_max_wait_s` after the previous release); up to `healthy_buffer_s` at each sentence
  end; above it sentences are packed until the budget of `chunk_size` tokens is reached ("max_length").
  `next_deadline` includes the moment the queued audio will have drained into the next lower band.
- `flush` and `end` release everything, split at the budget ("flush", "end").
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field, replace
from enum import IntEnum
from itertools import pairwise

from app.text.normalize import (
    CLOSING_MARKS,
    OPENING_MARKS,
    SPACELESS_CLAUSE_MARKS,
    SPACELESS_MARKS,
    SPACELESS_SENTENCE_MARKS,
    Lookahead,
    StreamNormalizer,
    Word,
    normalize_word,
    prepare_for_engine,
)


@dataclass(frozen=True)
class ChunkerConfig:
    chunk_size: int = 50  # budget in LLM tokens (25..200); chunks hold at most chunk_size * chars_per_token chars
    first_chunk_min_chars: int = 12  # a first chunk is released at the first clause boundary past this
    # A chunk still waiting this long after its first text arrived may be cut by the deadline (low buffer only).
    first_chunk_max_wait_s: float = 0.6
    # ...but only leaving at least this much: a sentence shorter than it is always waited for, so a slow
    # LLM's "Let me check that for you." is one chunk, not "Let me check" | "that for you."
    deadline_min_chars: int = 32
    # A word ending a sentence, then silence (a tool call, a slow LLM): released whole after this hold...
    sentence_hold_s: float = 0.35
    # ...or after this many of the stream's own token intervals, when longer: at 2 tokens/s "$29." + "99"
    # or "Jan." + " 5th" must not be taken for a sentence end during the ordinary wait for the next token.
    sentence_hold_tokens: float = 2.5
    # A first chunk longer than this is cut at a word boundary: it should be a clause, not a whole sentence.
    first_chunk_max_chars: int = 40
    # English LLM tokenizers average about 4 characters per token.
    chars_per_token: float = 4.0
    # Later chunks are not cut at a boundary before this: a two-word chunk costs a generation and sounds clipped.
    min_chunk_chars: int = 24
    # Queued audio at or below this risks an underrun: release at clause boundaries, and at words after a deadline.
    low_buffer_s: float = 1.0
    # Queued audio above this leaves time to pack whole sentences up to the budget (better prosody, fewer
    # generations); in between, each sentence is released as it ends.
    healthy_buffer_s: float = 4.0
    # A word (URL, number, code) is never split below this length; a longer run without a space is cut into
    # pieces of it, so no chunk exceeds max_chars + max_word_chars: the models' text limit, not a soft budget.
    max_word_chars: int = 600
    # The model's bracketed tags (Turbo's "[laugh]", lower case): kept whole and spoken as tags, never split.
    tags: frozenset[str] = frozenset()
    language: str = "en"  # the text's language (ISO 639-1): its marks and how many characters make a token

    def __post_init__(self) -> None:
        if not 25 <= self.chunk_size <= 200:
            raise ValueError("chunk_size must be between 25 and 200")
        if not 0 < self.first_chunk_min_chars <= self.first_chunk_max_chars:
            raise ValueError("need 0 < first_chunk_min_chars <= first_chunk_max_chars")
        if not 0 <= self.low_buffer_s <= self.healthy_buffer_s:
            raise ValueError("need 0 <= low_buffer_s <= healthy_buffer_s")
        if self.max_word_chars < 2:
            raise ValueError("max_word_chars must be at least 2")
        if self.first_chunk_max_wait_s < 0 or self.sentence_hold_s < 0 or self.sentence_hold_tokens < 0:
            raise ValueError("waits and holds cannot be negative")
        if self.deadline_min_chars < 0:
            raise ValueError("deadline_min_chars cannot be negative")

    @property
    def max_chars(self) -> int:
        return int(self.chunk_size * self.chars_per_token)

    def for_language(self, language: str) -> ChunkerConfig:
        """These rules for text in `language`: scripts without spaces carry about a token per character, not
        four, so every length in characters shrinks with `chars_per_token` (budgets stay in tokens)."""
        per_token = _CHARS_PER_TOKEN.get(language, self.chars_per_token)
        scale = per_token / self.chars_per_token

        def scaled(chars: int) -> int:
            return max(1, round(chars * scale))

        return replace(self, language=language, chars_per_token=per_token,
                       first_chunk_min_chars=scaled(self.first_chunk_min_chars),
                       first_chunk_max_chars=scaled(self.first_chunk_max_chars),
                       min_chunk_chars=scaled(self.min_chunk_chars), deadline_min_chars=scaled(self.deadline_min_chars),
                       max_word_chars=max(2, scaled(self.max_word_chars)))


# Characters per LLM/model text token where it differs from English's four: Chinese and Japanese are written
# without spaces (about a token per character); Korean words are short.
_CHARS_PER_TOKEN = {"zh": 1.0, "ja": 1.0, "ko": 2.0}


@dataclass(frozen=True)
class TextChunk:
    index: int
    text: str  # normalized slice of the stream; the chunks rejoin exactly to normalize_stream(all input)
    speak_text: str  # prepare_for_engine(text, ends_sentence); "" only for a final chunk of bare punctuation
    ends_sentence: bool
    reason: str  # "boundary" | "max_length" | "deadline" | "flush" | "end"
    first_text_at: float | None = None  # the `now` of the push that brought this chunk's first text
    # The caller's own characters for it, whitespace before it included: every transcript a client reads
    # carries these (the normalized `text` is what the model hears); the chunks' sources rejoin to the input.
    source: str = ""


class _Kind(IntEnum):
    NEVER = 0
    ATOM = 1  # inside an atom (a number with its neighbours, code, a command line): only when nothing else fits
    WEAK_WORD = 2  # after a function word: "overview of | how" leaves the listener hanging
    WORD = 3
    CLAUSE = 4
    SENTENCE = 5


class _Band(IntEnum):
    LOW = 0
    NORMAL = 1
    HEALTHY = 2


# Never end a sentence: they announce the next word.
_TITLES = frozenset(
    "mr. mrs. ms. mx. dr. prof. st. mt. ft. rev. hon. gen. col. capt. lt. sgt. gov. sen. rep. pres. vs. v. "
    "e.g. i.e. cf. approx. ca. fig. figs. vol. eq. ch. sec. pp. dept. est. viz. resp.".split()
)
# May end a sentence, but just as often do not ("the U.S. Army", "etc. and"): only a word boundary, so a
# true sentence end after them costs some waiting, never a falling tone mid-sentence.
_AMBIGUOUS = frozenset("etc. inc. ltd. co. corp. jr. sr. al. ph.d.".split())
_INITIAL = re.compile(r"[^\W\d_]\.")  # "J. K. Rowling"
_INITIALISM = re.compile(r"(?:[^\W\d_]\.){2,}")  # "U.S.", "a.m."
_FUNCTION_WORDS = frozenset(
    "a an the of to in on at by for with from into onto about as and or but nor so if than that which who "
    "whom whose what when where while how why is are was were be been am do does did has have had will would "
    "can could should may might must shall not my your his her its our their this these those it i you he "
    "she we they me him us them very more most just also then there here".split()
)
_LIST_NUMBER = re.compile(r"\d{1,3}[.)]")
_NUMBER_HEAD = re.compile(r"[(\[]?[-+$\u20ac\u00a3\u00a5#~]?\d")
_MONTHS = frozenset(
    "jan. feb. mar. apr. jun. jul. aug. sep. sept. oct. nov. dec. jan feb mar apr jun jul aug sep sept oct nov "
    "dec january february march april may june july august september october november december".split()
)
_WEEKDAYS = frozenset("monday tuesday wednesday thursday friday saturday sunday mon tue tues wed thu thurs fri sat "
                      "sun".split())
# Programs and their subcommands, whose next word is their argument: a command line read as one phrase.
_COMMANDS = frozenset("pip pip3 pipx npm npx yarn pnpm git docker kubectl helm curl wget sudo apt apt-get brew "
                      "python python3 node cargo go make cd ls cat grep ssh scp chmod uv conda install uninstall "
                      "run exec compose clone checkout commit push pull get apply sync".split())
# A next word starting with one of these may still turn into punctuation that attaches to the word before
# ("wait ..." -> "wait,") or vanish (markdown): the boundary before it is not known yet.
_UNSETTLED_HEADS = frozenset(",.!?;:\u2026\u2013\u2014\u2015-*_`~[]\\")
_SPEAKABLE = re.compile(r"[^\W_]")
# The rules look at most this far into a word (its end, or the next one's start): a hostile run of thousands of
# characters without a space costs each push a constant, not its length.
_CONTEXT_CHARS = 64


def _boundary_kind(word: str, starts_line: bool, next_head: str, next_breaks: int) -> _Kind:
    """How strong a cut between `word` and a next word starting with `next_head` would be."""
    if starts_line and _LIST_NUMBER.fullmatch(word) and not next_breaks:
        return _Kind.NEVER  # "2. Apples": the number belongs to its item
    if next_breaks:
        return _Kind.SENTENCE
    core = word.rsplit(" ", 1)[-1].rstrip(CLOSING_MARKS)
    mark = core[-1:]
    next_is_lower = next_head[:1].islower()
    if mark in SPACELESS_SENTENCE_MARKS:
        return _Kind.SENTENCE  # 。！？ । ؟: no case to tell a quoted question from a sentence end
    if mark in SPACELESS_CLAUSE_MARKS:
        return _Kind.CLAUSE
    if mark in ("!", "?"):
        return _Kind.CLAUSE if next_is_lower else _Kind.SENTENCE  # '"Why?" she asked'
    if mark == ".":
        stem = core.lstrip(OPENING_MARKS).lower()
        if stem in _TITLES or _INITIAL.fullmatch(stem) or (stem in _MONTHS and _starts_number(next_head)):
            return _Kind.NEVER  # "Dr. Who", "J. K.", "Jan. 5th"
        if stem in _AMBIGUOUS or _INITIALISM.fullmatch(stem) or (stem == "no." and next_head[:1].isdigit()):
            return _Kind.WORD
        return _Kind.CLAUSE if next_is_lower else _Kind.SENTENCE
    if _joins_number(core, mark, next_head):
        return _Kind.ATOM
    if mark == ",":
        return _Kind.CLAUSE
    if core.lower() in _FUNCTION_WORDS:
        return _Kind.WEAK_WORD
    if core[:1].isupper() and next_head[:1].isupper():
        return _Kind.ATOM  # a name: "Jane | Doe", "New | York"
    return _Kind.WORD


def _starts_number(head: str) -> bool:
    """'5th', '+1', '$29', '(555)', '-3'."""
    return bool(_NUMBER_HEAD.match(head))


def _joins_number(core: str, mark: str, next_head: str) -> bool:
    """A number goes with its neighbours: its unit or noun ("5 p.m.", "3.5 GB"), the word that names it
    ("room 12"), the next group of a phone number or date ("(555) 010", "5th, 2025", "Monday, May 5")."""
    if _starts_number(next_head):
        return True
    if mark == ",":
        return core[:-1].lower() in _WEEKDAYS and next_head.rstrip(".,").lower() in _MONTHS
    return any(char.isdigit() for char in core)


def _command_atom(left_source: str, next_source: str) -> bool:
    """Words of a command line: "pip | install", "install | -U", "-U | foo"."""
    left = left_source[-_CONTEXT_CHARS:].split()[-1:] or [""]
    right = next_source.split()[:1] or [""]
    return left[0].lower() in _COMMANDS or left[0].startswith("-") or right[0].startswith("-")


def _backticks_before_text(source: str) -> int:
    """Backticks the caller wrote before a word's first letter or digit (an opening or closing code mark)."""
    speakable = _SPEAKABLE.search(source)
    return source[:speakable.start() if speakable else len(source)].count("`")


def _piece_end(word: str, limit: int) -> int:
    """Where to cut an overlong word: after the last non-alphanumeric character in its second half-limit
    ("…/path/" of a URL, "a.b." of a dotted run), else at the limit."""
    for index in range(limit - 1, limit // 2 - 1, -1):
        if not word[index].isalnum():
            return index + 1
    return limit


def _source_cut(source: str, text: str, cut: int) -> int:
    """Where to split the caller's characters of a word whose normalized `text` is cut at `cut`: before the
    same tail when the source ends with it (the usual case: nothing in the word was rewritten), else at the
    same proportion."""
    tail = text[cut:]
    if source.endswith(tail):
        return len(source) - len(tail)
    return round(len(source) * cut / len(text))


@dataclass
class _Unit:
    """A word of the pending text, with the punctuation that attached to it."""

    end: int  # offset in the pending text where it ends
    text: str
    starts_line: bool
    arrived: float
    source: str  # the caller's characters of it
    after: _Kind | None = None  # the boundary after it, known once the next unit arrived


@dataclass(frozen=True)
class _Cut:
    end: int
    kind: _Kind
    unit: int


@dataclass
class _Pending:
    text: str = ""
    units: list[_Unit] = field(default_factory=list)


class AdaptiveChunker:
    def __init__(self, config: ChunkerConfig = ChunkerConfig()) -> None:
        self.config = config
        self._index = 0
        self._now = 0.0
        self._buffered_s = 0.0
        self._head_since: float | None = None  # when the next, not yet emitted word started arriving
        self._released_at: float | None = None
        self._arrivals: deque[tuple[float, int]] = deque(maxlen=8)  # (time, characters) of recent pushes
        self._reset_stream()

    @property
    def pending_chars(self) -> int:
        return len(self._pending.text) + self._normalizer.pending_chars

    def push(self, text: str, now: float, buffered_audio_s: float = 0.0) -> list[TextChunk]:
        self._observe(now, buffered_audio_s)
        self._note_arrival(text)
        head_since = self._head_since
        words = self._normalizer.feed(text)
        for i, word in enumerate(words):
            self._add(word, head_since if i == 0 and head_since is not None else now)
        if self._normalizer.lookahead is None:
            self._head_since = None
        elif words or self._head_since is None:
            self._head_since = now
        return self._release_due()

    def poll(self, now: float, buffered_audio_s: float = 0.0) -> list[TextChunk]:
        self._observe(now, buffered_audio_s)
        return self._release_due()

    def next_deadline(self) -> float | None:
        """When `poll` could next release something without new text (None: only new text can)."""
        if not self._pending.units and self._normalizer.lookahead is None:
            return None
        times = []
        if not self._held and self._sentence_awaits_hold():
            assert self._last_text_at is not None
            times.append(self._last_text_at + self._hold_s())
        band = self._band()
        if self._first or band is _Band.LOW:
            times.append(self._wait_start() + self.config.first_chunk_max_wait_s)  # past: no word boundary yet
        if not self._first and band is not _Band.LOW and self._pending.units:
            # Playback drains the queued audio; at the lower band more becomes releasable.
            times.append(self._now + self._buffered_s - self.config.low_buffer_s)
            if band is _Band.HEALTHY:
                times.append(self._now + self._buffered_s - self.config.healthy_buffer_s)
        return min((time for time in times if time > self._now), default=None)

    def flush(self) -> list[TextChunk]:
        """Everything buffered, now. The last chunk ends a sentence unless its text ends in a comma; text that
        has nothing to say (bare punctuation) waits for more."""
        self._add_all(self._normalizer.flush())
        chunks = self._drain("flush")
        if self._pending.text and _SPEAKABLE.search(self._pending.text):
            ends = not self._pending.text.rstrip(CLOSING_MARKS).endswith(",")
            chunks.append(self._release_all("flush", ends))
        return chunks

    def end(self) -> list[TextChunk]:
        """Everything buffered; no more text will come. The chunker is then ready for a new stream."""
        self._add_all(self._normalizer.finish())
        chunks = self._drain("end")
        if self._pending.units:  # a unit without text: the caller's characters after the last released word
            chunks.append(self._release_all("end", ends_sentence=True))
        self._reset_stream()
        return chunks

    def clear(self) -> None:
        """Barge-in: drop buffered text; the next text starts a new reply (with a small first chunk)."""
        self._reset_stream()

    # -- state --------------------------------------------------------------------------------------------

    def _reset_stream(self) -> None:
        self._normalizer = StreamNormalizer(self.config.tags, self.config.language)
        self._pending = _Pending()
        self._first = True
        self._head_since = None
        self._released_at = None
        self._last_text_at: float | None = None
        self._held = False  # the last pending unit ends a sentence: silence followed it (`_settle_held_sentence`)
        self._code_open = False  # an odd number of backticks so far: inside `code`
        self._brackets_open = 0  # "[" not closed yet

    def _note_arrival(self, text: str) -> None:
        if text:
            self._arrivals.append((self._now, len(text)))
            self._last_text_at = self._now

    def _token_interval_s(self) -> float:
        """The stream's typical time per LLM token: the median over its last pushes of each push's wait divided
        by the tokens it brought, at least one (a burst of whole sentences counts as fast, one pause does not
        count)."""
        per_token = sorted((later - earlier) / max(1.0, chars / self.config.chars_per_token)
                           for (earlier, _), (later, chars) in pairwise(self._arrivals))
        return per_token[len(per_token) // 2] if per_token else 0.0

    def _hold_s(self) -> float:
        return max(self.config.sentence_hold_s, self.config.sentence_hold_tokens * self._token_interval_s())

    def _sentence_awaits_hold(self) -> bool:
        """The word being read ends a sentence if nothing follows it ("you." then silence), not an
        abbreviation that announces more ("Mr.", "J.")."""
        lookahead = self._normalizer.lookahead
        if lookahead is None or self._last_text_at is None:
            return False
        word = normalize_word(lookahead.head[-_CONTEXT_CHARS:], starts_line=False, language=self.config.language)
        if not word.rstrip(CLOSING_MARKS).endswith((".", "!", "?", *SPACELESS_SENTENCE_MARKS)):
            return False
        return _boundary_kind(word, False, "A", 0) is not _Kind.NEVER

    def _settle_held_sentence(self) -> None:
        """After the hold, the word being read is taken as complete and as a sentence end."""
        if self._held or not self._sentence_awaits_hold():
            return
        assert self._last_text_at is not None
        if self._now < self._last_text_at + self._hold_s():
            return
        words = self._normalizer.flush()
        self._add_all(words)
        if words and self._pending.units:  # the word may have said nothing (markup)
            self._pending.units[-1].after = _Kind.SENTENCE
            self._held = True

    def _observe(self, now: float, buffered_audio_s: float) -> None:
        self._now = now
        self._buffered_s = buffered_audio_s

    def _add_all(self, words: list[Word]) -> None:
        arrived = self._head_since if self._head_since is not None else self._now
        for word in words:
            self._add(word, arrived)
        self._head_since = None

    def _add(self, word: Word, arrived: float) -> None:
        self._held = False
        pending = self._pending
        pending.text += word.sep + word.text
        units = pending.units
        if word.sep == "" and units and not units[-1].text.endswith(tuple(SPACELESS_MARKS)):
            units[-1].text += word.text
            units[-1].end = len(pending.text)
            units[-1].source += word.source
            units[-1].after = None  # "$29." held as a sentence end, then "99": not one after all
        else:
            if units:
                units[-1].after = self._kind_between(units[-1], word.text, word.breaks_before, word.source)
            units.append(_Unit(len(pending.text), word.text, word.starts_line, arrived, word.source))
        self._code_open ^= word.source.count("`") % 2 == 1
        self._brackets_open = max(0, self._brackets_open + word.source.count("[") - word.source.count("]"))
        self._split_overlong_word()

    def _kind_between(self, left: _Unit, next_text: str, next_breaks: int, next_source: str) -> _Kind:
        """The boundary between `left` (the last unit) and the next word: by their texts, then by what the
        caller wrote (inside `code`, between the words of a command line: only as a last resort)."""
        kind = _boundary_kind(left.text, left.starts_line, next_text, next_breaks)
        if kind is _Kind.NEVER:
            return kind
        if (self._code_open and _backticks_before_text(next_source) % 2 == 0) or self._brackets_open:
            return _Kind.ATOM  # inside `code`, or a [tag] or [link text] of several words
        if kind <= _Kind.WORD and _command_atom(left.source, next_source):
            return _Kind.ATOM
        return kind

    def _split_overlong_word(self) -> None:
        """A word longer than `max_word_chars` (a run of thousands of characters without a space) becomes
        pieces of at most that, each cut after its last punctuation past half the limit where it has one,
        mid-word only where it has none: the engine cannot take an unbounded chunk."""
        units = self._pending.units
        limit = self.config.max_word_chars
        while len(units[-1].text) > limit:
            last = units[-1]
            cut = _piece_end(last.text, limit)
            source_cut = _source_cut(last.source, last.text, cut)
            head = _Unit(last.end - len(last.text) + cut, last.text[:cut], last.starts_line, last.arrived,
                         last.source[:source_cut], after=_Kind.WORD)
            last.text, last.starts_line, last.source = last.text[cut:], False, last.source[source_cut:]
            units.insert(len(units) - 1, head)

    def _band(self) -> _Band:
        if self._buffered_s <= self.config.low_buffer_s:
            return _Band.LOW
        if self._buffered_s <= self.config.healthy_buffer_s:
            return _Band.NORMAL
        return _Band.HEALTHY

    def _wait_start(self) -> float:
        units = self._pending.units
        arrived = units[0].arrived if units else self._head_since
        if arrived is None:
            return self._now
        return arrived if self._released_at is None else max(arrived, self._released_at)

    def _budget(self) -> int:
        return self.config.first_chunk_max_chars if self._first else self.config.max_chars

    def _floor(self) -> int:
        return self.config.first_chunk_min_chars if self._first else self.config.min_chunk_chars

    # -- where to cut --------------------------------------------------------------------------------------

    def _last_kind(self, lookahead: Lookahead | None) -> _Kind:
        if lookahead is None or lookahead.head[0] in _UNSETTLED_HEADS:
            return _Kind.NEVER  # not confirmed yet
        head = lookahead.head[:_CONTEXT_CHARS]
        return self._kind_between(self._pending.units[-1], head, lookahead.breaks_before, head)

    def _cuts(self) -> list[_Cut]:
        """The places the pending text may be cut now, in order, up to the first one past the budget.

        A chunk must have something to say, so no cut comes before the first letter or digit.
        """
        units = self._pending.units
        speakable = _SPEAKABLE.search(self._pending.text)
        if not units or speakable is None:
            return []
        budget = self._budget()
        cuts = []
        for i, unit in enumerate(units):
            kind = unit.after if unit.after is not None else self._last_kind(self._normalizer.lookahead)
            if kind and unit.end > speakable.start():
                cuts.append(_Cut(unit.end, kind, i))
                if unit.end > budget and (kind >= _Kind.WORD or unit.end > 2 * budget):
                    break
        return cuts

    @staticmethod
    def _best(cuts: list[_Cut], lo: int, hi: int, weakest: _Kind) -> _Cut | None:
        """The last cut of the strongest kind (at least `weakest`) ending within [lo, hi]."""
        for kind in sorted(_Kind, reverse=True):
            if kind < weakest or kind is _Kind.NEVER:
                break
            found = [cut for cut in cuts if cut.kind == kind and lo <= cut.end <= hi]
            if found:
                return found[-1]
        return None

    def _length_cut(self, cuts: list[_Cut]) -> _Cut | None:
        """Where to cut text over the budget: the best boundary within it, else after the first word that
        overruns it; after a function word or inside an atom only when neither exists (up to twice the budget)."""
        budget = self._budget()
        return (self._best(cuts, self._floor(), budget, _Kind.WORD) or self._best(cuts, 1, budget, _Kind.WORD)
                or next((cut for cut in cuts if cut.end > budget and cut.kind >= _Kind.WORD), None)
                or self._best(cuts, 1, budget, _Kind.ATOM) or next((cut for cut in cuts if cut.end > budget), None))

    def _deadline_due(self, cuts: list[_Cut]) -> tuple[_Cut, str] | None:
        """A clause, else a word that splits no atom and is no function word, leaving `deadline_min_chars`."""
        cut = self._best(cuts, self.config.deadline_min_chars, self._budget(), _Kind.WORD)
        return (cut, "deadline") if cut else None

    def _due(self) -> tuple[_Cut, str] | None:
        cuts = self._cuts()
        if not cuts:
            return None
        config = self.config
        if len(self._pending.text) > self._budget():
            cut = self._length_cut(cuts)
            return (cut, "max_length") if cut else None
        if self._held and (self._first or self._band() is not _Band.HEALTHY):
            return cuts[-1], "hold"  # the sentence the silence ended, whatever its length
        deadline_passed = self._now >= self._wait_start() + config.first_chunk_max_wait_s
        if self._first:
            cut = next((cut for cut in cuts if cut.kind >= _Kind.CLAUSE and cut.end >= self._floor()), None)
            if cut:
                return cut, "boundary"
            return self._deadline_due(cuts) if deadline_passed else None
        band = self._band()
        if band is _Band.HEALTHY:
            return None
        weakest = _Kind.CLAUSE if band is _Band.LOW else _Kind.SENTENCE
        cut = self._best(cuts, self._floor(), self._budget(), weakest)
        if cut:
            return cut, "boundary"
        if band is _Band.LOW and deadline_passed:
            return self._deadline_due(cuts)
        return None

    # -- releasing -----------------------------------------------------------------------------------------

    def _release_due(self) -> list[TextChunk]:
        self._settle_held_sentence()
        chunks = []
        while (due := self._due()) is not None:
            cut, reason = due
            chunks.append(self._release(cut.end, cut.unit, reason, cut.kind is _Kind.SENTENCE))
        return chunks

    def _drain(self, reason: str) -> list[TextChunk]:
        """Release budget-sized chunks while the pending text exceeds the budget."""
        chunks = []
        while len(self._pending.text) > self._budget() and (cut := self._length_cut(self._cuts())):
            chunks.append(self._release(cut.end, cut.unit, reason, cut.kind is _Kind.SENTENCE))
        return chunks

    def _release_all(self, reason: str, ends_sentence: bool) -> TextChunk:
        return self._release(len(self._pending.text), len(self._pending.units) - 1, reason, ends_sentence)

    def _release(self, end: int, unit: int, reason: str, ends_sentence: bool) -> TextChunk:
        pending = self._pending
        text, arrived = pending.text[:end], pending.units[0].arrived if pending.units else None
        source = "".join(released.source for released in pending.units[:unit + 1])
        rest = pending.units[unit + 1:]
        for kept in rest:
            kept.end -= end
        self._held = self._held and bool(rest)
        self._pending = _Pending(pending.text[end:], rest)
        chunk = TextChunk(self._index, text, prepare_for_engine(text, ends_sentence), ends_sentence, reason,
                          arrived, source)
        self._index += 1
        self._first = False
        self._released_at = self._now
        return chunk
