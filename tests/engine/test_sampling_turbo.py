"""Turbo's batched logits pipeline (per-row top-k included) against upstream's Hugging Face processors."""

from __future__ import annotations

import torch
from transformers import (LogitsProcessorList, RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper,
                          TopKLogitsWarper, TopPLogitsWarper)

from app.engine.chatterbox.sampling import apply_top_k, process_turbo_logits

VOCAB = 6563
# (temperature, top_k, top_p, repetition penalty) per row, as upstream inference_turbo would build processors.
ROWS = [(0.8, 1000, 0.95, 1.2), (1.0, 0, 1.0, 1.0), (0.5, 7, 0.8, 1.5), (1.3, 50, 0.99, 1.1), (0.8, 1, 0.95, 1.2)]


def _upstream(logits: torch.Tensor, seen_ids: torch.Tensor, temperature, top_k, top_p, penalty) -> torch.Tensor:
    """The processor list `T3.inference_turbo` builds, applied to one row."""
    processors = LogitsProcessorList()
    if temperature > 0 and temperature != 1.0:
        processors.append(TemperatureLogitsWarper(temperature))
    if top_k > 0:
        processors.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        processors.append(TopPLogitsWarper(top_p))
    if penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(penalty))
    return processors(seen_ids[None], logits[None].clone())[0]


def test_turbo_pipeline_matches_upstream_per_row():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(len(ROWS), VOCAB, generator=generator) * 3
    history = [torch.randint(0, VOCAB, (n,), generator=generator) for n in (1, 40, 5, 300, 12)]
    seen = torch.zeros(len(ROWS), VOCAB, dtype=torch.bool)
    for row, ids in enumerate(history):
        seen[row, ids] = True
    temperature, top_k, top_p, penalty = (torch.tensor(column) for column in zip(*ROWS, strict=True))
    ours = process_turbo_logits(logits, seen=seen, repetition_penalty=penalty.float(),
                                temperature=temperature.float(), top_k=top_k.long(), top_p_floor=1 - top_p.float())
    for row, params in enumerate(ROWS):
        expected = _upstream(logits[row], history[row], *params)
        assert torch.equal(torch.isinf(ours[row]), torch.isinf(expected)), row
        finite = torch.isfinite(expected)
        torch.testing.assert_close(ours[row][finite], expected[finite], rtol=1e-6, atol=1e-6)
    assert torch.isfinite(ours[4]).sum() == 1  # top_k=1 leaves only the best token
    assert torch.isfinite(ours[1]).all()  # top_k=0, top_p=1: nothing filtered


def test_top_k_keeps_ties_and_differs_per_row():
    logits = torch.tensor([[1.0, 3.0, 3.0, 0.5, 2.0], [1.0, 3.0, 3.0, 0.5, 2.0]])
    kept = torch.isfinite(apply_top_k(logits, torch.tensor([1, 3])))
    assert kept.tolist() == [[False, True, True, False, False], [False, True, True, False, True]]
    # negative control: a larger k keeps strictly more
    assert torch.isfinite(apply_top_k(logits, torch.tensor([4, 5]))).sum() > kept.sum()
