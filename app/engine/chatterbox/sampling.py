"""Batched speech-token sampling on the device, one parameter set per row, in upstream Chatterbox's order.

`T3.inference` processes one stream's logits as: CFG combine -> repetition penalty -> temperature -> min-p ->
top-p -> softmax -> multinomial, using Hugging Face's logits processors. `process_logits` does the same for
many rows at once with per-row parameters held in tensors, so one call serves a whole batch and can be
captured in a CUDA graph. Turbo's `T3.inference_turbo` uses another order and set (temperature -> top-k ->
top-p -> repetition penalty, no CFG or min-p): `process_turbo_logits`.

Randomness: each row draws its noise from a counter-based hash of (stream key, token index, vocabulary index)
instead of a `torch.Generator` per stream. The draw depends only on the stream's seed and how many tokens it
has sampled, never on which other rows share the batch or where the row sits; it needs no host
synchronisation and no generator state, so it is a handful of integer ops that CUDA graphs and
`torch.compile` capture like any other. The uniform noise drives the Gumbel-max trick
(argmax(logits + Gumbel) is an exact draw from softmax(logits)), which replaces `torch.multinomial`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

MASK32 = 0xFFFFFFFF
_GOLDEN32 = 0x9E3779B9
NEG_INF = float("-inf")


def mix32(x):
    """A bijective 32-bit integer hash (Wellons' hash-prospector [16 21f0aaad 15 735a2d97 15]).

    Works on Python ints and int64 tensors alike. Inputs stay below 2**32 and the multipliers below 2**31, so
    every product fits in a signed 64-bit integer: the result is the same on every device.
    """
    x = x ^ (x >> 16)
    x = (x * 0x21F0AAAD) & MASK32
    x = x ^ (x >> 15)
    x = (x * 0x735A2D97) & MASK32
    return x ^ (x >> 15)


def stream_key(seed: int) -> int:
    """Fold a 63-bit seed into the 32-bit key that `uniform_noise` uses for that stream."""
    return mix32(mix32((seed >> 32) & MASK32) ^ (seed & MASK32))


def vocab_hashes(vocab_size: int, device: torch.device | str) -> torch.Tensor:
    """Per-token hash inputs, computed once: (V,) int64."""
    return mix32(torch.arange(vocab_size, dtype=torch.int64, device=device) + _GOLDEN32)


def uniform_noise(keys: torch.Tensor, counters: torch.Tensor, vocab_hash: torch.Tensor) -> torch.Tensor:
    """(R, V) float32 uniforms in the open interval (0, 1), a pure function of (key, counter, token). The counter
    is spread by a multiplication (a bijection mod 2**32) rather than hashed: one hash fewer per step, and two
    (key, counter) pairs still share a row of noise only with probability 2**-32."""
    row = mix32(keys ^ ((counters * _GOLDEN32) & MASK32))  # counters (tokens so far) << 2**31: fits int64
    bits = mix32(vocab_hash[None, :] ^ row[:, None]) >> 8  # keep 24 bits: exactly representable in float32
    return (bits.to(torch.float32) + 0.5) * (1.0 / (1 << 24))


def combine_cfg(logits: torch.Tensor, partner: torch.Tensor, cfg_weight: torch.Tensor) -> torch.Tensor:
    """`cond + w * (cond - uncond)` per row; rows without CFG name themselves as partner with w = 0."""
    uncond = logits.index_select(0, partner)
    return logits + cfg_weight[:, None] * (logits - uncond)


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    """Hugging Face semantics: seen tokens' logits are divided by the penalty if positive, multiplied if not."""
    p = penalty[:, None]
    penalized = torch.where(logits < 0, logits * p, logits / p)
    return torch.where(seen, penalized, logits)


def apply_min_p(logits: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """Drop tokens whose probability is below min_p times the top probability (the top token always stays)."""
    probs = torch.softmax(logits, dim=-1)
    floor = min_p[:, None] * probs.amax(dim=-1, keepdim=True)
    return logits.masked_fill(probs < floor, NEG_INF)


def apply_top_p(logits: torch.Tensor, top_p_floor: torch.Tensor) -> torch.Tensor:
    """Hugging Face's nucleus filter with `top_p_floor = 1 - top_p`: drop the least likely tokens whose
    cumulative probability stays at or below the floor, always keeping the most likely one."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=False)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove_sorted = cumulative <= top_p_floor[:, None]
    remove_sorted[:, -1] = False
    remove = remove_sorted.scatter(1, order, remove_sorted)
    return logits.masked_fill(remove, NEG_INF)


def apply_top_k(logits: torch.Tensor, top_k: torch.Tensor) -> torch.Tensor:
    """Hugging Face's top-k filter per row: keep the tokens scoring at least the k-th best (ties stay);
    `top_k` is (R,) int64, and 0 or anything at least the vocabulary size keeps every token."""
    vocab = logits.shape[-1]
    k = torch.where(top_k > 0, top_k, vocab).clamp(1, vocab)
    kth_best = torch.sort(logits, dim=-1, descending=True).values.gather(1, (k - 1)[:, None])
    return logits.masked_fill(logits < kth_best, NEG_INF)


def process_logits(
    logits: torch.Tensor,
    *,
    partner: torch.Tensor,
    cfg_weight: torch.Tensor,
    seen: torch.Tensor,
    repetition_penalty: torch.Tensor,
    temperature: torch.Tensor,
    min_p: torch.Tensor,
    top_p_floor: torch.Tensor,
    guard: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Upstream's whole logits pipeline for R rows of float32 logits; every parameter is an (R,) tensor.
    `guard` (the alignment guard) edits the CFG-combined logits, where upstream's analyzer acts."""
    x = combine_cfg(logits, partner, cfg_weight)
    if guard is not None:
        x = guard(x)
    x = apply_repetition_penalty(x, seen, repetition_penalty)
    x = x / temperature[:, None]
    x = apply_min_p(x, min_p)
    return apply_top_p(x, top_p_floor)


def process_turbo_logits(
    logits: torch.Tensor,
    *,
    seen: torch.Tensor,
    repetition_penalty: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p_floor: torch.Tensor,
) -> torch.Tensor:
    """Upstream Turbo's logits pipeline for R rows, in its order: the repetition penalty comes last, where it
    leaves filtered (-inf) tokens filtered."""
    x = logits / temperature[:, None]
    x = apply_top_k(x, top_k)
    x = apply_top_p(x, top_p_floor)
    return apply_repetition_penalty(x, seen, repetition_penalty)


def sample_tokens(
    processed: torch.Tensor, keys: torch.Tensor, counters: torch.Tensor, vocab_hash: torch.Tensor, greedy: bool
) -> torch.Tensor:
    """One token per row: an exact draw from softmax(processed) by Gumbel-max, or the argmax when greedy."""
    if greedy:
        return processed.argmax(dim=-1)
    exponential = -torch.log(uniform_noise(keys, counters, vocab_hash))  # logits + Gumbel = logits - log(Exp(1))
    return (processed - torch.log(exponential)).argmax(dim=-1)
