"""Batched sampling (`sampling.py`): per-row parameters with Hugging Face's semantics, rows independent of each
other, and a seeded stream's draws the same alone or in any batch."""

from __future__ import annotations

import torch
from transformers.generation.logits_process import MinPLogitsWarper, RepetitionPenaltyLogitsProcessor, TopPLogitsWarper

from app.engine.chatterbox import sampling

VOCAB = 300


def test_logit_processing_matches_hugging_face_per_row():
    generator = torch.Generator().manual_seed(0)
    rows, vocab = 4, 300
    logits = torch.randn(rows, vocab, generator=generator) * 3
    history = [torch.randint(0, vocab, (1, n), generator=generator) for n in (1, 5, 20, 40)]
    params = [(0.5, 1.2, 0.8, 0.05, 1.0), (0.0, 1.5, 1.3, 0.1, 0.9), (1.5, 1.0, 0.5, 0.0, 0.5),
              (0.0, 2.0, 1.0, 0.2, 0.3)]
    partner = torch.tensor([1, 1, 0, 3])  # row 0 is guided by row 1; row 2 by row 0
    seen = torch.zeros(rows, vocab, dtype=torch.bool)
    for row, ids in enumerate(history):
        seen[row, ids[0]] = True
    column = lambda i: torch.tensor([p[i] for p in params], dtype=torch.float32)
    ours = sampling.process_logits(
        logits, partner=partner, cfg_weight=column(0), seen=seen, repetition_penalty=column(1),
        temperature=column(2), min_p=column(3), top_p_floor=torch.tensor([1.0 - p[4] for p in params]),
    )
    for row, (cfg, penalty, temperature, min_p, top_p) in enumerate(params):
        cond, uncond = logits[row:row + 1], logits[partner[row]][None]
        x = cond + torch.as_tensor(cfg) * (cond - uncond)
        x = RepetitionPenaltyLogitsProcessor(penalty=penalty)(history[row], x)
        x = x / temperature
        x = MinPLogitsWarper(min_p=min_p)(history[row], x)
        x = TopPLogitsWarper(top_p=top_p)(history[row], x)
        assert torch.equal(ours[row], x[0])
    assert (ours == float("-inf")).any(dim=-1).all()  # every row was really filtered


def test_sampling_draws_from_the_softmax_and_depends_only_on_key_and_counter():
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4])
    draws = 40_000
    logits = probs.log().expand(draws, -1)
    keys = torch.full((draws,), sampling.stream_key(123))
    counters = torch.arange(draws)
    vocab_hash = sampling.vocab_hashes(4, "cpu")
    tokens = sampling.sample_tokens(logits, keys, counters, vocab_hash, greedy=False)
    frequencies = torch.bincount(tokens, minlength=4) / draws
    assert (frequencies - probs).abs().max() < 0.01  # ~4 standard deviations
    again = sampling.sample_tokens(logits[:50], keys[:50], counters[:50], vocab_hash, greedy=False)
    assert torch.equal(again, tokens[:50])
    other_key = torch.full((50,), sampling.stream_key(124))
    assert not torch.equal(sampling.sample_tokens(logits[:50], other_key, counters[:50], vocab_hash, False),
                           tokens[:50])
    noise = sampling.uniform_noise(keys[:1000], counters[:1000], sampling.vocab_hashes(64, "cpu"))
    assert 0 < noise.min() and noise.max() < 1 and abs(noise.mean().item() - 0.5) < 0.002


def process(logits: torch.Tensor, *, cfg=0.0, penalty=1.0, temperature=1.0, min_p=0.0, top_p=1.0,
            seen: torch.Tensor | None = None) -> torch.Tensor:
    """`process_logits` for rows without CFG, one parameter set per row (scalars broadcast)."""
    rows = logits.shape[0]

    def column(value) -> torch.Tensor:
        return torch.as_tensor(value, dtype=torch.float32).expand(rows).clone()

    return sampling.process_logits(
        logits, partner=torch.arange(rows), cfg_weight=column(cfg),
        seen=seen if seen is not None else torch.zeros(rows, logits.shape[1], dtype=torch.bool),
        repetition_penalty=column(penalty), temperature=column(temperature), min_p=column(min_p),
        top_p_floor=1.0 - column(top_p))


def test_temperature_scales_each_row_by_its_own_value():
    logits = torch.randn(2, VOCAB, generator=torch.Generator().manual_seed(1))
    out = process(logits, temperature=[0.5, 2.0])
    assert torch.allclose(out[0], logits[0] / 0.5) and torch.allclose(out[1], logits[1] / 2.0)


def test_repetition_penalty_pushes_seen_tokens_down_whatever_their_sign():
    logits = torch.tensor([[2.0, -2.0, 1.0, -1.0]])
    seen = torch.tensor([[True, True, False, False]])
    out = process(logits, penalty=2.0, seen=seen)
    assert out.tolist() == [[1.0, -4.0, 1.0, -1.0]]  # positive divided, negative multiplied, unseen untouched


def test_min_p_drops_tokens_below_a_fraction_of_the_top_probability_per_row():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]] * 2)
    out = process(probs.log(), min_p=[0.2, 0.5])  # floors: 0.1 and 0.25
    assert torch.isinf(out[0]).tolist() == [False, False, False, True]
    assert torch.isinf(out[1]).tolist() == [False, False, True, True]


def test_top_p_keeps_the_smallest_nucleus_and_always_the_top_token():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]] * 2)
    out = process(probs.log(), top_p=[0.75, 0.01])  # drops what adds up to at most 0.25 / 0.99
    assert torch.isinf(out[0]).tolist() == [False, False, True, True]
    assert torch.isinf(out[1]).tolist() == [False, True, True, True]


def test_a_row_is_processed_the_same_alone_as_in_a_batch():
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(3, VOCAB, generator=generator) * 3
    seen = torch.rand(3, VOCAB, generator=generator) < 0.1
    params = {"penalty": [1.3, 1.0, 2.0], "temperature": [0.7, 1.0, 1.5], "min_p": [0.05, 0.0, 0.2],
              "top_p": [0.9, 1.0, 0.5]}
    batched = process(logits, seen=seen, **params)
    for row in range(3):
        alone = process(logits[row:row + 1], seen=seen[row:row + 1], **{k: v[row] for k, v in params.items()})
        assert torch.equal(alone[0], batched[row])


def test_a_seeded_stream_draws_the_same_tokens_alone_and_in_any_batch():
    generator = torch.Generator().manual_seed(3)
    mine_logits = torch.randn(VOCAB, generator=generator)
    vocab_hash = sampling.vocab_hashes(VOCAB, "cpu")
    mine = sampling.stream_key(42)

    def draws(keys: list[int], counters: list[int], row: int) -> list[int]:
        """20 successive tokens of batch row `row` (which holds our stream's logits), others random."""
        logits = torch.randn(len(keys), VOCAB, generator=generator)
        logits[row] = mine_logits
        return [sampling.sample_tokens(logits, torch.tensor(keys), torch.tensor(counters) + step, vocab_hash,
                                       greedy=False)[row].item() for step in range(20)]

    alone = draws([mine], [5], row=0)
    others = [sampling.stream_key(7), sampling.stream_key(8), sampling.stream_key(9)]
    assert draws([others[0], others[1], mine, others[2]], [0, 100, 5, 3], row=2) == alone
    assert draws([mine, *others], [5, 1, 2, 3], row=0) == alone
    assert draws([sampling.stream_key(43)], [5], row=0) != alone  # negative control: another seed
    assert draws([mine], [6], row=0) != alone  # and another position in the stream
