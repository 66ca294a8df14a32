"""S3Gen's compute over batches of right-padded windows, free of host syncs so it can be graph-captured.

Chatterbox's modules are used as they are; three of their forward passes are re-stated here because the
upstream versions cannot serve a padded batch or a CUDA graph:

* `encode`: upstream's encoder zero-pads the lookahead convolution only at the true end of the input; in a
  padded row the convolution would read the (non-zero) embeddings of pad positions. Zeroing those first makes
  row i equal the unpadded call on its first `lengths[i]` tokens.
* `estimator_forward`: upstream's `ConditionalDecoder.forward` calls `add_optional_chunk_mask`, which reads a
  value back to the host (`.item()`) 14 times per call, breaking CUDA graph capture and torch.compile graphs.
  The math is unchanged; the attention bias comes straight from the mask, built once per resolution, and each
  transformer block runs with a fused q/k/v projection (`prepare_estimator`): a CFM step is one kernel launch
  after another at streaming sizes, so fewer kernels is less time (1107 -> 881 per step at full size).
* `vocoder_spectrum`: `HiFTGenerator.decode` minus its last step, because `torch.istft` checks its window
  envelope on the host; the inverse STFT runs outside the captured part (`vocoder_waveform`).

Every convolution in the encoder and estimator is causal or reads positions the mask zeroes, and every
attention masks pad keys, so padding changes a row's result only by float rounding (tests bound it).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from diffusers.models.activations import GELU
from torch.nn.utils import parametrize

Tensors = tuple[torch.Tensor, ...]


def padding_mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """(B, width) bool: True on each row's first `lengths[i]` positions."""
    return torch.arange(width, device=lengths.device)[None] < lengths[:, None]


def encode(flow, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Flow encoder + projection: tokens (B, L) right-padded, lengths (B,) -> mu (B, 2L, 80)."""
    encoder = flow.encoder
    valid = padding_mask(lengths, tokens.shape[1])
    xs = flow.input_embedding(tokens) * valid[..., None]
    xs, pos_emb, masks = encoder.embed(xs, valid[:, None])
    xs = xs * valid[..., None]  # the lookahead convolution must read zeros past each row's end, as unpadded
    xs = encoder.pre_lookahead_layer(xs)
    xs = encoder.forward_layers(xs, masks, pos_emb, masks)
    xs, up_lengths = encoder.up_layer(xs.transpose(1, 2).contiguous(), lengths)
    up_valid = padding_mask(up_lengths, xs.shape[2])[:, None]
    xs, pos_emb, masks = encoder.up_embed(xs.transpose(1, 2).contiguous(), up_valid)
    xs = encoder.forward_up_layers(xs, masks, pos_emb, masks)
    if encoder.normalize_before:
        xs = encoder.after_norm(xs)
    return flow.encoder_proj(xs)


def estimator_forward(estimator, x: torch.Tensor, mask: torch.Tensor, mu: torch.Tensor, t: torch.Tensor,
                      spks: torch.Tensor, cond: torch.Tensor, r: torch.Tensor | None = None) -> torch.Tensor:
    """`ConditionalDecoder.forward` without host syncs. x, mu, cond (B, 80, T); mask (B, 1, T); all in the
    estimator's dtype except `t` and `r` (float32: their sinusoidal embeddings need the precision). `r`, the
    step's end time, only for a meanflow estimator, which conditions on both ends of the step."""
    t = _time_embedding(estimator, t, x.dtype)
    if estimator.meanflow:
        assert r is not None  # a meanflow estimator's velocity is the mean over [t, r]
        t = estimator.time_embed_mixer(torch.cat([t, _time_embedding(estimator, r, x.dtype)], dim=1))
    x = torch.cat([x, mu, spks[:, :, None].expand(-1, -1, x.shape[2]), cond], dim=1)
    hiddens, masks = [], [mask]
    for resnet, blocks, downsample in estimator.down_blocks:
        mask_down = masks[-1]
        x = _attend(blocks, resnet(x, mask_down, t), _attention_bias(mask_down))
        hiddens.append(x)
        x = downsample(x * mask_down)
        masks.append(mask_down[:, :, ::2])
    masks = masks[:-1]
    mid_bias = _attention_bias(masks[-1])  # one bias for all twelve mid blocks
    for resnet, blocks in estimator.mid_blocks:
        x = _attend(blocks, resnet(x, masks[-1], t), mid_bias)
    for resnet, blocks, upsample in estimator.up_blocks:
        mask_up = masks.pop()
        skip = hiddens.pop()
        x = torch.cat([x[:, :, :skip.shape[-1]], skip], dim=1)
        x = _attend(blocks, resnet(x, mask_up, t), _attention_bias(mask_up))
        x = upsample(x * mask_up)
    x = estimator.final_block(x, mask_up)
    return estimator.final_proj(x * mask_up) * mask


def _time_embedding(estimator, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return estimator.time_mlp(estimator.time_embeddings(t).to(dtype))


def _attention_bias(mask: torch.Tensor) -> torch.Tensor:
    """Upstream's `mask_to_bias` for a (B, 1, T) mask, as (B, 1, 1, T): it broadcasts over heads and queries."""
    return ((1.0 - mask.bool().to(mask.dtype)) * -1.0e10)[:, None]


def _attend(blocks, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    x = x.transpose(1, 2).contiguous()
    for block in blocks:
        x = _transformer_block(block, x, bias)
    return x.transpose(1, 2).contiguous()


def _transformer_block(block, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """`BasicTransformerBlock.forward` as chatterbox configures it (see `prepare_estimator`) in fewer kernels:
    q, k and v in one projection, and no division by `rescale_output_factor` (1.0)."""
    attn = block.attn1
    batch, length, _ = x.shape
    qkv = attn.to_qkv(block.norm1(x)).view(batch, length, 3, attn.heads, -1)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, T, head_dim)
    attended = F.scaled_dot_product_attention(q, k, v, attn_mask=bias).transpose(1, 2).reshape(batch, length, -1)
    x = attn.to_out[0](attended) + x
    return block.ff.net[2](block.ff.net[0](block.norm3(x))) + x  # net[1] is dropout


def prepare_estimator(estimator, dtype: torch.dtype | None):
    """The estimator `estimator_forward` runs: in float32 the module itself, else a copy with its weights cast
    once (autocast would re-cast every weight on every call, and could not cache those casts across CUDA graph
    replays: it nearly doubled a CFM step's kernels, 1107 -> 2062 at full size). Each attention gets its fused
    q/k/v projection (diffusers' `fuse_projections`; the separate ones stay for upstream's own forward)."""
    if dtype is not None and dtype != torch.float32:
        estimator = copy.deepcopy(estimator).to(dtype)
    for _, blocks, *_ in [*estimator.down_blocks, *estimator.mid_blocks, *estimator.up_blocks]:
        for block in blocks:
            _check_plain_block(block)
            if not getattr(block.attn1, "fused_projections", False):
                with torch.no_grad():
                    block.attn1.fuse_projections()
    return estimator


def _check_plain_block(block) -> None:
    attn = block.attn1
    plain = (not block.use_ada_layer_norm and not block.use_ada_layer_norm_zero and block.attn2 is None
             and block._chunk_size is None and not attn.is_cross_attention and attn.norm_q is None
             and attn.norm_k is None and attn.spatial_norm is None and attn.group_norm is None
             and not attn.residual_connection and attn.rescale_output_factor == 1.0
             and isinstance(block.ff.net[0], GELU) and len(block.ff.net) == 3)
    if not plain:
        raise ValueError("S3Gen's flow estimator has a transformer block configuration the streaming decoder does "
                         "not implement (expected chatterbox's: LayerNorm, self-attention, GELU feed-forward)")


def cfm_step(estimator, x: torch.Tensor, mask: torch.Tensor, mu: torch.Tensor, spks: torch.Tensor,
             cond: torch.Tensor, t: torch.Tensor, r: torch.Tensor, cfg_rate: float) -> torch.Tensor:
    """One Euler step from time `t` to `r`. Standard estimator: `solve_euler`'s, with classifier-free guidance,
    the conditional and unconditional halves run as one batch of 2B rows. Meanflow estimator: `basic_euler`'s,
    B rows and no guidance (upstream distilled it from guided outputs; `cfg_rate` is unused). The estimator runs
    in its own weights' dtype, the update in float32 (x's). `t`, `r` are (1,) float32 tensors so every step
    shares one compiled graph."""
    batch, dtype = x.shape[0], next(estimator.parameters()).dtype
    x_in, mask, mu, spks, cond = (tensor.to(dtype) for tensor in (x, mask, mu, spks, cond))
    if estimator.meanflow:
        velocity = estimator_forward(estimator, x_in, mask, mu, t.expand(batch), spks, cond, r.expand(batch))
        return x + (r - t) * velocity.float()
    zeros = torch.zeros_like
    velocity = estimator_forward(
        estimator, torch.cat([x_in, x_in]), torch.cat([mask, mask]), torch.cat([mu, zeros(mu)]),
        t.expand(2 * batch), torch.cat([spks, zeros(spks)]), torch.cat([cond, zeros(cond)]))
    conditional, unconditional = velocity.float().split(batch)
    return x + (r - t) * ((1.0 + cfg_rate) * conditional - cfg_rate * unconditional)


def cfm_time_span(steps: int, scheduler: str, device: torch.device, meanflow: bool = False) -> torch.Tensor:
    """The solver's `steps + 1` times from 0 to 1; as upstream, meanflow ignores the cosine scheduler."""
    t_span = torch.linspace(0, 1, steps + 1, device=device)
    if scheduler == "cosine" and not meanflow:
        t_span = 1 - torch.cos(t_span * 0.5 * torch.pi)
    return t_span


def prepare_vocoder(hift) -> None:
    """Fold HiFT's weight normalisation into plain weights, in place and once: as a parametrization it is
    recomputed on every call (77 kernels per vocoder call at full size) for weights that never change here.
    (A deep copy of a parametrized module shares its class with the original, which this edits: fold first.)"""
    for module in hift.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)


def vocoder_f0(hift, mels: torch.Tensor) -> torch.Tensor:
    """F0 in Hz per output sample: mels (B, 80, V) -> (B, V * 480)."""
    return hift.f0_upsamp(hift.f0_predictor(mels)[:, None])[:, 0]


def vocoder_spectrum(hift, mels: torch.Tensor, source: torch.Tensor) -> Tensors:
    """`HiFTGenerator.decode` up to its inverse STFT: mels (B, 80, V), source (B, 1, V * 480) ->
    (magnitude, phase), each (B, n_fft / 2 + 1, frames)."""
    real, imag = hift._stft(source.squeeze(1))
    source_stft = torch.cat([real, imag], dim=1)
    x = hift.conv_pre(mels)
    for i in range(hift.num_upsamples):
        x = torch.nn.functional.leaky_relu(x, hift.lrelu_slope)
        x = hift.ups[i](x)
        if i == hift.num_upsamples - 1:
            x = hift.reflection_pad(x)
        x = x + hift.source_resblocks[i](hift.source_downs[i](source_stft))
        kernels = hift.resblocks[i * hift.num_kernels:(i + 1) * hift.num_kernels]
        x = sum(block(x) for block in kernels) / hift.num_kernels
    x = hift.conv_post(torch.nn.functional.leaky_relu(x))
    bins = hift.istft_params["n_fft"] // 2 + 1
    return torch.exp(x[:, :bins]), torch.sin(x[:, bins:])


def vocoder_waveform(hift, magnitude: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
    return torch.clamp(hift._istft(magnitude, phase), -hift.audio_limit, hift.audio_limit)


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started
