"""Our decode loop for Chatterbox-Turbo's T3 (a GPT-2 backbone), on the shared slot-KV machinery.

`SlotDecoder` (slot_decoder.py) holds the streams, the static KV cache, the batched step and its CUDA graphs;
`TurboT3Decoder` runs the computation of upstream's `T3.inference_turbo` over chatterbox's own weights (the
GPT2Model blocks, its learned position table `wpe`, the speech embedding and the biased speech head):

* Rows: one per stream. Turbo has no classifier-free guidance (upstream ignores `cfg_weight`, and `min_p`).
* Prompt: upstream runs cond + text + BOS (`T3.prepare_input_embeds`; Turbo adds no SOT/EOT and has no
  text or speech position embeddings) through GPT2Model, which adds `wpe` at every position, and samples the
  first token from the BOS position. Here the prefill covers cond + text and the BOS is the stream's first decode
  input, so the first `step` yields upstream's prefill logits. Every decode input is the speech embedding of the
  last token plus `wpe` at its KV position, as GPT2Model adds it from the cache length.
* Sampling: upstream Turbo's processors (`process_turbo_logits`: temperature, top-k, top-p, then the repetition
  penalty). Its repetition history is the BOS for the first token and only the generated tokens afterwards.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from chatterbox.models.t3 import T3
from chatterbox.models.t3.modules.cond_enc import T3Cond
from transformers import GPT2Config

from app.engine.chatterbox import sampling
from app.engine.chatterbox.slot_decoder import (
    ADVANCE,
    GENERATED,
    N_INTS,
    REPETITION,
    TEMPERATURE,
    TOP_P_FLOOR,
    Attend,
    SlotDecoder,
    Stream,
    cond_on,
)
from app.engine.types import GenerationSettings

_TOP_K = N_INTS  # Turbo's own row of `_ints`: top-k per row (0 keeps every token)
UPSTREAM_TOP_K = 1000  # `ChatterboxTurboTTS.generate`'s default


class TurboT3Decoder(SlotDecoder):
    """Batched, slot-based decoder for Turbo's GPT-2 T3, with `T3Decoder`'s interface; see the module docstrings.
    Not thread-safe: one caller."""

    _N_INTS = N_INTS + 1
    _BACKBONE = "gpt2"

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
        top_k: int = UPSTREAM_TOP_K,
    ):
        """`max_batch` streams at most, one KV row each (`max_rows`, default `max_batch`); `max_context` tokens
        per row (prompt + generated), at most GPT-2's position table. `greedy` takes the argmax instead of
        sampling (tests, benchmarks). `top_k` applies to every stream (GenerationSettings has no top-k). `t3`
        is moved to `device`/`dtype` (bf16 on CUDA, float32 elsewhere by default); its weights are used as
        they are."""
        if not t3.is_gpt:
            raise ValueError("TurboT3Decoder runs Turbo's GPT-2 backbone only (T3Decoder runs the Llama T3)")
        cfg = t3.cfg
        _check_supported(cfg)
        if max_context > cfg.n_positions:
            raise ValueError(f"max_context {max_context} exceeds GPT-2's {cfg.n_positions} learned positions")
        self._heads = cfg.n_head
        self._head_dim = cfg.n_embd // cfg.n_head
        self.top_k = top_k
        super().__init__(t3, max_batch=max_batch, max_rows=max_rows or max_batch, max_context=max_context,
                         device=device, dtype=dtype, enable_cuda_graphs=enable_cuda_graphs,
                         compile_mode=compile_mode, greedy=greedy, layers=cfg.n_layer, heads=self._heads,
                         head_dim=self._head_dim)
        self._blocks = list(self._t3.tfmr.h)
        self._wpe = self._t3.tfmr.wpe

    # ------------------------------------------------------------------------------------------ prompt

    def _rows_for(self, settings: GenerationSettings) -> int:
        return 1

    def _prompt_embeds(self, t3_cond: T3Cond, text_tokens: torch.Tensor, settings: GenerationSettings,
                       n_rows: int) -> torch.Tensor:
        """(1, prompt_len, dim): cond + text exactly as `T3.inference_turbo` builds them, without the final BOS
        (our first decode input)."""
        text = text_tokens.to(device=self.device, dtype=torch.long).flatten()
        bos = torch.full((1, 1), self._hp.start_speech_token, dtype=torch.long, device=self.device)
        embeds, _ = self._t3.prepare_input_embeds(
            t3_cond=cond_on(t3_cond, self.device, self.dtype), text_tokens=text[None], speech_tokens=bos,
            cfg_weight=0.0,
        )
        return embeds[:, :-1]

    # ------------------------------------------------------------------------------------------ backbone

    def _backbone(self, x: torch.Tensor, positions: torch.Tensor, attend: Attend) -> torch.Tensor:
        x = x + self._wpe(positions)
        for index in range(len(self._blocks)):
            x = self._block_forward(index, x, attend)
        return x

    def _block_forward(self, index: int, x: torch.Tensor, attend: Attend) -> torch.Tensor:
        """One `GPT2Block` (pre-norm attention, then pre-norm MLP) on (B, L, dim) through upstream's own
        modules (LayerNorm, and Conv1D: one `addmm` each, weight stored [in, out]); `attend` owns the KV cache."""
        block = self._blocks[index]
        batch, length, _ = x.shape
        qkv = block.attn.c_attn(block.ln_1(x))  # q, k, v side by side, as GPT2Attention splits them
        q, k, v = qkv.view(batch, length, 3, self._heads, self._head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        x = x + block.attn.c_proj(attend(index, q, k, v).transpose(1, 2).reshape(batch, length, -1))
        # GPT-2's "gelu_new" is the tanh approximation of GELU: one fused kernel instead of its seven ops.
        return x + block.mlp.c_proj(F.gelu(block.mlp.c_fc(block.ln_2(x)), approximate="tanh"))

    def _step_inputs(self, rows: int) -> torch.Tensor:
        return self._t3.speech_emb(self._last_token[:rows])[:, None]

    def _speech_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self._t3.speech_head(self._t3.tfmr.ln_f(hidden)).float()

    # ------------------------------------------------------------------------------------------ sampling

    def _process_logits(self, rows: int, logits: torch.Tensor) -> torch.Tensor:
        ints, floats = self._ints[:, :rows], self._floats[:, :rows]
        return sampling.process_turbo_logits(
            logits, seen=self._seen[:rows], repetition_penalty=floats[REPETITION], temperature=floats[TEMPERATURE],
            top_k=ints[_TOP_K], top_p_floor=floats[TOP_P_FLOOR],
        )

    def _append(self, rows: int, tokens: torch.Tensor) -> None:
        # Upstream's history for the penalty is [BOS] for the first token, then the generated tokens alone.
        ints = self._ints[:, :rows]
        first = ints[ADVANCE].bool() & (ints[GENERATED] == 0)
        self._seen[:rows].masked_fill_(first[:, None], False)
        super()._append(rows, tokens)

    # ------------------------------------------------------------------------------------------ layout

    def _fill_row_layout(self, ints: list[list[int]], floats: list[list[float]], stream: Stream) -> None:
        ints[_TOP_K][stream.rows[0]] = self.top_k

    def _status_extras(self) -> dict:
        return {"alignment_guard": False, "top_k": self.top_k}


def _check_supported(cfg: GPT2Config) -> None:
    """The attention variants this decoder computes: GPT-2's defaults, which Turbo uses (SDPA scales by
    1/sqrt(head_dim), exactly `scale_attn_weights`), and its tanh-approximated GELU."""
    if cfg.activation_function not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ValueError(f"TurboT3Decoder computes the tanh GELU, not {cfg.activation_function}")
    if not cfg.scale_attn_weights or cfg.scale_attn_by_inverse_layer_idx or cfg.add_cross_attention:
        raise ValueError("TurboT3Decoder supports GPT-2's default self-attention only")
