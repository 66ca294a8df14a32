"""Word start/end times measured from the alignment guard's text position per speech token.

A chunk's speech tokens last 1/25 s each. After every token the guard reports the furthest text position the
aligned heads have reached (`T3Decoder.spoken_text_positions`, monotone; 0 is the start-of-text token, so the
chunk's i-th text token is position i + 1). A word starts at the first speech token whose position reaches the
word's first text token and ends where the next word starts (the last word ends with the audio). Words the
heads never reached (a stop forced early) are placed at the end with zero length, so every word of the chunk
gets a time, in order, inside the chunk's audio.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from itertools import pairwise

SPEECH_TOKENS_PER_SECOND = 25


def words_of_tokens(text_tokens: Sequence[int], separator: int) -> list[int | None]:
    """Word index of each text token (tokens as the tokenizer returned them, without start/end of text): a new
    word after each `separator` run (the `[SPACE]` token); the separator itself belongs to no word."""
    words: list[int | None] = []
    word, in_word = -1, False
    for token in text_tokens:
        if token == separator:
            words.append(None)
            in_word = False
            continue
        if not in_word:
            word, in_word = word + 1, True
        words.append(word)
    return words


def word_times(spoken: Sequence[int], token_words: Sequence[int | None],
               tokens_per_second: int = SPEECH_TOKENS_PER_SECOND) -> list[tuple[float, float]]:
    """(start, end) seconds of each word, from the text position reached after each speech token of a chunk.
    `token_words` is `words_of_tokens` of the chunk's text tokens."""
    starts = _starts(spoken, token_words, tokens_per_second, reached_only=False)
    return list(zip(starts, [*starts[1:], len(spoken) / tokens_per_second]))


def word_starts(spoken: Sequence[int], token_words: Sequence[int | None],
                tokens_per_second: int = SPEECH_TOKENS_PER_SECOND) -> list[float]:
    """While a chunk is being spoken: the start of each word the heads have reached so far, in order."""
    return _starts(spoken, token_words, tokens_per_second, reached_only=True)


def _starts(spoken: Sequence[int], token_words: Sequence[int | None], tokens_per_second: int,
            reached_only: bool) -> list[float]:
    if any(later < earlier for earlier, later in pairwise(spoken)):
        raise ValueError("spoken text positions must be monotone")
    first_token: dict[int, int] = {}
    for index, word in enumerate(token_words):
        if word is not None:
            first_token.setdefault(word, index + 1)  # +1: position 0 is the start-of-text token
    reached = [bisect_left(spoken, first_token[word]) for word in sorted(first_token)]
    if reached_only:
        reached = [token for token in reached if token < len(spoken)]
    starts = [min(token, len(spoken)) / tokens_per_second for token in reached]
    if starts:
        starts[0] = 0.0  # the first word owns the audio before the heads settle on it
    return starts
