"""End-to-end benchmark: chatterbox's own `generate` against our engine, in the same run, for the checkpoint's
model (standard: `ChatterboxTTS`; turbo: `ChatterboxTurboTTS`; multilingual: `ChatterboxMultilingualTTS` in
English, its alignment analyzer on, as ours).

Random weights never stop on their own, so every request produces exactly `--tokens` speech tokens (upstream:
stop token disabled and `max_new_tokens` fixed; ours: the bench-only `EngineRequest.fixed_tokens`). Prints a table and writes JSON.

    python bench/benchmark.py --checkpoint var/ckpt-full --device cuda --streams 1,8,32,64 --tokens 200
    python bench/benchmark.py --checkpoint var/test-checkpoints/tiny-* --device cpu --streams 1,2 --tokens 30
    python bench/benchmark.py --checkpoint var/ckpt-turbo-full --device cuda   # Turbo: the directory says so

Figures (all measured inside the process, no network):
* baseline: wall time of `generate` for one request (it returns audio only at the end, so time to first audio
  = total time), its T3 and S3Gen parts timed separately through the same upstream calls.
* ours at each concurrency c: c requests submitted together and stepped to completion. Time to first audio =
  submission to the first PCM chunk leaving `engine.step()`; aggregate speech tokens/s = c * tokens / wall;
  real-time factor = wall seconds per second of audio for one stream (below 1 is faster than real time);
  x real time = audio seconds produced per wall second, all streams together.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # upstream prints a progress bar per token

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.engine.chatterbox.engine import ChatterboxEngine  # noqa: E402
from app.engine.chatterbox.loader import ChatterboxModels, detect_model, load_models  # noqa: E402
from app.engine.config import EngineConfig  # noqa: E402
from app.engine.chatterbox.s3gen_stream import S3GenStreamer  # noqa: E402
from bench.streaming_quality import streaming_quality  # noqa: E402
from app.engine.types import SAMPLE_RATE, EngineRequest, GenerationSettings  # noqa: E402

TEXT = "Streaming speech synthesis for voice agents, measured end to end on a synthetic checkpoint."
SAMPLES_PER_TOKEN = 960  # 24 kHz / 25 Hz


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def device_name(device: str) -> str:
    return torch.cuda.get_device_name(0) if device.startswith("cuda") else f"CPU ({platform.processor() or 'x86_64'}, {os.cpu_count()} cores)"


# ---- baseline: upstream generate ---------------------------------------------------------------------------

LANGUAGE = "en"  # the multilingual model's language for the benchmark text
ALIGNMENT_LAYERS = (9, 12, 13, 15)  # the layers upstream's AlignmentStreamAnalyzer spies on


def baseline(checkpoint: str, device: str, tokens: int, repeats: int) -> dict | None:
    """Upstream `ChatterboxTTS.generate` (standard) or `ChatterboxMultilingualTTS.generate` (multilingual, with
    its alignment analyzer) on the checkpoint's modules; the T3 and S3Gen parts timed through the same calls."""
    from chatterbox.mtl_tts import ChatterboxMultilingualTTS
    from chatterbox.tts import ChatterboxTTS, punc_norm

    models = load_models(checkpoint, device=device)
    multilingual = models.model == "multilingual"
    if multilingual and len(models.t3.tfmr.layers) <= max(ALIGNMENT_LAYERS):
        print("baseline skipped: upstream's alignment analyzer reads layers up to "
              f"{max(ALIGNMENT_LAYERS)}, this checkpoint has {len(models.t3.tfmr.layers)} (full size only)")
        return None
    upstream = ChatterboxMultilingualTTS if multilingual else ChatterboxTTS
    tts = upstream(models.t3, models.s3gen, models.ve, models.tokenizer, device, conds=models.conds)
    tts.t3.hp.stop_speech_token = -1  # never sampled: fixed-length generation
    upstream_inference = tts.t3.inference
    tts.t3.inference = lambda **kw: upstream_inference(**{**kw, "max_new_tokens": tokens})
    language = {"language_id": LANGUAGE} if multilingual else {}

    timed(lambda: tts.generate(TEXT, **language), device)  # warm-up
    totals = [timed(lambda: tts.generate(TEXT, **language), device)[0] for _ in range(repeats)]
    text_tokens = torch.cat([tts.tokenizer.text_to_tokens(punc_norm(TEXT), **language)] * 2).to(device)  # CFG rows
    text_tokens = F.pad(F.pad(text_tokens, (1, 0), value=tts.t3.hp.start_text_token), (0, 1), value=tts.t3.hp.stop_text_token)
    t3_s, speech = timed(lambda: tts.t3.inference(t3_cond=tts.conds.t3, text_tokens=text_tokens, cfg_weight=0.5),
                         device)
    speech = speech[0][speech[0] < 6561]
    s3_s, wav = timed(lambda: tts.s3gen.inference(speech_tokens=speech, ref_dict=tts.conds.gen), device)
    del tts, models
    return _baseline_result(totals, t3_s, s3_s, wav, tokens, device)


def baseline_turbo(checkpoint: str, device: str, tokens: int, repeats: int) -> dict:
    """Upstream Turbo's `generate` (2-step meanflow) on the checkpoint's modules (its `from_local` builds full size
    only) and the checkpoint's own GPT-2 tokenizer files, as `from_local` reads them."""
    from chatterbox.tts_turbo import ChatterboxTurboTTS
    from transformers import AutoTokenizer

    models = load_models(checkpoint, device=device)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token  # as from_local does
    tts = ChatterboxTurboTTS(models.t3, models.s3gen, models.ve, tokenizer, device, conds=models.conds)
    tts.t3.hp.stop_speech_token = -1  # never sampled: fixed-length generation
    upstream_inference = tts.t3.inference_turbo
    tts.t3.inference_turbo = lambda **kw: upstream_inference(**{**kw, "max_gen_len": tokens})
    timed(lambda: tts.generate(TEXT), device)  # warm-up
    totals = [timed(lambda: tts.generate(TEXT), device)[0] for _ in range(repeats)]
    text_tokens = tts.tokenizer(TEXT, return_tensors="pt").input_ids.to(device)
    t3_s, speech = timed(lambda: tts.t3.inference_turbo(t3_cond=tts.conds.t3, text_tokens=text_tokens), device)
    speech = speech[speech < 6561]
    s3_s, wav = timed(lambda: tts.s3gen.inference(speech_tokens=speech, ref_dict=tts.conds.gen, n_cfm_timesteps=2),
                      device)
    del tts, models
    return _baseline_result(totals, t3_s, s3_s, wav, tokens, device)


def _baseline_result(totals: list[float], t3_s: float, s3_s: float, wav, tokens: int, device: str) -> dict:
    audio_s = wav[0].shape[-1] / SAMPLE_RATE
    total = statistics.median(totals)
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return {"generate_s": total, "ttfa_ms": total * 1000, "audio_s": audio_s, "rtf": total / audio_s,
            "t3_tokens_per_s": tokens / t3_s, "s3gen_rtf": s3_s / audio_s}


def timed(fn, device: str):
    sync(device)
    start = time.perf_counter()
    result = fn()
    sync(device)
    return time.perf_counter() - start, result


# ---- ours ---------------------------------------------------------------------------------------------------

def run_concurrent(engine: ChatterboxEngine, streams: int, tokens: int, device: str) -> dict:
    sync(device)
    start = time.perf_counter()
    for i in range(streams):
        engine.add_request(EngineRequest(f"bench-{streams}-{i}", TEXT, None, GenerationSettings(seed=i),
                                         fixed_tokens=tokens))
    first: dict[str, float] = {}
    done: dict[str, float] = {}
    samples: dict[str, int] = {}
    while engine.has_unfinished():
        for output in engine.step():
            now = time.perf_counter() - start
            if len(output.pcm) and output.request_id not in first:
                first[output.request_id] = now
            samples[output.request_id] = samples.get(output.request_id, 0) + len(output.pcm)
            if output.finished:
                done[output.request_id] = now
    wall = time.perf_counter() - start
    ttfa = sorted(first.values())
    audio = [samples[r] / SAMPLE_RATE for r in done]
    return {"streams": streams, "wall_s": wall,
            "ttfa_p50_ms": 1000 * ttfa[len(ttfa) // 2], "ttfa_p95_ms": 1000 * ttfa[min(len(ttfa) - 1, int(0.95 * len(ttfa)))],
            "tokens_per_s": streams * tokens / wall, "rtf_per_stream": statistics.median(done[r] / (samples[r] / SAMPLE_RATE) for r in done),
            "x_real_time": sum(audio) / wall}


def ours(checkpoint: str, device: str, dtype: str, streams: list[int], tokens: int, cfm_steps: int,
         optimize: bool, compile_mode: str) -> tuple[dict, list[dict], ChatterboxModels]:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()  # the baseline's float32 copy is gone; measure ours alone
    models = load_models(checkpoint, device=device)
    engine = ChatterboxEngine(models, EngineConfig(device=device, dtype=dtype, max_batch=max(streams),
                                                   cfm_steps=cfm_steps, enable_optimizations=optimize,
                                                   compile_mode=compile_mode))
    started = time.perf_counter()
    engine.warmup()
    warmup_s = time.perf_counter() - started
    run_concurrent(engine, 1, min(tokens, 40), device)  # first-use costs out of the numbers
    print(f"ours: warm-up {warmup_s:.1f} s", flush=True)
    rows = []
    for count in streams:
        rows.append(run_concurrent(engine, count, tokens, device))
        print(f"ours: {rows[-1]}", flush=True)  # partial results survive a time limit
    status = engine.optimization_status()
    status["warmup_s"] = warmup_s
    return status, rows, models


def quality(models: ChatterboxModels, cfm_steps: int) -> dict:
    """Streamed vs whole decode on the engine's own (float32) S3Gen module, through a plain eager streamer."""
    streamer = S3GenStreamer(models.s3gen, cfm_steps=None if models.model == "turbo" else cfm_steps, left_context=50)
    tokens = torch.randint(0, 6561, (150,), generator=torch.Generator().manual_seed(1))
    q = streaming_quality(streamer, models.conds.gen, tokens, first=10, chunk=40, seed=3)
    return {"snr_db": q.snr_db, "edge_jump_ratio": q.edge_jump_ratio, "chunks": q.chunks,
            "s3gen_rtf_streamed": q.streamed_seconds / (q.samples_streamed / SAMPLE_RATE),
            "s3gen_rtf_whole": q.whole_seconds / (q.samples_whole / SAMPLE_RATE)}


def table(result: dict) -> str:
    base = result["baseline"]
    lines = [f"# {result['device_name']} — {result.get('model', 'standard')} model, {result['tokens']} speech tokens per "
             f"request, dtype {result['dtype']}",
             "", "| system | streams | TTFA p50 ms | TTFA p95 ms | speech tokens/s | RTF (per stream) | x real time |",
             "|---|---|---|---|---|---|---|"]
    if base:
        lines.append(f"| upstream generate | 1 | {base['ttfa_ms']:.0f} | {base['ttfa_ms']:.0f} | "
                     f"{base['t3_tokens_per_s']:.1f} (T3 only) | {base['rtf']:.3f} | {1 / base['rtf']:.2f} |")
    for row in result["ours"]:
        lines.append(f"| ours | {row['streams']} | {row['ttfa_p50_ms']:.0f} | {row['ttfa_p95_ms']:.0f} | "
                     f"{row['tokens_per_s']:.1f} | {row['rtf_per_stream']:.3f} | {row['x_real_time']:.2f} |")
    q = result["quality"]
    lines += ["", f"streaming vs whole S3Gen decode: SNR {q['snr_db']:.1f} dB, edge-jump ratio {q['edge_jump_ratio']:.2f} "
              f"({q['chunks']} chunks); S3Gen RTF streamed {q['s3gen_rtf_streamed']:.3f}, whole {q['s3gen_rtf_whole']:.3f}"]
    if base:
        lines.append(f"upstream S3Gen RTF {base['s3gen_rtf']:.3f}; upstream T3 {base['t3_tokens_per_s']:.1f} tokens/s")
        best = max(result["ours"], key=lambda r: r["tokens_per_s"])
        single = result["ours"][0]
        lines.append(f"speed-up, single request end to end: {base['rtf'] / single['rtf_per_stream']:.1f}x; "
                     f"aggregate throughput: {best['x_real_time'] * base['rtf']:.1f}x")
    if result.get("peak_gpu_memory_gb") is not None:
        lines.append(f"peak GPU memory: {result['peak_gpu_memory_gb']:.2f} GB")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--streams", default="1,8,32,64")
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--cfm-steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--no-optimizations", action="store_true")
    parser.add_argument("--compile-mode", default="none", help="none (direct CUDA graphs) or a torch.compile mode")
    parser.add_argument("--out", default=None, help="JSON path (default: bench/results/<device>/benchmark.json)")
    args = parser.parse_args()
    dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    streams = [int(s) for s in args.streams.split(",")]
    result = {"device_name": device_name(args.device), "device": args.device, "dtype": dtype,
              "tokens": args.tokens, "cfm_steps": args.cfm_steps, "torch": torch.__version__,
              "command": " ".join(sys.argv)}
    run_baseline = baseline_turbo if detect_model(Path(args.checkpoint)) == "turbo" else baseline
    result["baseline"] = None if args.no_baseline else run_baseline(args.checkpoint, args.device, args.tokens,
                                                                    args.repeats)
    print(f"baseline: {result['baseline']}", flush=True)
    result["status"], result["ours"], models = ours(args.checkpoint, args.device, dtype, streams, args.tokens,
                                                    args.cfm_steps, not args.no_optimizations, args.compile_mode)
    result["quality"] = quality(models, args.cfm_steps)
    result["model"] = models.model
    result["peak_gpu_memory_gb"] = (torch.cuda.max_memory_allocated() / 1e9) if args.device.startswith("cuda") else None
    name = "benchmark.json" if models.model == "standard" else f"benchmark-{models.model}.json"
    out = Path(args.out or Path(__file__).parent / "results" / result["device_name"].split(" (")[0].replace(" ", "-") / name)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    (out.with_suffix(".md")).write_text(table(result) + "\n")
    print(table(result))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
