"""Word times from the alignment guard's spoken text positions: ordered, inside the audio, every word covered."""

from __future__ import annotations

from itertools import pairwise

import pytest
import torch
from test_mtl_decoder import MTL_SETTINGS, STOP, biased, decoder

from app.engine.chatterbox.mtl_checkpoint import build_mtl_tokenizer
from app.engine.chatterbox.word_timing import word_times, words_of_tokens

SPACE = 2


def _check(times: list[tuple[float, float]], n_words: int, n_speech_tokens: int) -> None:
    assert len(times) == n_words
    flat = [t for pair in times for t in pair]
    assert flat == sorted(flat) and flat[0] == 0.0 and flat[-1] == pytest.approx(n_speech_tokens / 25)
    assert all(end == next_start for (_, end), (next_start, _) in pairwise(times))


def test_words_of_tokens_splits_on_the_space_token():
    assert words_of_tokens([40, 7, 8, SPACE, 9, SPACE, SPACE, 10, 11], SPACE) == [0, 0, 0, None, 1, None, None, 2, 2]


def test_word_times_follow_the_spoken_positions():
    token_words = words_of_tokens([7, 8, SPACE, 9, 10, SPACE, 11], SPACE)  # words at positions 1, 4, 7
    spoken = [0, 0, 1, 2, 3, 4, 4, 5, 6, 7, 7, 8]
    times = word_times(spoken, token_words)
    assert times == [(0.0, 0.2), (0.2, 0.36), (0.36, 12 / 25)]
    _check(times, 3, len(spoken))


def test_words_never_reached_get_zero_length_at_the_end():
    times = word_times([0, 1, 1, 2], words_of_tokens([7, SPACE, 9, SPACE, 11], SPACE))
    assert times == [(0.0, 0.16), (0.16, 0.16), (0.16, 0.16)]  # positions 3 and 5 never reached
    _check(times, 3, 4)


def test_non_monotone_positions_are_refused():
    with pytest.raises(ValueError):
        word_times([0, 2, 1], [0, 0])


def test_measured_on_the_multilingual_decoder(mtl_t3, mtl_cond):
    tokenizer = build_mtl_tokenizer()
    ids = tokenizer.encode("[de]guten[SPACE]tag,[SPACE]wie[SPACE]geht[SPACE]es").ids
    dec = decoder(biased(mtl_t3, STOP), greedy=True, alignment_guard=True)
    dec.add("a", mtl_cond, torch.tensor(ids), MTL_SETTINGS)
    tokens, spoken = [], []
    while len(tokens) < 80 and (not tokens or tokens[-1] != STOP):
        tokens.append(dec.step(["a"]).item())
        spoken.append(dec.spoken_text_positions(["a"]).item())
    times = word_times(spoken, words_of_tokens(ids, SPACE))
    _check(times, 5, len(spoken))
    assert spoken[-1] >= len(ids) - 1  # the stop came once the heads reached the end of the text
