"""The batched alignment guard decides as upstream's AlignmentStreamAnalyzer on identical attention and logits."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch
from chatterbox.models.t3.inference.alignment_stream_analyzer import AlignmentStreamAnalyzer
from torch import nn

from app.engine.chatterbox.alignment import LLAMA_ALIGNED_HEADS, AlignmentGuard, aligned_heads

BOS, STOP, VOCAB = 6561, 6562, 6600
FORCE = 2.0**15


@dataclass
class Scenario:
    """One stream: conditioning length, text length (with start/end of text), and how attention and tokens
    move. `targets[k]` is the text index the heads mostly attend at frame k."""
    cond_len: int
    text_len: int
    targets: list[int]
    repeat_token_at: int | None = None  # step whose token repeats the previous one


def _scenarios() -> list[Scenario]:
    def forward(n: int, text_len: int, rate: float) -> list[int]:
        return [min(int(k * rate), text_len - 1) for k in range(n)]

    return [
        Scenario(12, 20, forward(80, 20, 0.4)),  # reaches the end, then lingers: long tail
        Scenario(7, 16, forward(30, 16, 0.6) + [2, 3, 2, 3, 4, 2, 3] * 4),  # completes, then repeats early text
        Scenario(9, 24, forward(40, 24, 0.3), repeat_token_at=25),  # token repetition mid-text
        # jumps at the edges of what upstream accepts: +6 and -3 move the position, +7 and -4 do not
        Scenario(5, 30, [k // 3 for k in range(20)] + [12, 13, 20, 16, 13, 9, 14, 15, 3, 16]),
        Scenario(10, 6, forward(20, 6, 0.5)),  # the shortest text upstream handles (one token besides the tail)
    ]


def _head_maps(scenario: Scenario, step: int, generator: torch.Generator) -> torch.Tensor:
    """(3 heads, context) causal attention probabilities of the query at frame `step`."""
    context = scenario.cond_len + scenario.text_len + 1 + step + 1
    scores = torch.randn(3, context, generator=generator)
    scores[:, scenario.cond_len + scenario.targets[step]] += 6.0
    return scores.softmax(dim=-1)


def _upstream_analyzer(scenario: Scenario) -> AlignmentStreamAnalyzer:
    layers = [SimpleNamespace(self_attn=nn.Identity()) for _ in range(30)]
    start = scenario.cond_len
    return AlignmentStreamAnalyzer(SimpleNamespace(layers=layers), None, (start, start + scenario.text_len),
                                   eos_idx=STOP)


def _prefill_maps(scenario: Scenario, first: torch.Tensor, generator: torch.Generator) -> list[torch.Tensor]:
    """Upstream's first step sees the whole prefill (T0 x T0, with the second BOS last): random causal rows
    whose last row is the first frame's attention."""
    t0 = first.shape[-1]
    scores = torch.randn(3, t0, t0, generator=generator).masked_fill(torch.ones(t0, t0).triu(1).bool(), -torch.inf)
    maps = scores.softmax(dim=-1)
    maps[:, -1] = first
    return list(maps)


def _tokens(scenario: Scenario, steps: int, generator: torch.Generator) -> list[int]:
    tokens = torch.randperm(6000, generator=generator)[:steps].tolist()  # all distinct
    if scenario.repeat_token_at is not None:
        tokens[scenario.repeat_token_at] = tokens[scenario.repeat_token_at - 1]
    return tokens


def test_aligned_heads_are_upstreams_at_full_depth():
    assert aligned_heads(30) == tuple(LLAMA_ALIGNED_HEADS)
    assert all(layer < 2 for layer, _ in aligned_heads(2))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_decisions_match_upstream_for_every_row_of_a_batch(seed: int):
    generator = torch.Generator().manual_seed(seed)
    scenarios = _scenarios()
    rows = len(scenarios)
    steps = max(len(s.targets) for s in scenarios)  # rows whose scenario is over stop advancing
    upstream = [_upstream_analyzer(s) for s in scenarios]
    tokens = [_tokens(s, len(s.targets), generator) for s in scenarios]
    guard = AlignmentGuard(rows + 1, num_layers=2, stop_token=STOP, device=torch.device("cpu"))
    for row, s in enumerate(scenarios):
        guard.reset(slice(row, row + 1), text_start=s.cond_len, text_len=s.text_len, enabled=True)
    prompt_lens = torch.tensor([s.cond_len + s.text_len + 1 for s in scenarios])
    seen = {"suppress": 0, "force": 0, "free": 0}
    for step in range(steps):
        context = int(prompt_lens.max()) + step + 1
        maps = torch.zeros(rows, 3, context)
        advancing = [step < len(s.targets) for s in scenarios]
        for row, s in enumerate(scenarios):
            if not advancing[row]:
                continue
            own = _head_maps(s, step, generator)
            maps[row, :, :own.shape[-1]] = own
            upstream[row].last_aligned_attns = (_prefill_maps(s, own, generator) if step == 0
                                                else [m[None] for m in own])
        logits = torch.randn(rows, VOCAB, generator=generator)
        last = torch.tensor([BOS if step == 0 else tokens[row][min(step, len(tokens[row])) - 1]
                             for row in range(rows)])
        guard.record(maps)
        ours = guard.guard(logits.clone(), advance=torch.tensor(advancing, dtype=torch.long),
                           generated=torch.full((rows,), step), last_token=last)
        for row, s in enumerate(scenarios):
            if not advancing[row]:
                assert torch.equal(ours[row], logits[row])
                continue
            expected = upstream[row].step(logits[row:row + 1].clone(), next_token=int(last[row]))
            assert torch.equal(ours[row:row + 1], expected), (row, step)
            assert int(guard.text_position[row]) == int(upstream[row].text_position), (row, step)
            seen["force" if expected[0, STOP] == FORCE else
                 "suppress" if expected[0, STOP] == -FORCE else "free"] += 1
    assert all(seen.values()), seen  # each decision was exercised


def test_text_position_reached_is_monotone_and_inside_the_text():
    generator = torch.Generator().manual_seed(3)
    scenario = _scenarios()[3]  # the one whose attention jumps around
    guard = AlignmentGuard(1, num_layers=2, stop_token=STOP, device=torch.device("cpu"))
    guard.reset(slice(0, 1), scenario.cond_len, scenario.text_len, enabled=True)
    spoken = []
    for step in range(len(scenario.targets)):
        guard.record(_head_maps(scenario, step, generator)[None])
        guard.guard(torch.zeros(1, VOCAB), torch.ones(1, dtype=torch.long), torch.tensor([step]),
                    torch.tensor([step]))
        spoken.append(int(guard.spoken[0]))
    assert spoken == sorted(spoken) and 0 <= spoken[0] and spoken[-1] < scenario.text_len
    assert spoken[-1] > 0


def test_texts_of_five_tokens_never_suppress_the_stop_and_do_not_fail():
    """Upstream raises on these (a max over no text columns once complete); the guard counts that sum as 0."""
    scenario = Scenario(4, 5, [0, 1, 2, 3, 4, 4, 4, 4, 4, 4])
    generator = torch.Generator().manual_seed(4)
    guard = AlignmentGuard(1, num_layers=2, stop_token=STOP, device=torch.device("cpu"))
    guard.reset(slice(0, 1), scenario.cond_len, scenario.text_len, enabled=True)
    stops = []
    for step in range(len(scenario.targets)):
        guard.record(_head_maps(scenario, step, generator)[None])
        out = guard.guard(torch.zeros(1, VOCAB), torch.ones(1, dtype=torch.long), torch.tensor([step]),
                          torch.tensor([step]))
        stops.append(float(out[0, STOP]))
    assert -FORCE not in stops and FORCE in stops  # never suppressed; the long tail still forces the stop


def test_rows_that_do_not_advance_or_are_disabled_are_left_alone():
    scenario = _scenarios()[0]
    guard = AlignmentGuard(2, num_layers=2, stop_token=STOP, device=torch.device("cpu"))
    guard.reset(slice(0, 1), scenario.cond_len, scenario.text_len, enabled=True)
    guard.reset(slice(1, 2), scenario.cond_len, scenario.text_len, enabled=False)
    logits = torch.randn(2, VOCAB)
    guard.record(torch.rand(2, 3, scenario.cond_len + scenario.text_len + 2))
    out = guard.guard(logits.clone(), advance=torch.tensor([0, 1]), generated=torch.tensor([5, 5]),
                      last_token=torch.tensor([7, 7]))
    assert torch.equal(out, logits)
    assert int(guard.prev_token[0]) == 0 and int(guard.prev_token[1]) == 0
