"""T3 speech-token decode throughput: our T3Decoder (eager, CUDA graphs, torch.compile) against upstream.

Random weights (the architecture is what costs time, not the values), one random voice, CFG on (two KV rows
per stream, as the server's default cfg_weight=0.5). For each mode and batch size it adds `batch` streams,
runs a few warm-up steps, then times `--tokens` decode steps and prints tokens/s summed over the batch.

Mode `kernels` counts the kernels one eager decode step dispatches (`bench/opcount.py`; any device): at batch 1
a step is bound by that count, not by arithmetic, and CUDA graphs remove only the CPU's share of each launch.

Upstream is `T3.inference` at batch 1 producing exactly `--tokens` tokens: its loop stops when the sampled
token equals `t3.hp.stop_speech_token`, so the benchmark sets that id to -1 (no token can equal it) for the
run and restores it afterwards. Its time includes its prefill, which is one forward and negligible at 100+
tokens.

    GPU:  .venv/bin/python bench/t3_decode_bench.py                      # full size, CUDA, bf16
    CPU:  .venv/bin/python bench/t3_decode_bench.py --size tiny --device cpu --tokens 16
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # upstream's loop draws a progress bar per call
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from chatterbox.models.t3.modules.cond_enc import T3Cond  # noqa: E402

from app.engine.chatterbox.arch import build_t3  # noqa: E402
from app.engine.chatterbox.slot_decoder import SlotDecoder  # noqa: E402
from app.engine.chatterbox.t3 import T3Decoder  # noqa: E402
from app.engine.chatterbox.t3_turbo import TurboT3Decoder  # noqa: E402
from app.engine.types import GenerationSettings  # noqa: E402
from bench.opcount import KernelCounter, count_kernels  # noqa: E402

MODES = ("kernels", "eager", "graphs", "upstream", "compile")  # compile last: the slowest to get ready
# multilingual: the standard decoder with its alignment guard on (upstream's analyzer, batched): the difference to
# standard is the guard's cost per step.
DECODERS = {"standard": T3Decoder, "turbo": TurboT3Decoder, "multilingual": T3Decoder}
LAYER_METHODS = {"standard": "_layer_forward", "turbo": "_block_forward", "multilingual": "_layer_forward"}
CUDA_ONLY = {"graphs": "CUDA graphs need CUDA", "compile": "compiled decoding is measured under CUDA graphs"}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("tiny", "full"), default="full")
    parser.add_argument("--model", choices=tuple(DECODERS), default="standard",
                        help="standard: Llama T3 (CFG rows); turbo: GPT-2 T3 (one row, no CFG); multilingual: Llama "
                             "T3 with the alignment guard")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default=None,
                        help="default: bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--batches", default="1,8,32,64", help="comma-separated stream counts")
    parser.add_argument("--modes", default=None,
                        help=f"comma-separated subset of {MODES}; default: all, minus CUDA-only ones on CPU")
    parser.add_argument("--tokens", type=int, default=128, help="timed decode steps per measurement")
    parser.add_argument("--warmup-steps", type=int, default=4)
    parser.add_argument("--text-len", type=int, default=60, help="text tokens per stream (before SOT/EOT)")
    parser.add_argument("--cfg-weight", type=float, default=0.5)
    parser.add_argument("--max-context", type=int, default=1500)
    parser.add_argument("--compile-mode", default="default",
                        help="--compile-mode of the `compile` mode (as the server's: inductor kernels inside our "
                             "CUDA graphs; reduce-overhead is our graphs alone)")
    parser.add_argument("--json", type=Path, help="also append one JSON object per measurement here")
    return parser.parse_args()


def random_cond(t3, device: torch.device, dtype: torch.dtype) -> T3Cond:
    return T3Cond(
        speaker_emb=torch.randn(1, 256),
        cond_prompt_speech_tokens=torch.randint(0, 6561, (1, t3.hp.speech_cond_prompt_len)),
        emotion_adv=0.5 * torch.ones(1, 1, 1),
    ).to(device=device, dtype=dtype)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ours(decoder: SlotDecoder, cond: T3Cond, batch: int, args, device: torch.device) -> float:
    """Seconds for `args.tokens` decode steps of `batch` streams (after warm-up)."""
    settings = GenerationSettings(cfg_weight=args.cfg_weight, seed=0)
    ids = [f"s{i}" for i in range(batch)]
    for seq_id in ids:
        decoder.add(seq_id, cond, torch.randint(1, 700, (args.text_len,)), settings)
    for _ in range(args.warmup_steps):
        decoder.step(ids)
    synchronize(device)
    started = time.perf_counter()
    for _ in range(args.tokens):
        decoder.step(ids)
    synchronize(device)
    elapsed = time.perf_counter() - started
    for seq_id in ids:
        decoder.remove(seq_id)
    return elapsed


def time_upstream(t3, cond: T3Cond, args, device: torch.device) -> float:
    if args.model == "turbo":
        return time_upstream_turbo(t3, cond, args, device)
    text = torch.randint(1, 700, (args.text_len,))
    text = torch.cat([torch.tensor([t3.hp.start_text_token]), text, torch.tensor([t3.hp.stop_text_token])])
    text = text[None].repeat(2 if args.cfg_weight > 0 else 1, 1).to(device)
    stop = t3.hp.stop_speech_token
    t3.hp.stop_speech_token = -1  # no sampled id equals it: the loop runs all max_new_tokens steps
    try:
        run = lambda n: t3.inference(t3_cond=cond, text_tokens=text, max_new_tokens=n,  # noqa: E731
                                     cfg_weight=args.cfg_weight, top_p=1.0)
        run(args.warmup_steps)
        synchronize(device)
        started = time.perf_counter()
        tokens = run(args.tokens)
        synchronize(device)
        elapsed = time.perf_counter() - started
    finally:
        t3.hp.stop_speech_token = stop
    assert tokens.shape[-1] == args.tokens, tokens.shape
    return elapsed


def time_upstream_turbo(t3, cond: T3Cond, args, device: torch.device) -> float:
    """Upstream's `inference_turbo` (one stream, Hugging Face cache, a host sync per token)."""
    text = torch.randint(1, 700, (1, args.text_len), device=device)
    stop = t3.hp.stop_speech_token
    t3.hp.stop_speech_token = -1  # no sampled id equals it: the loop runs all max_gen_len steps
    try:
        t3.inference_turbo(t3_cond=cond, text_tokens=text, max_gen_len=args.warmup_steps)
        synchronize(device)
        started = time.perf_counter()
        tokens = t3.inference_turbo(t3_cond=cond, text_tokens=text, max_gen_len=args.tokens)
        synchronize(device)
        elapsed = time.perf_counter() - started
    finally:
        t3.hp.stop_speech_token = stop
    assert tokens.shape[-1] == args.tokens + 1, tokens.shape  # its first token comes from the prefill
    return elapsed


def count_step_kernels(decoder: SlotDecoder, cond: T3Cond, batch: int, args) -> dict:
    """Kernels one eager decode step dispatches (views excluded), in all and per decoder layer."""
    ids = [f"k{i}" for i in range(batch)]
    for seq_id in ids:
        settings = GenerationSettings(cfg_weight=args.cfg_weight, seed=0)
        decoder.add(seq_id, cond, torch.randint(1, 700, (args.text_len,)), settings)
    decoder.step(ids)
    layers: list[KernelCounter] = []
    method = LAYER_METHODS[args.model]
    layer_forward = getattr(decoder, method)

    def counted_layer(*layer_args):
        with KernelCounter() as counter:
            out = layer_forward(*layer_args)
        layers.append(counter)
        return out

    setattr(decoder, method, counted_layer)
    try:
        step = count_kernels(decoder.step, ids)
    finally:
        delattr(decoder, method)
        for seq_id in ids:
            decoder.remove(seq_id)
    in_layers = sum(layer.total for layer in layers)
    return {"kernels_per_step": step.total, "kernels_per_layer": layers[0].total,
            "kernels_outside_layers": step.total - in_layers, "layer_ops": dict(layers[0].counts)}


def build_decoder(mode: str, t3, cond: T3Cond, args, device, dtype, batches: list[int]) -> SlotDecoder:
    decoder = DECODERS[args.model](t3, max_batch=max(batches), max_context=args.max_context, device=device,
                                   dtype=dtype, enable_cuda_graphs=mode in ("graphs", "compile"),
                                   compile_mode=args.compile_mode if mode == "compile" else None)
    if mode != "eager":
        rows_per_stream = decoder.ROWS_PER_STREAM if args.cfg_weight > 0 else 1
        prompt = prompt_length(decoder, cond, args)
        longest = prompt + args.warmup_steps + args.tokens
        contexts = [*range(prompt + 1, longest + 1, 64), longest + 1]  # every window the timed steps use
        decoder.capture([b * rows_per_stream for b in batches], contexts)
    return decoder


def prompt_length(decoder: SlotDecoder, cond: T3Cond, args) -> int:
    """KV positions one stream's prompt fills (conditioning, text and its markers), read off the decoder."""
    decoder.add("probe", cond, torch.randint(1, 700, (args.text_len,)), GenerationSettings(cfg_weight=args.cfg_weight))
    length = decoder.max_context - decoder.tokens_left("probe")
    decoder.remove("probe")
    return length


def report(row: dict, json_path: Path | None) -> None:
    if "kernels_per_step" in row:
        print(f"{row['mode']:>9} batch {row['batch']:>3}: {row['kernels_per_step']} kernels per step, "
              f"{row['kernels_per_layer']} per layer x {row['layers']}, {row['kernels_outside_layers']} outside "
              f"(layer: {row['layer_ops']})", flush=True)
    elif "tokens_per_s" in row:
        print(f"{row['mode']:>9} batch {row['batch']:>3}: {row['tokens_per_s']:10.1f} tokens/s "
              f"({row['ms_per_step']:.2f} ms/step)", flush=True)
    else:
        print(f"{row['mode']:>9}: {row['note']}", flush=True)
    if json_path:
        with json_path.open("a") as f:
            f.write(json.dumps(row) + "\n")


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    batches = [int(b) for b in args.batches.split(",")]
    modes = args.modes.split(",") if args.modes else list(MODES)
    torch.manual_seed(0)
    started = time.perf_counter()
    with torch.device(device):
        t3 = build_t3(args.size, args.model)
    t3 = t3.to(dtype=dtype).eval()
    cond = random_cond(t3, device, dtype)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"T3 {args.model} {args.size} on {gpu}, {dtype}, {sum(p.numel() for p in t3.parameters()) / 1e6:.0f}M parameters "
          f"(built in {time.perf_counter() - started:.1f}s); cfg_weight={args.cfg_weight}, "
          f"{args.tokens} timed steps, text {args.text_len} tokens, torch {torch.__version__}", flush=True)

    for mode in modes:
        if mode in CUDA_ONLY and device.type != "cuda" and not args.modes:
            report({"mode": mode, "note": f"skipped: {CUDA_ONLY[mode]}"}, args.json)
            continue
        try:
            run_mode(mode, t3, cond, args, device, dtype, batches, gpu)
        except Exception as exc:  # one broken mode must not hide the others' numbers
            traceback.print_exc()
            report({"mode": mode, "note": f"failed: {type(exc).__name__}: {exc}"}, args.json)
        gc.collect()
        if device.type == "cuda":
            torch._dynamo.reset()
            torch.cuda.empty_cache()


def run_mode(mode: str, t3, cond: T3Cond, args, device: torch.device, dtype: torch.dtype, batches: list[int],
             gpu: str) -> None:
    if mode == "upstream":
        elapsed = time_upstream(t3, cond, args, device)
        report({"mode": mode, "batch": 1, "tokens_per_s": args.tokens / elapsed,
                "ms_per_step": 1000 * elapsed / args.tokens, "device": gpu}, args.json)
        return
    if mode == "kernels":
        decoder = DECODERS[args.model](t3, max_batch=max(batches), max_context=args.max_context, device=device,
                                       dtype=dtype, enable_cuda_graphs=False)
        for batch in batches:
            report({"mode": mode, "batch": batch, "layers": len(getattr(t3.tfmr, "layers", None) or t3.tfmr.h), "device": gpu,
                    **count_step_kernels(decoder, cond, batch, args)}, args.json)
        return
    built = time.perf_counter()
    decoder = build_decoder(mode, t3, cond, args, device, dtype, batches)
    status = decoder.status()
    print(f"{mode:>9}: ready in {time.perf_counter() - built:.1f}s; capture {status['capture_seconds']}s, "
          f"buckets {status['captured_buckets']}, fallback {status['fallback_reason']}", flush=True)
    for batch in batches:
        elapsed = time_ours(decoder, cond, batch, args, device)
        report({"mode": mode, "batch": batch, "tokens_per_s": batch * args.tokens / elapsed,
                "ms_per_step": 1000 * elapsed / args.tokens, "device": gpu,
                "fallback": decoder.status()["fallback_reason"]}, args.json)


if __name__ == "__main__":
    main()
