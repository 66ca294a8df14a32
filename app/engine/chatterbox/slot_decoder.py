"""What our batched T3 decoders share: streams in rows of one static KV cache, stepped together on the device.

Upstream decodes one stream at a time through Hugging Face's dynamic cache and reads every token back to the host.
`SlotDecoder` runs many streams at once; its subclasses bring the backbone (`T3Decoder` in t3.py: the Llama T3 of
the standard and multilingual models; `TurboT3Decoder` in t3_turbo.py: Turbo's GPT-2):

* KV cache: one preallocated tensor of `max_rows` rows; a stream holds one row, or more if its backbone needs
  them (the Llama T3's classifier-free guidance). Used rows are kept packed in `[0, used_rows)`: when a stream
  leaves, the highest rows move down into the hole (a device copy of their KV), so a decode step only ever
  touches a dense prefix of the cache.
* Prompt: `add` runs one causal forward over the stream's prompt into its rows; the first decode input (the
  speech BOS) is the stream's last token, so every step, the first included, has the same shape.
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
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from chatterbox.models.t3 import T3
from chatterbox.models.t3.modules.cond_enc import T3Cond

from app.engine.chatterbox import sampling
from app.engine.graphs import GraphRunner
from app.engine.types import EngineError, GenerationSettings

_MIN_CONTEXT_BUCKET = 128
_CONTEXT_ALIGN = 64  # keeps every KV window a multiple of 16 elements, as the memory-efficient SDPA kernel wants

# Rows of `SlotDecoder._ints` every decoder has (subclasses append theirs from N_INTS on): the row holding the
# stream's token, whether the row advances this step, its KV length, tokens generated, its stream's RNG key.
OWNER, ADVANCE, LENGTH, GENERATED, KEY = range(5)
N_INTS = 5
# Rows of `SlotDecoder._floats` every decoder has, and their neutral values for unused rows.
REPETITION, TEMPERATURE, TOP_P_FLOOR = range(3)
FLOAT_DEFAULTS = (1.0, 1.0, 0.0)

# attend(layer, q, k, v) -> attention output, each (B, heads, L, head_dim): owns the KV cache.
Attend = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Stream:
    rows: list[int]  # the first row holds the stream's tokens
    settings: GenerationSettings
    key: int  # sampling RNG key from the seed
    prompt_len: int  # KV positions the prefill filled
    generated: int = 0  # tokens sampled so far

    @property
    def length(self) -> int:
        """KV position the next step writes (its input is the last sampled token, or the speech BOS)."""
        return self.prompt_len + self.generated


class SlotDecoder(ABC):
    """Batched, slot-based T3 speech-token decoder; see the module docstring. Not thread-safe: one caller."""

    _N_INTS = N_INTS  # how many rows `_ints` has, subclasses' own fields included
    _ROW_FIELDS: tuple[int, ...] = (OWNER,)  # `_ints` fields naming a row: unused rows name themselves
    _FLOAT_DEFAULTS: tuple[float, ...] = FLOAT_DEFAULTS
    _BACKBONE = ""  # for status()
    ROWS_PER_STREAM = 1  # at most: a stream holds this many KV rows (two with classifier-free guidance)
    _ATTENTION = "sdpa: causal prefill, masked decode over a static slot cache"

    def __init__(self, t3: T3, *, max_batch: int, max_rows: int, max_context: int, device: torch.device | str | None,
                 dtype: torch.dtype | None, enable_cuda_graphs: bool, compile_mode: str | None, greedy: bool,
                 layers: int, heads: int, head_dim: int):
        """`t3` is moved to `device`/`dtype` (bf16 on CUDA, float32 elsewhere by default); the KV cache holds
        `max_rows` rows of `layers` x `heads` x `max_context` (rounded up) x `head_dim` keys and values."""
        self.device = torch.device(device) if device is not None else t3.device
        self.dtype = dtype or (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        self.max_batch = max_batch
        self.max_rows = max_rows
        self.max_context = max_context
        self.greedy = greedy
        self._t3 = t3.to(device=self.device, dtype=self.dtype).eval()
        self._hp = t3.hp

        self._cache_len = -(-max_context // _CONTEXT_ALIGN) * _CONTEXT_ALIGN
        self._row_buckets = _buckets(self.max_rows, 1)
        self._context_buckets = _buckets(self._cache_len, _MIN_CONTEXT_BUCKET)
        self._allocate_state(layers, heads, head_dim)

        self._streams: dict[str, Stream] = {}
        self._row_stream: list[str | None] = [None] * self.max_rows
        self._used_rows = 0
        self._layout_key: tuple[str, ...] | None = None
        self._out_index = torch.zeros(0, dtype=torch.long, device=self.device)
        self._last_logits = torch.zeros(0, device=self.device)

        # One compile serves every bucket (dynamic); graph outputs are used before the next replay, not copied.
        self.graphs = GraphRunner("T3", self.device, compile_mode, enable_cuda_graphs)
        self.graphs.register("decode", self._decode, dynamic=True, copy_outputs=False)

    # ----------------------------------------------------------------------------------------------- state

    def _allocate_state(self, layers: int, heads: int, head_dim: int) -> None:
        rows, dev = self.max_rows, self.device
        self._kv = torch.zeros(layers, 2, rows, heads, self._cache_len, head_dim, dtype=self.dtype, device=dev)
        self._last_token = torch.zeros(rows, dtype=torch.long, device=dev)
        self._seen = torch.zeros(rows, self._hp.speech_tokens_dict_size, dtype=torch.bool, device=dev)
        self._ints = torch.zeros(self._N_INTS, rows, dtype=torch.long, device=dev)
        self._floats = torch.zeros(len(self._FLOAT_DEFAULTS), rows, dtype=torch.float32, device=dev)
        self._positions = torch.arange(self._cache_len, device=dev)
        self._vocab_hash = sampling.vocab_hashes(self._hp.speech_tokens_dict_size, dev)

    @property
    def free_rows(self) -> int:
        return self.max_rows - self._used_rows

    @property
    def active(self) -> set[str]:
        return set(self._streams)

    def tokens_left(self, seq_id: str) -> int:
        """How many more tokens `step` can produce for this sequence before its context is full."""
        return self.max_context - self._streams[seq_id].length

    # ------------------------------------------------------------------------------------ engine interface

    @torch.no_grad()
    def add(self, seq_id: str, t3_cond: T3Cond, text_tokens: torch.Tensor, settings: GenerationSettings) -> None:
        """Prefill the sequence's prompt; its first `step` samples its first token."""
        if seq_id in self._streams:
            raise ValueError(f"sequence {seq_id!r} is already in the decoder")
        n_rows = self._rows_for(settings)
        if len(self._streams) >= self.max_batch or self.free_rows < n_rows:
            raise EngineError("no_capacity", f"T3 decoder full: {len(self._streams)} streams, "
                                             f"{self.free_rows} free KV rows, {n_rows} needed")
        embeds = self._prompt_embeds(t3_cond, text_tokens, settings, n_rows)
        prompt_len = embeds.shape[1]
        if prompt_len >= self.max_context:
            raise EngineError("text_too_long", f"prompt of {prompt_len} tokens leaves no room in the "
                                               f"{self.max_context}-token context")
        first = self._used_rows
        rows = list(range(first, first + n_rows))
        self._prefill(first, embeds)
        self._start_rows(slice(first, first + n_rows), text_tokens, prompt_len)
        seed = settings.seed if settings.seed is not None else int(torch.randint(0, 2**62, ()).item())
        self._streams[seq_id] = Stream(rows, settings, sampling.stream_key(seed), prompt_len)
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

    @property
    def measures_alignment(self) -> bool:
        """Whether `spoken_text_positions` reports measured positions (an alignment guard runs)."""
        return False

    def spoken_text_positions(self, seq_ids: list[str]) -> torch.Tensor:
        """After a `step` of exactly `seq_ids`: per sequence, the furthest text position (0 = start of text)
        the aligned heads have reached, a (len(seq_ids),) device tensor; -1 where no guard runs."""
        return torch.full((len(seq_ids),), -1, dtype=torch.long, device=self.device)

    def last_logits(self, seq_id: str) -> torch.Tensor:
        """Raw speech-head logits (float32) of this sequence's rows at the last step, its first row first.
        For tests and debugging; valid until the next step."""
        rows = torch.tensor(self._stream(seq_id).rows, device=self.device)
        return self._last_logits.index_select(0, rows)

    # ------------------------------------------------------------------------------- backbone (subclasses)

    @abstractmethod
    def _rows_for(self, settings: GenerationSettings) -> int:
        """KV rows a stream with these settings holds."""

    @abstractmethod
    def _prompt_embeds(self, t3_cond: T3Cond, text_tokens: torch.Tensor, settings: GenerationSettings,
                       n_rows: int) -> torch.Tensor:
        """(n_rows, prompt_len, dim): the inputs the prefill writes into the KV cache (the speech BOS excluded:
        it is the first decode input)."""

    @abstractmethod
    def _backbone(self, x: torch.Tensor, positions: torch.Tensor, attend: Attend) -> torch.Tensor:
        """The transformer layers on (B, L, dim) inputs at KV `positions` ((B or 1, L)), before the final
        norm."""

    @abstractmethod
    def _step_inputs(self, rows: int) -> torch.Tensor:
        """(rows, 1, dim): the decode inputs of the first `rows` rows, from their last tokens."""

    @abstractmethod
    def _speech_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(R, vocab) float32 speech logits from (R, dim) backbone outputs."""

    @abstractmethod
    def _process_logits(self, rows: int, logits: torch.Tensor) -> torch.Tensor:
        """Upstream's logits pipeline for the first `rows` rows, ready for `sampling.sample_tokens`."""

    def _start_rows(self, rows: slice, text_tokens: torch.Tensor, prompt_len: int) -> None:
        """Reset a new stream's per-row device state: its first decode input is the speech BOS."""
        start = self._hp.start_speech_token
        self._last_token[rows] = start
        self._seen[rows] = False
        self._seen[rows, start] = True  # upstream penalises BOS too

    def _observe(self, layer: int, q: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> None:
        """Sees each decode step's queries and keys (the alignment guard's hook)."""

    def _fill_row_layout(self, ints: list[list[int]], floats: list[list[float]], stream: Stream) -> None:
        """Set the subclass's own per-row fields of one stream's rows."""

    def _status_extras(self) -> dict:
        return {}

    # ------------------------------------------------------------------------------------------ prefill

    def _prefill(self, first_row: int, embeds: torch.Tensor) -> None:
        n_rows, length, _ = embeds.shape
        rows = slice(first_row, first_row + n_rows)

        def attend(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            self._kv[layer, 0, rows, :, :length] = k
            self._kv[layer, 1, rows, :, :length] = v
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

        self._backbone(embeds, self._positions[None, :length], attend)

    # ------------------------------------------------------------------------------------- decode step

    def _decode(self, rows: int, context: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One token for each of the first `rows` rows, attending to the first `context` cache positions.
        Reads and writes only persistent buffers, so it can be captured as a CUDA graph. Returns (tokens
        (rows,), raw logits (rows, vocab) float32)."""
        ints = self._ints[:, :rows]
        length = ints[LENGTH]
        _, _, _, heads, _, head_dim = self._kv.shape
        write_at = length.view(rows, 1, 1, 1).expand(rows, heads, 1, head_dim)
        # An additive mask built once per step (a boolean one is converted inside every layer's SDPA call).
        hidden = (self._positions[None, :context] > length[:, None]).view(rows, 1, 1, context)
        mask = torch.zeros(rows, 1, 1, context, dtype=self.dtype, device=self.device)
        mask.masked_fill_(hidden, -torch.inf)

        def attend(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            keys, values = self._kv[layer, 0, :rows], self._kv[layer, 1, :rows]
            keys.scatter_(2, write_at, k)
            values.scatter_(2, write_at, v)
            self._observe(layer, q, keys[:, :, :context], mask)
            return F.scaled_dot_product_attention(q, keys[:, :, :context], values[:, :, :context], attn_mask=mask)

        out = self._backbone(self._step_inputs(rows), length[:, None], attend)
        logits = self._speech_logits(out[:, 0])
        processed = self._process_logits(rows, logits)
        tokens = sampling.sample_tokens(processed, ints[KEY], ints[GENERATED], self._vocab_hash, self.greedy)
        self._append(rows, tokens)
        return tokens, logits

    def _append(self, rows: int, tokens: torch.Tensor) -> None:
        """Advance the rows whose stream is being stepped: each row takes its owner row's token."""
        ints = self._ints[:, :rows]
        advance = ints[ADVANCE]
        moving = advance.bool()
        row_tokens = tokens.index_select(0, ints[OWNER])
        last = self._last_token[:rows]
        last.copy_(torch.where(moving, row_tokens, last))
        ints[LENGTH].add_(advance)
        ints[GENERATED].add_(advance)
        seen = self._seen[:rows]
        seen.scatter_(1, row_tokens[:, None], seen.gather(1, row_tokens[:, None]) | moving[:, None])

    def _run(self, rows: int, context: int) -> tuple[torch.Tensor, torch.Tensor]:
        tokens, logits = self.graphs.run("decode", rows, context)
        return tokens, logits

    # ------------------------------------------------------------------------------------------ layout

    def _stream(self, seq_id: str) -> Stream:
        try:
            return self._streams[seq_id]
        except KeyError:
            raise KeyError(f"sequence {seq_id!r} is not in the decoder") from None

    def _sync_layout(self, stepped: tuple[str, ...]) -> None:
        """Rewrite the host-derived per-row tensors when membership or the stepped set changed since last step."""
        if stepped == self._layout_key:
            return
        ints = [[row if field in self._ROW_FIELDS else 0 for row in range(self.max_rows)]
                for field in range(self._N_INTS)]
        floats = [[default] * self.max_rows for default in self._FLOAT_DEFAULTS]
        advancing = set(stepped)
        for seq_id, stream in self._streams.items():
            s = stream.settings
            for row in stream.rows:
                ints[OWNER][row] = stream.rows[0]
                ints[ADVANCE][row] = int(seq_id in advancing)
                ints[LENGTH][row] = stream.length
                ints[GENERATED][row] = stream.generated
                ints[KEY][row] = stream.key
                floats[REPETITION][row] = s.repetition_penalty
                floats[TEMPERATURE][row] = s.temperature
                floats[TOP_P_FLOOR][row] = 1.0 - s.top_p  # Hugging Face compares against (1 - top_p)
            self._fill_row_layout(ints, floats, stream)
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
        self._move_row_state(source, destination, stream.length)
        stream.rows[stream.rows.index(source)] = destination
        self._row_stream[destination], self._row_stream[source] = seq_id, None

    def _move_row_state(self, source: int, destination: int, filled: int) -> None:
        """Copy a row's device state (its first `filled` KV positions) to another row."""
        self._kv[:, :, destination, :, :filled] = self._kv[:, :, source, :, :filled]
        self._last_token[destination] = self._last_token[source]
        self._seen[destination] = self._seen[source]

    # ------------------------------------------------------------------------------- graphs and compile

    @torch.no_grad()
    def capture(self, batch_sizes: Iterable[int] | None = None, context_sizes: Iterable[int] | None = None
                ) -> dict:
        """CUDA only: prepare the decode step for every (row window, context window) bucket.

        `batch_sizes` are decode batch sizes in KV rows; each is rounded up to a row bucket (powers of two up
        to `max_rows`). `context_sizes` likewise round up to context buckets (powers of two from 128, then the
        full cache). Default: all buckets. Each bucket is compiled (per `--compile-mode`) and captured once. A
        failure leaves eager decoding in place and its reason in `status()`. Safe while streams are active."""
        if self.device.type != "cuda" or not self.graphs.optimizing:
            return self.status()
        rows = sorted({_bucket(b, self._row_buckets) for b in batch_sizes or self._row_buckets}, reverse=True)
        contexts = sorted({_bucket(c, self._context_buckets) for c in context_sizes or self._context_buckets},
                          reverse=True)
        self._ints[ADVANCE].zero_()  # nothing advances while capturing; the next step rewrites the layout
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
            "backbone": self._BACKBONE,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "attention": self._ATTENTION + (" (flash / memory-efficient kernels)" if on_cuda else ""),
            "sampling": "greedy" if self.greedy else "per-row counter-hash RNG + Gumbel-max",
            **self.graphs.status(),
            "captured_buckets": self.graphs.captured("decode"),
            **self._status_extras(),
            "row_buckets": list(self._row_buckets),
            "context_buckets": list(self._context_buckets),
            "max_batch": self.max_batch,
            "max_rows": self.max_rows,
            "max_context": self.max_context,
            "active_streams": len(self._streams),
            "free_rows": self.free_rows,
        }


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


def cond_on(cond: T3Cond, device: torch.device, dtype: torch.dtype) -> T3Cond:
    """A copy of `cond` on the decoder's device and dtype (the caller's object is left untouched)."""
    emotion = cond.emotion_adv
    if not torch.is_tensor(emotion):
        emotion = torch.full((1, 1, 1), float(emotion))
    return dataclasses.replace(cond, emotion_adv=emotion).to(device=device, dtype=dtype)
