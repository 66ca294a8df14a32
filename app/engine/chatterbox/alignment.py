"""Alignment-guarded decoding for every row of the batched T3 decode step, on the device.

Upstream's `AlignmentStreamAnalyzer` (chatterbox/models/t3/inference/alignment_stream_analyzer.py) watches a few
attention heads of the Llama T3 that track which text token is being spoken. Per generated speech token it
(1) takes the heads' mean attention over the text tokens, zeroing text positions after the frame index;
(2) moves its text position to the argmax unless that jumps back 4 or ahead 7 or more;
(3) marks the stream complete once the position reaches the last three text tokens;
(4) suppresses the stop token while the argmax is before the last three text tokens (texts over 5 tokens);
(5) forces the stop token on a long tail (attention to the last three text tokens summing to 5 or more after
    completion), on alignment repetition (after completion, the per-frame maxima over all but the last five text
    tokens summing past 5) or on token repetition (the last two speech tokens equal).
It does this for one stream, reading the attention back to the host every token and forcing eager attention.

`AlignmentGuard` keeps the same decisions as per-row tensors (text position, completion flag, the two post-
completion sums, the previous token) and applies them to the batch's logits inside the decode step: nothing is
read back, so the step stays capturable as a CUDA graph. Upstream keeps the whole alignment matrix and re-sums
it every token; both sums only ever grow by the current frame's row, so running sums give the same values.
The heads' attention is computed beside SDPA from the same queries and keys (one small matmul per head).
Where upstream would reduce over no text columns (texts of 5 tokens or fewer) the sum counts as 0.
"""

from __future__ import annotations

from typing import Any

import torch

# Upstream's heads (layer, head) for the 30-layer Llama T3.
LLAMA_ALIGNED_HEADS = ((12, 15), (13, 11), (9, 2))
_UPSTREAM_LAYERS = 30
_FORCE = float(2**15)  # upstream's ±2**15, safe in every dtype of 16 bits or more
_BACKWARD, _FORWARD = 4, 7  # a text position moves only if -4 < step < 7
_TAIL_TOKENS, _REPETITION_SKIP = 3, 5
_TAIL_LIMIT, _REPETITION_LIMIT = 5.0, 5.0
_MIN_GUARDED_TEXT = 5  # texts of this many tokens or fewer never get their stop suppressed


def aligned_heads(num_layers: int) -> tuple[tuple[int, int], ...]:
    """Upstream's heads; for shallower synthetic models the same heads at the same relative depth."""
    return tuple((layer * num_layers // _UPSTREAM_LAYERS, head) for layer, head in LLAMA_ALIGNED_HEADS)


class AlignmentGuard:
    """Per-row alignment state for `rows` KV rows. The decoder calls `reset` when a stream takes rows,
    `move_row` when it compacts, `observe` inside the aligned layers and `guard` on the CFG-combined logits."""

    def __init__(self, rows: int, num_layers: int, stop_token: int, device: torch.device):
        self.heads = aligned_heads(num_layers)
        # Head indices per aligned layer, made once: a host-to-device copy cannot run inside a CUDA graph.
        self._head_index = {layer: torch.tensor([h for aligned, h in self.heads if aligned == layer], device=device)
                            for layer, _ in self.heads}
        self.stop_token = stop_token
        long: dict[str, Any] = {"dtype": torch.long, "device": device}
        self.enabled = torch.zeros(rows, dtype=torch.bool, device=device)
        self.text_start = torch.zeros(rows, **long)  # KV position of the start-of-text token
        self.text_len = torch.ones(rows, **long)  # text tokens including start and end of text
        self.text_position = torch.zeros(rows, **long)  # upstream's position (may step back up to 3 tokens)
        self.spoken = torch.zeros(rows, **long)  # furthest text position reached: monotone, for timestamps
        self.complete = torch.zeros(rows, dtype=torch.bool, device=device)
        self.tail = torch.zeros(rows, _TAIL_TOKENS, device=device)
        self.repetition = torch.zeros(rows, device=device)
        self.prev_token = torch.zeros(rows, **long)
        self._maps: list[torch.Tensor] = []

    def _state(self) -> tuple[torch.Tensor, ...]:
        return (self.enabled, self.text_start, self.text_len, self.text_position, self.spoken, self.complete,
                self.tail, self.repetition, self.prev_token)

    def reset(self, rows: slice, text_start: int, text_len: int, enabled: bool = True) -> None:
        """A stream took `rows`: only the first (conditional) one is guarded, as upstream reads batch row 0."""
        for tensor in self._state():
            tensor[rows] = 0
        self.enabled[rows.start] = enabled
        self.text_start[rows] = text_start
        self.text_len[rows] = text_len

    def move_row(self, source: int, destination: int) -> None:
        for tensor in self._state():
            tensor[destination] = tensor[source]

    def observe(self, layer: int, q: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> None:
        """Record the aligned heads' attention probabilities of this layer. q: (R, H, 1, D); keys: (R, H, C, D);
        mask: additive, (R, 1, 1, C). The same scores SDPA computes, for a few heads only."""
        index = self._head_index.get(layer)
        if index is None:
            return
        scores = q.index_select(1, index) @ keys.index_select(1, index).transpose(-1, -2)
        scores = scores.float() * q.shape[-1] ** -0.5 + mask.float()
        self.record(scores.softmax(dim=-1)[:, :, 0])

    def record(self, probs: torch.Tensor) -> None:
        """Attention probabilities (R, heads, C) of some aligned heads for the current step."""
        self._maps.append(probs)

    def guard(self, logits: torch.Tensor, advance: torch.Tensor, generated: torch.Tensor,
              last_token: torch.Tensor) -> torch.Tensor:
        """Apply the decisions to float32 logits (R, V) and advance the state of the rows that `advance`.
        `generated`: speech tokens each row has so far (the frame index); `last_token`: its last token."""
        rows, context = logits.shape[0], self._maps[0].shape[-1]
        attention = torch.cat(self._maps, dim=1).mean(dim=1)  # (R, C), the heads' mean as upstream
        self._maps = []
        enabled, start, length = self.enabled[:rows], self.text_start[:rows], self.text_len[:rows]
        live = enabled & advance.bool()
        column = torch.arange(context, device=logits.device)[None, :] - start[:, None]  # text index per position
        in_text = (column >= 0) & (column < length[:, None])
        aligned = torch.where(in_text & (column <= generated[:, None]), attention, 0.0)  # upstream's masking
        current = torch.where(in_text, aligned, -1.0).argmax(dim=-1) - start  # text index of this frame

        position, complete = self.text_position[:rows], self.complete[:rows]
        was_complete = complete & live
        jump = current - position
        position.copy_(torch.where(live & (jump > -_BACKWARD) & (jump < _FORWARD), current, position))
        self.spoken[:rows].copy_(torch.maximum(self.spoken[:rows], position))
        tail_index = (length - _TAIL_TOKENS)[:, None] + torch.arange(_TAIL_TOKENS, device=logits.device)
        tail_valid = tail_index >= 0
        tail = aligned.gather(1, (start[:, None] + tail_index.clamp(min=0)).clamp(max=context - 1))
        self.tail[:rows].add_(torch.where(was_complete[:, None] & tail_valid, tail, 0.0))
        early = torch.where(column < (length - _REPETITION_SKIP)[:, None], aligned, 0.0).amax(dim=-1)
        self.repetition[:rows].add_(torch.where(was_complete, early, 0.0))
        complete.copy_(complete | (live & (position >= length - _TAIL_TOKENS)))

        long_tail = was_complete & (self.tail[:rows].amax(dim=-1) >= _TAIL_LIMIT)
        repeated_text = was_complete & (self.repetition[:rows] > _REPETITION_LIMIT)
        previous = self.prev_token[:rows]
        repeated_token = live & (generated >= 2) & (last_token == previous)
        previous.copy_(torch.where(live, last_token, previous))

        suppress = live & (current < length - _TAIL_TOKENS) & (length > _MIN_GUARDED_TEXT)
        force = long_tail | repeated_text | repeated_token
        is_stop = torch.arange(logits.shape[1], device=logits.device)[None, :] == self.stop_token
        logits = torch.where(suppress[:, None] & is_stop, -_FORCE, logits)
        forced = torch.where(is_stop, _FORCE, -_FORCE).to(logits.dtype)
        return torch.where(force[:, None], forced, logits)
