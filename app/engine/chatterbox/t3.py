"""Our decode loop for the Llama T3 (standard and multilingual Chatterbox), on the shared slot-KV machinery.

`SlotDecoder` (slot_decoder.py) holds the streams, the static KV cache, the batched step and its CUDA graphs;
`T3Decoder` runs the computation of upstream's `T3.inference` over chatterbox's own T3 weights (the LlamaModel
layers, rotary table, speech embeddings and speech head):

* Rows: a stream holds one row, or two (conditional and unconditional) when it uses classifier-free guidance;
  `cfg_weight == 0` never computes the unconditional row.
* Prompt: `add` runs one forward over cond + SOT text EOT + BOS (built by `T3.prepare_input_embeds`) into the
  stream's rows. Upstream feeds a second BOS (with speech position 0) after that prompt; here that second BOS is
  simply the stream's first decode input, so the first `step` yields upstream's prefill logits.
* Sampling: CFG combine, the alignment guard where it runs, then upstream's processors (`process_logits`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from chatterbox.models.t3 import T3
from chatterbox.models.t3.modules.cond_enc import T3Cond
from torch import nn

from app.engine.chatterbox import sampling
from app.engine.chatterbox.alignment import AlignmentGuard
from app.engine.chatterbox.slot_decoder import (
    ADVANCE,
    FLOAT_DEFAULTS,
    GENERATED,
    N_INTS,
    OWNER,
    REPETITION,
    TEMPERATURE,
    TOP_P_FLOOR,
    Attend,
    SlotDecoder,
    Stream,
    cond_on,
)
from app.engine.types import GenerationSettings

# T3's own rows of `_ints` and `_floats` after the shared ones: the unconditional row a conditional row combines
# with (itself without CFG), and the CFG weight and min-p per row.
_PARTNER = N_INTS
_CFG, _MIN_P = len(FLOAT_DEFAULTS), len(FLOAT_DEFAULTS) + 1


class T3Decoder(SlotDecoder):
    """Batched, slot-based decoder for the Llama T3; see the module docstrings. Not thread-safe: one caller."""

    _N_INTS = N_INTS + 1
    ROWS_PER_STREAM = 2  # conditional and unconditional rows under CFG
    _ROW_FIELDS = (OWNER, _PARTNER)
    _FLOAT_DEFAULTS = (*FLOAT_DEFAULTS, 0.0, 0.0)
    _BACKBONE = "llama"

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
            raise ValueError("T3Decoder supports the Llama backbone only (TurboT3Decoder runs Turbo's GPT-2)")
        cfg = t3.cfg
        heads = cfg.num_attention_heads
        if cfg.num_key_value_heads != heads:
            raise ValueError("T3Decoder expects as many KV heads as query heads (Chatterbox's T3 has both at 16)")
        self._heads = heads
        self._head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        super().__init__(t3, max_batch=max_batch, max_rows=max_rows or 2 * max_batch, max_context=max_context,
                         device=device, dtype=dtype, enable_cuda_graphs=enable_cuda_graphs,
                         compile_mode=compile_mode, greedy=greedy, layers=cfg.num_hidden_layers, heads=heads,
                         head_dim=self._head_dim)
        self._layers = list(self._t3.tfmr.layers)
        self._wqkv = [_fuse_linears(layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj)
                      for layer in self._layers]
        self._wgate_up = [_fuse_linears(layer.mlp.gate_proj, layer.mlp.up_proj) for layer in self._layers]
        self._speech_positions = t3.speech_pos_emb.emb.num_embeddings
        # Chatterbox's rotary module (llama3 scaling) evaluated once for every cache position. A fresh instance:
        # casting T3 to bf16 also casts the module's inv_freq buffer, which would blur far positions.
        rotary = type(self._t3.tfmr.rotary_emb)(config=cfg, device=self.device)
        cos, sin = rotary(torch.zeros(1, device=self.device), self._positions[None])
        self._rotation = _rotation_matrices(cos[0], sin[0]).to(self.dtype)  # (cache_len, head_dim, head_dim)
        guarded = t3.hp.is_multilingual if alignment_guard is None else alignment_guard
        self._alignment = (AlignmentGuard(self.max_rows, len(self._layers), t3.hp.stop_speech_token, self.device)
                           if guarded else None)

    def tokens_left(self, seq_id: str) -> int:
        """How many more tokens `step` can produce for this sequence before its context (or the speech
        position table) is full."""
        stream = self._streams[seq_id]
        return min(super().tokens_left(seq_id), self._speech_positions - stream.generated)

    @property
    def measures_alignment(self) -> bool:
        return self._alignment is not None

    def spoken_text_positions(self, seq_ids: list[str]) -> torch.Tensor:
        if self._alignment is None:
            return super().spoken_text_positions(seq_ids)
        return self._alignment.spoken.index_select(0, self._out_index)

    # ------------------------------------------------------------------------------------------ prompt

    def _rows_for(self, settings: GenerationSettings) -> int:
        return 2 if settings.cfg_weight > 0 else 1

    def _prompt_embeds(self, t3_cond: T3Cond, text_tokens: torch.Tensor, settings: GenerationSettings,
                       n_rows: int) -> torch.Tensor:
        """(n_rows, prompt_len, dim) exactly as `ChatterboxTTS.generate` + `T3.inference` build them."""
        hp = self._hp
        text = text_tokens.to(device=self.device, dtype=torch.long).flatten()
        text = F.pad(F.pad(text, (1, 0), value=hp.start_text_token), (0, 1), value=hp.stop_text_token)
        bos = torch.full((n_rows, 1), hp.start_speech_token, dtype=torch.long, device=self.device)
        embeds, _ = self._t3.prepare_input_embeds(
            t3_cond=cond_on(t3_cond, self.device, self.dtype),
            text_tokens=text[None].expand(n_rows, -1),
            speech_tokens=bos,
            cfg_weight=settings.cfg_weight,
        )
        return embeds

    def _start_rows(self, rows: slice, text_tokens: torch.Tensor, prompt_len: int) -> None:
        super()._start_rows(rows, text_tokens, prompt_len)
        if self._alignment is not None:
            text_len = text_tokens.numel() + 2  # with start and end of text; the prompt ends with BOS
            self._alignment.reset(rows, prompt_len - 1 - text_len, text_len)

    # ------------------------------------------------------------------------------------------ backbone

    def _backbone(self, x: torch.Tensor, positions: torch.Tensor, attend: Attend) -> torch.Tensor:
        rotation = self._rotation[positions]  # (B or 1, L, head_dim, head_dim)
        for layer in range(len(self._layers)):
            x = self._layer_forward(layer, x, rotation, attend)
        return x

    def _layer_forward(self, index: int, x: torch.Tensor, rotation: torch.Tensor, attend: Attend) -> torch.Tensor:
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

    def _step_inputs(self, rows: int) -> torch.Tensor:
        t3 = self._t3
        generated = self._ints[GENERATED, :rows]
        return (t3.speech_emb(self._last_token[:rows]) + t3.speech_pos_emb.emb(generated))[:, None]

    def _observe(self, layer: int, q: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> None:
        if self._alignment is not None:
            self._alignment.observe(layer, q, keys, mask)

    def _speech_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self._t3.speech_head(_rms_norm(hidden, self._t3.tfmr.norm)).float()

    # ------------------------------------------------------------------------------------------ sampling

    def _process_logits(self, rows: int, logits: torch.Tensor) -> torch.Tensor:
        ints, floats = self._ints[:, :rows], self._floats[:, :rows]
        return sampling.process_logits(
            logits, partner=ints[_PARTNER], cfg_weight=floats[_CFG], seen=self._seen[:rows],
            repetition_penalty=floats[REPETITION], temperature=floats[TEMPERATURE], min_p=floats[_MIN_P],
            top_p_floor=floats[TOP_P_FLOOR], guard=self._guard(rows),
        )

    def _guard(self, rows: int) -> Callable[[torch.Tensor], torch.Tensor] | None:
        if self._alignment is None:
            return None
        ints = self._ints[:, :rows]
        return functools.partial(self._alignment.guard, advance=ints[ADVANCE], generated=ints[GENERATED],
                                 last_token=self._last_token[:rows])

    # ------------------------------------------------------------------------------------------ layout

    def _fill_row_layout(self, ints: list[list[int]], floats: list[list[float]], stream: Stream) -> None:
        cond = stream.rows[0]
        if len(stream.rows) == 2:
            ints[_PARTNER][cond] = stream.rows[1]
            floats[_CFG][cond] = stream.settings.cfg_weight
        for row in stream.rows:
            floats[_MIN_P][row] = stream.settings.min_p

    def _move_row_state(self, source: int, destination: int, filled: int) -> None:
        super()._move_row_state(source, destination, filled)
        if self._alignment is not None:
            self._alignment.move_row(source, destination)

    def _status_extras(self) -> dict:
        return {"alignment_guard": self._alignment is not None}


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
