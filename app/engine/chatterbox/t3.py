"""Our T3 decode loop: many streams share one static KV cache and one batched decode step.

Upstream `T3.inference` decodes one stream at a time through Hugging Face's dynamic cache with eager attention
and reads every token back to the host. `T3Decoder` runs the same computation over chatterbox's own T3 weights
(the LlamaModel layers, rotary table, speech embeddings and speech head) for many streams at once:

* KV cache: one preallocated tensor of `max_rows` rows. A stream holds one row, or two (conditional and
  unconditional) when it uses classifier-free guidance; `cfg_weight == 0` never computes the unconditional row.
  Used rows are kept packed in `[0, used_rows)`: when a stream leaves, the highest rows move down into the hole
  (a device copy of their KV), so a decode step only ever touches a dense prefix of the cache.
* Prompt: `add` runs one forward over cond + SOT text EOT + BOS (built by `T3.prepare_input_embeds`) into the
  stream's rows. Upstream feeds a second BOS (with speech position 0) after that prompt; here that second BOS is
  simply the stream's first decode input, so the first `step` yields upstream's prefill logits and every step
  has the same shape.
* Step: one forward of one token per row over a window of `R` rows and `C` cache positions (both rounded up to
  buckets), masked SDPA against each row's own length, then batched sampling (`sampling.py`) with per-row
  parameters and a per-stream counter-based RNG. All per-row bookkeeping the host can derive (lengths, which rows
  advance, sampling parameters) lives in two small device tensors rewritten only when membership changes; the
  device-only state (KV, last token, repetition history) is updated inside the step. Nothing in a step waits
  for the device, so on CUDA each (R, C) bucket is captured once as a CUDA graph and replayed (by the shared
  `GraphRunner`, which also applies `--compile-mode`).
* Rows of the window that are not being stepped (padding, or streams left out of this step) are computed but
  not advanced: they rewrite the KV slot at their current length, which their next real step overwrites.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from chatterbox.models.t3 import T3
from chatterbox.models.t3.modules.cond_enc import T3Cond
from torch import nn

from app.engine.chatterbox import sampling
from app.engine.chatterbox.alignment import AlignmentGuard
from app.engine.graphs import GraphRunner
from app.engine.types import EngineError, GenerationSettings

log = logging.getLogger(__name__)

_MIN_CONTEXT_BUCKET = 128
_CONTEXT_ALIGN = 64  # keeps every KV window a multiple of 16 elements, as the memory-efficient SDPA kernel wants

# Rows of `T3Decoder._ints`: per-row integers the host derives and rewrites when the layout changes.
_PARTNER, _OWNER, _ADVANCE, _LENGTH, _GENERATED, _KEY = range(6)
# Rows of `T3Decoder._floats`: per-row sampling parameters, and their neutral values for unused rows.
_CFG, _REPETITION, _TEMPERATURE, _MIN_P, _TOP_P_FLOOR = range(5)
_FLOAT_DEFAULTS = (0.0, 1.0, 1.0, 0.0, 0.0)
_N_INTS, _N_FLOATS = 6, len(_FLOAT_DEFAULTS)


@dataclass
class _Stream:
    rows: list[int]  # [conditional] or [conditional, unconditional]
    settings: GenerationSettings
    key: int  # sampling RNG key from the seed
    prompt_len: int  # KV positions the prefill filled
    generated: int = 0  # tokens sampled so far

    @property
    def length(self) -> int:
        """KV position the next step writes (its input is the last sampled token, or the second BOS)."""
        return self.prompt_len + self.generated


class T3Decoder:
    """Batched, slot-based T3 speech-token decoder; see the module docstring. Not thread-safe: one caller."""

    def __init__(
        self,
        t3: T3,
        max_batch: int = 64,
        max_context: int = 1500,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        enable_cuda_graphs: bool = True,
        compile_mode: str | None = None,
        *,
        max_rows: int | None = None,
        greedy: bool = False,
        alignment_guard: bool | None = None,
    ):
        """`max_batch` streams at most; `max_rows` KV rows (default 2 * max_batch, enough for all to use CFG);
        `max_context` tokens per row (prompt + generated). `greedy` takes the argmax instead of sampling (tests,
        benchmarks). `t3` is moved to `device`/`dtype` (bf16 on CUDA, float32 elsewhere by default) and its
        q/k/v and gate/up weights are re-pointed into fused tensors (same values, shared storage).
        `alignment_guard` (alignment.py) guards every stream's stop by the aligned heads' attention; by default
        on for the multilingual T3, as upstream."""
        if t3.is_gpt:
            raise ValueError("T3Decoder supports the Llama backbone only")
        self.device = torch.device(device) if device is not None else t3.device
        self.dtype = dtype or (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        self.max_batch = max_batch
        self.max_rows = max_rows or 2 * max_batch
        self.max_context = max_context
        self.greedy = greedy
        self._t3 = t3.to(device=self.device, dtype=self.dtype).eval()
        self._hp = t3.hp
        cfg = t3.cfg
        self._layers = list(t3.tfmr.layers)
        self._heads = cfg.num_attention_heads
        self._head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        if cfg.num_key_value_heads != self._heads:
            raise ValueError("T3Decoder expects as many KV heads as query heads (Chatterbox's T3 has both at 16)")
        self._wqkv = [_fuse_linears(layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj)
                      for layer in self._layers]
        self._wgate_up = [_fuse_linears(layer.mlp.gate_proj, layer.mlp.up_proj) for layer in self._layers]
        self._speech_positions = t3.speech_pos_emb.emb.num_embeddings

        self._cache_len = -(-max_context // _CONTEXT_ALIGN) * _CONTEXT_ALIGN
        self._row_buckets = _buckets(self.max_rows, 1)
        self._context_buckets = _buckets(self._cache_len, _MIN_CONTEXT_BUCKET)
        self._allocate_state()
        guarded = t3.hp.is_multilingual if alignment_guard is None else alignment_guard
        self._alignment = (AlignmentGuard(self.max_rows, len(self._layers), t3.hp.stop_speech_token, self.device)
                           if guarded else None)

        self._streams: dict[str, _Stream] = {}
        self._row_stream: list[str | None] = [None] * self.max_rows
        self._used_rows = 0
        self._layout_key: tuple[str, ...] | None = None
        self._out_index = torch.zeros(0, dtype=torch.long, device=self.device)
        self._last_logits = torch.zeros(0, device=self.device)

        # One compile serves every bucket (dynamic); graph outputs are used before the next replay, not copied.
        self.graphs = GraphRunner("T3", self.device, compile_mode, enable_cuda_graphs)
        self.graphs.register("decode", self._decode, dynamic=True, copy_outputs=False)

    # ----------------------------------------------------------------------------------------------- state

    def _allocate_state(self) -> None:
        rows, dev = self.max_rows, self.device
        self._kv = torch.zeros(len(self._layers), 2, rows, self._heads, self._cache_len, self._head_dim,
                               dtype=self.dtype, device=dev)
        self._last_token = torch.zeros(rows, dtype=torch.long, device=dev)
        self._seen = torch.zeros(rows, self._hp.speech_tokens_dict_size, dtype=torch.bool, device=dev)
        self._ints = torch.zeros(_N_INTS, rows, dtype=torch.long, device=dev)
        self._floats = torch.zeros(_N_FLOATS, rows, dtype=torch.float32, device=dev)
        self._positions = torch.arange(self._cache_len, device=dev)
        self._vocab_hash = sampling.vocab_hashes(self._hp.speech_tokens_dict_size, dev)
        # Chatterbox's rotary module (llama3 scaling) evaluated once for every cache position. A fresh instance:
        # casting T3 to bf16 also casts the module's inv_freq buffer, which would blur far positions.
        rotary = type(self._t3.tfmr.rotary_emb)(config=self._t3.cfg, device=dev)
        cos, sin = rotary(torch.zeros(1, device=dev), self._positions[None])
        self._rotation = _rotation_matrices(cos[0], sin[0]).to(self.dtype)  # (cache_len, head_dim, head_dim)

    @property
    def free_rows(self) -> int:
        return self.max_rows - self._used_rows

    @property
    def active(self) -> set[str]:
        return set(self._streams)

    def tokens_left(self, seq_id: str) -> int:
        """How many more tokens `step` can produce for this sequence before its context is full."""
        stream = self._streams[seq_id]
        return min(self.max_context - stream.length, self._speech_positions - stream.generated)

    # ------------------------------------------------------------------------------------ engine interface

    @torch.no_grad()
    def add(self, seq_id: str, t3_cond: T3Cond, text_tokens: torch.Tensor, settings: GenerationSettings) -> None:
        """Prefill cond + SOT text EOT + BOS for a new sequence; its first `step` samples its first token."""
        if seq_id in self._streams:
            raise ValueError(f"sequence {seq_id!r} is already in the decoder")
        n_rows = 2 if settings.cfg_weight > 0 else 1
        if len(self._streams) >= self.max_batch or self.free_rows < n_rows:
            raise EngineError("no_capacity", f"T3 decoder full: {len(self._streams)} streams, "
                                             f"{self.free_rows} free KV rows, {n_rows} needed")
        embeds = self._prompt_embeds(t3_cond, text_tokens, settings.cfg_weight, n_rows)
        prompt_len = embeds.shape[1]
        if prompt_len >= self.max_context:
            raise EngineError("text_too_long", f"prompt of {prompt_len} tokens leaves no room in the "
                                               f"{self.max_context}-token context")
        first = self._used_rows
        rows = list(range(first, first + n_rows))
        self._prefill(first, embeds)
        if self._alignment is not None:
            text_len = text_tokens.numel() + 2  # with start and end of text; the prompt ends with BOS
            self._alignment.reset(slice(first, first + n_rows), prompt_len - 1 - text_len, text_len)
        self._last_token[first:first + n_rows] = self._hp.start_speech_token
        self._seen[first:first + n_rows] = False
        self._seen[first:first + n_rows, self._hp.start_speech_token] = True  # upstream penalises BOS too
        seed = settings.seed if settings.seed is not None else int(torch.randint(0, 2**62, ()).item())
        self._streams[seq_id] = _Stream(rows, settings, sampling.stream_key(seed), prompt_len)
        for row in rows:
            self._row_stream[row] = seq_id
        self._used_rows += n_rows
        self._layout_key = None

    @torch.no_grad()
    def step(self, seq_ids: list[str]) -> torch.Tensor:
        """Sample and append one token for each listed sequence; a (len(seq_ids),) LongTensor on the device."""
        streams = [self._stream(seq_id) for seq_id in seq_ids]
        if len(set(seq_ids)) != len(seq_ids):
            raise ValueError("a sequence is listed twice in one step")
        if not streams:
            return torch.zeros(0, dtype=torch.long, device=self.device)
        for seq_id in seq_ids:
            if self.tokens_left(seq_id) <= 0:
                raise EngineError("context_full", f"{seq_id} has filled its {self.max_context}-token context")
        self._sync_layout(tuple(seq_ids))
        window = _bucket(self._used_rows, self._row_buckets)
        longest = max(s.length for s in self._streams.values())
        tokens, logits = self._run(window, _bucket(longest + 1, self._context_buckets))
        for stream in streams:
            stream.generated += 1
        self._last_logits = logits
        return tokens.index_select(0, self._out_index)

    def remove(self, seq_id: str) -> None:
        """Free the sequence's rows now (unknown ids are ignored, so cancelling twice is harmless)."""
        stream = self._streams.pop(seq_id, None)
        if stream is None:
            return
        for row in stream.rows:
            self._row_stream[row] = None
        self._used_rows -= len(stream.rows)
        self._compact()
        self._layout_key = None

    def spoken_text_positions(self, seq_ids: list[str]) -> torch.Tensor:
        """After a `step` of exactly `seq_ids`: per sequence, the furthest text position (0 = start of text)
        the aligned heads have reached, a (len(seq_ids),) device tensor; -1 where no guard runs."""
        if self._alignment is None:
            return torch.full((len(seq_ids),), -1, dtype=torch.long, device=self.device)
        return self._alignment.spoken.index_select(0, self._out_index)

    def last_logits(self, seq_id: str) -> torch.Tensor:
        """Raw speech-head logits (float32) of this sequence's rows at the last step, conditional row first.
        For tests and debugging; valid until the next step."""
        rows = torch.tensor(self._stream(seq_id).rows, device=self.device)
        return self._last_logits.index_select(0, rows)

    # ------------------------------------------------------------------------------------------ prefill

    def _prompt_embeds(self, t3_cond: T3Cond, text_tokens: torch.Tensor, cfg_weight: float, n_rows: int
                       ) -> torch.Tensor:
        """(n_rows, prompt_len, dim) exactly as `ChatterboxTTS.generate` + `T3.inference` build them."""
        hp = self._hp
        text = text_tokens.to(device=self.device, dtype=torch.long).flatten()
        text = F.pad(F.pad(text, (1, 0), value=hp.start_text_token), (0, 1), value=hp.stop_text_token)
        bos = torch.full((n_rows, 1), hp.start_speech_token, dtype=torch.long, device=self.device)
        embeds, _ = self._t3.prepare_input_embeds(
            t3_cond=_cond_on(t3_cond, self.device, self.dtype),
            text_tokens=text[None].expand(n_rows, -1),
            speech_tokens=bos,
            cfg_weight=cfg_weight,
        )
        return embeds

    def _prefill(self, first_row: int, embeds: torch.Tensor) -> None:
        n_rows, length, _ = embeds.shape
        rows = slice(first_row, first_row + n_rows)

        def attend(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            self._kv[layer, 0, rows, :, :length] = k
            self._kv[layer, 1, rows, :, :length] = v
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

        x = embeds
        rotation = self._rotation[None, :length]
        for layer in range(len(self._layers)):
            x = self._layer_forward(layer, x, rotation, attend)

    # ------------------------------------------------------------------------------------- decode step

    def _layer_forward(self, index: int, x: torch.Tensor, rotation: torch.Tensor,
                       attend: Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
                       ) -> torch.Tensor:
        """One Llama decoder layer on (B, L, dim) with the layer's own weights; `attend` owns the KV cache.

        The same math as upstream's `LlamaDecoderLayer` in fewer kernels, since a decode step is bound by their
        count: fused q/k/v and gate/up projections, q and k rotated together by one matmul with each position's
        rotation matrix (`rotation`: (B or 1, L, head_dim, head_dim)), residual adds folded into the output
        projections (`addmm`), and `F.rms_norm` (one fused kernel on CUDA)."""
        layer = self._layers[index]
        batch, length, _ = x.shape
        qkv = F.linear(_rms_norm(x, layer.input_layernorm), self._wqkv[index])
        qkv = qkv.view(batch, length, 3, self._heads, self._head_dim)
        qk = torch.matmul(qkv[:, :, :2].reshape(batch, length, 2 * self._heads, self._head_dim), rotation)
        q, k = qk.view(batch, length, 2, self._heads, self._head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        attn = attend(index, q, k, qkv[:, :, 2].transpose(1, 2)).transpose(1, 2)
        x = _add_projection(x, attn.reshape(batch, length, -1), layer.self_attn.o_proj.weight)
        gate, up = F.linear(_rms_norm(x, layer.post_attention_layernorm), self._wgate_up[index]).chunk(2, dim=-1)
        return _add_projection(x, layer.mlp.act_fn(gate) * up, layer.mlp.down_proj.weight)

    def _decode(self, rows: int, context: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One token for each of the first `rows` rows, attending to the first `context` cache positions.
        Reads and writes only persistent buffers, so it can be captured as a CUDA graph. Returns (tokens
        (rows,), raw logits (rows, vocab) float32)."""
        ints, floats = self._ints[:, :rows], self._floats[:, :rows]
        length, generated = ints[_LENGTH], ints[_GENERATED]
        t3 = self._t3
        x = (t3.speech_emb(self._last_token[:rows]) + t3.speech_pos_emb.emb(generated))[:, None]
        rotation = self._rotation[length][:, None]  # (rows, 1, head_dim, head_dim)
        write_at = length.view(rows, 1, 1, 1).expand(rows, self._heads, 1, self._head_dim)
        # An additive mask built once per step (a boolean one is converted inside every layer's SDPA call).
        hidden = (self._positions[None, :context] > length[:, None]).view(rows, 1, 1, context)
        mask = torch.zeros(rows, 1, 1, context, dtype=self.dtype, device=self.device)
        mask.masked_fill_(hidden, -torch.inf)

        def attend(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            keys, values = self._kv[layer, 0, :rows], self._kv[layer, 1, :rows]
            keys.scatter_(2, write_at, k)
            values.scatter_(2, write_at, v)
            if self._alignment is not None:
                self._alignment.observe(layer, q, keys[:, :, :context], mask)
            return F.scaled_dot_product_attention(q, keys[:, :, :context], values[:, :, :context], attn_mask=mask)

        for layer in range(len(self._layers)):
            x = self._layer_forward(layer, x, rotation, attend)
        logits = t3.speech_head(_rms_norm(x[:, 0], t3.tfmr.norm)).float()
        processed = sampling.process_logits(
            logits, partner=ints[_PARTNER], cfg_weight=floats[_CFG], seen=self._seen[:rows],
            repetition_penalty=floats[_REPETITION], temperature=floats[_TEMPERATURE], min_p=floats[_MIN_P],
            top_p_floor=floats[_TOP_P_FLOOR], guard=self._guard(rows),
        )
        tokens = sampling.sample_tokens(processed, ints[_KEY], generated, self._vocab_hash, self.greedy)
        self._append(rows, tokens)
        return tokens, logits

    def _guard(self, rows: int) -> Callable[[torch.Tensor], torch.Tensor] | None:
        if self._alignment is None:
            return None
        ints = self._ints[:, :rows]
        return functools.partial(self._alignment.guard, advance=ints[_ADVANCE], generated=ints[_GENERATED],
                                 last_token=self._last_token[:rows])

    def _append(self, rows: int, tokens: torch.Tensor) -> None:
        """Advance the rows whose stream is being stepped: each row takes its conditional row's token."""
        ints = self._ints[:, :rows]
        advance = ints[_ADVANCE]
        moving = advance.bool()
        row_tokens = tokens.index_select(0, ints[_OWNER])
        last = self._last_token[:rows]
        last.copy_(torch.where(moving, row_tokens, last))
        ints[_LENGTH].add_(advance)
        ints[_GENERATED].add_(advance)
        seen = self._seen[:rows]
        seen.scatter_(1, row_tokens[:, None], seen.gather(1, row_tokens[:, None]) | moving[:, None])

    def _run(self, rows: int, context: int) -> tuple[torch.Tensor, torch.Tensor]:
        tokens, logits = self.graphs.run("decode", rows, context)
        return tokens, logits

    # ------------------------------------------------------------------------------------------ layout

    def _stream(self, seq_id: str) -> _Stream:
        try:
            return self._streams[seq_id]
        except KeyError:
            raise KeyError(f"sequence {seq_id!r} is not in the decoder") from None

    def _sync_layout(self, stepped: tuple[str, ...]) -> None:
        """Rewrite the host-derived per-row tensors when membership or the stepped set changed since last step."""
        if stepped == self._layout_key:
            return
        ints = [[row if field in (_PARTNER, _OWNER) else 0 for row in range(self.max_rows)]
                for field in range(_N_INTS)]
        floats = [[default] * self.max_rows for default in _FLOAT_DEFAULTS]
        advancing = set(stepped)
        for seq_id, stream in self._streams.items():
            cond, s = stream.rows[0], stream.settings
            if len(stream.rows) == 2:
                ints[_PARTNER][cond] = stream.rows[1]
                floats[_CFG][cond] = s.cfg_weight
            for row in stream.rows:
                ints[_OWNER][row] = cond
                ints[_ADVANCE][row] = int(seq_id in advancing)
                ints[_LENGTH][row] = stream.length
                ints[_GENERATED][row] = stream.generated
                ints[_KEY][row] = stream.key
                floats[_REPETITION][row] = s.repetition_penalty
                floats[_TEMPERATURE][row] = s.temperature
                floats[_MIN_P][row] = s.min_p
                floats[_TOP_P_FLOOR][row] = 1.0 - s.top_p  # Hugging Face compares against (1 - top_p)
        self._ints.copy_(self._host_tensor(ints, torch.long), non_blocking=True)
        self._floats.copy_(self._host_tensor(floats, torch.float32), non_blocking=True)
        out_rows = [self._streams[seq_id].rows[0] for seq_id in stepped]
        self._out_index = self._host_tensor(out_rows, torch.long).to(self.device, non_blocking=True)
        self._layout_key = stepped

    def _host_tensor(self, values: list, dtype: torch.dtype) -> torch.Tensor:
        """A CPU tensor for an asynchronous upload: pinned on CUDA, whose host allocator keeps the block alive
        until the copy has run."""
        tensor = torch.tensor(values, dtype=dtype)
        return tensor.pin_memory() if self.device.type == "cuda" else tensor

    def _compact(self) -> None:
        """Move the highest used rows down into holes so used rows stay exactly [0, used_rows)."""
        holes = [row for row in range(self._used_rows) if self._row_stream[row] is None]
        movers = [row for row in range(self._used_rows, self.max_rows) if self._row_stream[row] is not None]
        for destination, source in zip(holes, movers):
            self._move_row(source, destination)

    def _move_row(self, source: int, destination: int) -> None:
        seq_id = self._row_stream[source]
        assert seq_id is not None
        stream = self._streams[seq_id]
        filled = stream.length
        self._kv[:, :, destination, :, :filled] = self._kv[:, :, source, :, :filled]
        self._last_token[destination] = self._last_token[source]
        self._seen[destination] = self._seen[source]
        if self._alignment is not None:
            self._alignment.move_row(source, destination)
        stream.rows[stream.rows.index(source)] = destination
        self._row_stream[destination], self._row_stream[source] = seq_id, None

    # ------------------------------------------------------------------------------- graphs and compile

    @torch.no_grad()
    def capture(self, batch_sizes: Iterable[int] | None = None, context_sizes: Iterable[int] | None = None
                ) -> dict:
        """CUDA only: prepare the decode step for every (row window, context window) bucket.

        `batch_sizes` are decode batch sizes in KV rows (a CFG stream is two rows); each is rounded up to a
        row bucket (powers of two up to `max_rows`). `context_sizes` likewise round up to context buckets
        (powers of two from 128, then the full cache). Default: all buckets. Each bucket is compiled (per
        `--compile-mode`) and captured once. A failure leaves eager decoding in place and its reason in
        `status()`. Safe while streams are active."""
        if self.device.type != "cuda" or not self.graphs.optimizing:
            return self.status()
        rows = sorted({_bucket(b, self._row_buckets) for b in batch_sizes or self._row_buckets}, reverse=True)
        contexts = sorted({_bucket(c, self._context_buckets) for c in context_sizes or self._context_buckets},
                          reverse=True)
        self._ints[_ADVANCE].zero_()  # nothing advances while capturing; the next step rewrites the layout
        self._layout_key = None
        try:
            for window in rows:  # largest first: later captures reuse the graph pool's memory
                for context in contexts:
                    self.graphs.capture("decode", window, context)
            torch.cuda.synchronize(self.device)
        except Exception as exc:
            self.graphs.fall_back(f"capture failed: {type(exc).__name__}: {exc}")
        return self.status()

    def warmup(self) -> dict:
        """Capture (or compile) the decode step for every bucket; a no-op on CPU."""
        return self.capture()

    def status(self) -> dict:
        on_cuda = self.device.type == "cuda"
        return {
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "attention": "sdpa: causal prefill, masked decode over a static slot cache"
                         + (" (flash / memory-efficient kernels)" if on_cuda else ""),
            "sampling": "greedy" if self.greedy else "per-row counter-hash RNG + Gumbel-max",
            **self.graphs.status(),
            "captured_buckets": self.graphs.captured("decode"),
            "alignment_guard": self._alignment is not None,
            "row_buckets": list(self._row_buckets),
            "context_buckets": list(self._context_buckets),
            "max_batch": self.max_batch,
            "max_rows": self.max_rows,
            "max_context": self.max_context,
            "active_streams": len(self._streams),
            "free_rows": self.free_rows,
        }


def _fuse_linears(*linears: nn.Linear) -> torch.Tensor:
    """Concatenate bias-free Linear weights into one matrix and re-point each module's weight at its slice,
    so the fused projection costs no extra memory and upstream's modules keep working unchanged."""
    if any(linear.bias is not None for linear in linears):
        raise ValueError("T3Decoder expects bias-free projections (Chatterbox's Llama has none)")
    fused = torch.cat([linear.weight.detach() for linear in linears])
    start = 0
    for linear in linears:
        rows = linear.weight.shape[0]
        linear.weight.data = fused[start:start + rows]
        start += rows
    return fused


def _rotation_matrices(cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding as matrices: for a row vector x at position p, x @ R[p] equals Hugging Face's
    `x * cos + rotate_half(x) * sin`, rotate_half(x) = cat(-x2, x1). cos, sin: (P, D) -> (P, D, D)."""
    half = cos.shape[1] // 2
    columns = torch.arange(cos.shape[1], device=cos.device)
    sign = torch.where(columns < half, -1.0, 1.0).to(sin)
    rotation = torch.diag_embed(cos)
    rotation[:, (columns + half) % cos.shape[1], columns] = sin * sign  # out[j] takes -x[j+h] or +x[j-h]
    return rotation


def _rms_norm(x: torch.Tensor, norm: nn.Module) -> torch.Tensor:
    """Upstream's `LlamaRMSNorm` as one operator."""
    weight: torch.Tensor = norm.weight  # type: ignore[assignment]  # nn.Module attributes are untyped
    epsilon: float = norm.variance_epsilon  # type: ignore[assignment]
    return F.rms_norm(x, x.shape[-1:], weight, epsilon)


def _add_projection(x: torch.Tensor, h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """`x + h @ weight.T` (a residual add and a bias-free Linear) as one GEMM."""
    flat = torch.addmm(x.reshape(-1, x.shape[-1]), h.reshape(-1, h.shape[-1]), weight.t())
    return flat.view(x.shape)


def _buckets(limit: int, smallest: int) -> tuple[int, ...]:
    sizes = []
    size = smallest
    while size < limit:
        sizes.append(size)
        size *= 2
    return (*sizes, limit)


def _bucket(size: int, buckets: tuple[int, ...]) -> int:
    for bucket in buckets:
        if bucket >= size:
            return bucket
    raise ValueError(f"{size} exceeds the largest bucket {buckets[-1]}")


def _cond_on(cond: T3Cond, device: torch.device, dtype: torch.dtype) -> T3Cond:
    """A copy of `cond` on the decoder's device and dtype (the caller's object is left untouched)."""
    emotion = cond.emotion_adv
    if not torch.is_tensor(emotion):
        emotion = torch.full((1, 1, 1), float(emotion))
    return dataclasses.replace(cond, emotion_adv=emotion).to(device=device, dtype=dtype)
