"""Streaming S3Gen cost and quality: real-time factor single-stream and batched, per execution mode, plus a
left-context x CFM-steps sweep.

Each measurement streams `--tokens` random speech tokens per stream the way the engine does (first
`--first` tokens + the 3 lookahead tokens, then `--chunk` at a time, then a final flush). With several streams
all of them advance together and every chunk is one `decode_many` call; streams alternate between the
checkpoint's voice and a second voice with a shorter prompt, so batches mix prompt lengths (padded and masked
on CUDA). RTF = wall seconds / audio seconds, summed over streams (`rtf`); `stream_rtf` = wall seconds / one
stream's audio seconds (each stream is real-time while it stays below 1).

Modes are `execution:dtype`: `eager`, `graphs` (CUDA graphs captured by `warmup()`, CUDA only) or `compile`
(torch.compile `--compile-mode` on the prepared shapes); the dtype is the flow estimator's (the encoder and
the vocoder stay float32). Quality per mode: streamed vs whole-utterance decode (SNR, edge-jump ratio) and,
for reduced precision, mel error and PCM SNR against float32. The sweep streams one utterance per
(left_context, cfm_steps) and reports its cost, its SNR against the whole decode with the same steps
(chunking error) and against the whole 10-step decode (chunking + step error).

`--random tiny|full` builds S3Gen with random weights (same compute as a checkpoint of that size) and uses
the bundled reference recording as voice, so no checkpoint is needed.

    CPU smoke: .venv/bin/python bench/s3gen_bench.py --random tiny --device cpu --streams 1,4 --tokens 60
    GPU:       .venv/bin/python bench/s3gen_bench.py --random full --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from app.engine.chatterbox import s3gen_compute as compute  # noqa: E402
from app.engine.chatterbox.s3gen_stream import VOCODER_STEP, WINDOW_STEP, S3GenStreamer  # noqa: E402
from bench.streaming_quality import StreamingQuality, snr_db, stream_chunks, streaming_quality  # noqa: E402
from bench.opcount import count_kernels  # noqa: E402

SPEECH_VOCAB = 6561
TOKEN_RATE = 25  # speech tokens per second of audio
EXECUTIONS = ("eager", "graphs", "compile")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="checkpoint directory (official layout)")
    source.add_argument("--random", choices=("tiny", "full"), help="random weights of this size, bundled voice")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    parser.add_argument("--streams", default="1,8,32", help="comma-separated stream counts")
    parser.add_argument("--tokens", type=int, default=200, help="speech tokens per stream (25 per second)")
    parser.add_argument("--first", type=int, default=10, help="tokens in the first chunk (engine default)")
    parser.add_argument("--chunk", type=int, default=40, help="tokens in later chunks (engine default)")
    parser.add_argument("--cfm-steps", type=int, default=10)
    parser.add_argument("--left-context", type=int, default=50)
    parser.add_argument("--modes", default=None, help="comma-separated execution:dtype; default: eager:float32 "
                        "on CPU, eager and graphs at float32 and bfloat16 on CUDA")
    parser.add_argument("--compile-mode", default="default",
                        help="torch.compile mode of `compile` modes (captured in our own CUDA graphs)")
    parser.add_argument("--sweep-left-context", default="0,20,50,100", help="empty: no sweep")
    parser.add_argument("--sweep-cfm-steps", default="10,6,4")
    parser.add_argument("--sweep-kind", choices=("stream", "cost"), default="stream",
                        help="stream: decode the utterance per setting (cost and SNR); cost: time the encoder, one "
                             "CFM step and the vocoder at each window the setting produces and add them up (no "
                             "SNR; for slow devices, e.g. the full model on a CPU)")
    parser.add_argument("--sweep-mode", default=None,
                        help="execution:dtype of the sweep; default: graphs:bfloat16 if measured, else the first mode")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per row; the fastest is kept")
    parser.add_argument("--skip", default="", help="comma-separated sections to leave out: rtf, quality, kernels, sweep")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="default: var/bench/s3gen-<device>.json")
    return parser.parse_args()


def integers(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


# ---- model and voices -----------------------------------------------------------------------------------------


def load(args: argparse.Namespace):
    """(s3gen, voice, description) on the device, float32, eval."""
    if args.checkpoint:
        from app.engine.chatterbox.loader import load_models

        models = load_models(args.checkpoint, device=args.device)
        return models.s3gen, models.conds.gen, f"checkpoint {args.checkpoint} ({models.size})"
    import soundfile as sf

    from app.engine.chatterbox.arch import build_s3gen
    from app.engine.chatterbox.checkpoint import REFERENCE_WAV

    torch.manual_seed(args.seed)
    s3gen = build_s3gen(args.random).to(args.device).eval()
    wav, rate = sf.read(str(REFERENCE_WAV), dtype="float32")
    with torch.inference_mode():
        voice = s3gen.embed_ref(torch.from_numpy(wav[: 10 * rate]), rate, device=args.device)
    return s3gen, voice, f"random weights ({args.random})"


def shorter_voice(voice: dict, tokens: int = 37) -> dict:
    """The same voice with a prompt `tokens` shorter (different window lengths in one batch)."""
    return {"prompt_token": voice["prompt_token"][:, :-tokens], "prompt_feat": voice["prompt_feat"][:, :-2 * tokens],
            "embedding": voice["embedding"]}


# ---- streamers ------------------------------------------------------------------------------------------------


def make_streamer(s3gen, mode: str, args: argparse.Namespace, batch_sizes: list[int], prompt_tokens: list[int],
                  left_context: int | None = None, cfm_steps: int | None = None) -> tuple[S3GenStreamer, dict]:
    """A streamer for `mode`, warmed up on the shapes this benchmark produces, and its warm-up report."""
    execution, dtype = mode.split(":")
    left_context = args.left_context if left_context is None else left_context
    streamer = S3GenStreamer(s3gen, cfm_steps=cfm_steps or args.cfm_steps, left_context=left_context,
                             dtype=dtype, max_batch=max(batch_sizes), cuda_graphs=execution != "eager",
                             compile_mode=args.compile_mode if execution == "compile" else None)
    lookahead = streamer.lookahead
    longest_new = max(args.first, args.chunk) + lookahead
    context = left_context if left_context > 0 else args.tokens
    windows = range(min(prompt_tokens) + args.first, max(prompt_tokens) + context + longest_new + WINDOW_STEP,
                    WINDOW_STEP)
    frames = range(VOCODER_STEP, 2 * longest_new + 8 + 2 * VOCODER_STEP, VOCODER_STEP)
    warm = streamer.warmup(batch_sizes=batch_sizes, window_tokens=windows, vocoder_frames=frames,
                           first_chunk_tokens=args.first)
    return streamer, warm


def random_tokens(count: int, seed: int) -> torch.Tensor:
    return torch.randint(0, SPEECH_VOCAB, (count,), generator=torch.Generator().manual_seed(seed))


def stream_together(streamer: S3GenStreamer, voices: list[dict], tokens: list[torch.Tensor], first: int,
                    chunk: int) -> dict:
    """Every stream advances chunk by chunk; each chunk of all streams is one decode_many call."""
    streams = [streamer.open(voices[i % len(voices)], seed=i) for i in range(len(tokens))]
    total, latencies, samples = len(tokens[0]), [], 0
    counts = list(range(first + streamer.lookahead, total, chunk)) + [total]
    started = time.perf_counter()
    for count in counts:
        final = count == total
        chunk_started = time.perf_counter()
        pcms = streamer.decode_many([(s, t[:count], final) for s, t in zip(streams, tokens)])
        latencies.append(time.perf_counter() - chunk_started)
        samples += sum(len(p) for p in pcms)
    wall = time.perf_counter() - started
    audio = samples / 24_000
    return {"wall_s": round(wall, 4), "audio_s": round(audio, 3), "rtf": round(wall / audio, 4),
            "stream_rtf": round(wall / (audio / len(tokens)), 4),
            "chunk_ms_mean": round(1000 * float(np.mean(latencies)), 2),
            "chunk_ms_max": round(1000 * float(np.max(latencies)), 2), "chunks": len(counts)}


# ---- measurements ---------------------------------------------------------------------------------------------


def measure_rtf(s3gen, voices, mode, args, rows: list) -> S3GenStreamer:
    streams = integers(args.streams)
    streamer, warm = make_streamer(s3gen, mode, args, streams + [1], [v["prompt_token"].shape[1] for v in voices])
    for count in streams:
        tokens = [random_tokens(args.tokens, args.seed + i) for i in range(count)]
        stream_together(streamer, voices, [t[: args.first + 2 * streamer.lookahead] for t in tokens], args.first,
                        args.chunk)  # the eager path's first-call costs (allocator, kernels) stay out of the timing
        result = min((stream_together(streamer, voices, tokens, args.first, args.chunk)
                      for _ in range(args.repeats)), key=lambda r: r["wall_s"])
        status = streamer.status()
        row = {"table": "rtf", "mode": mode, "streams": count, **result,
               "warmup_s": warm["seconds"], "prepared_flow_shapes": status["prepared_flow_shapes"],
               "prepared_vocoder_shapes": status["prepared_vocoder_shapes"],
               "fallback_reason": status["fallback_reason"]}
        rows.append(row)
        print_row(row)
    return streamer


def measure_quality(streamer: S3GenStreamer, reference: S3GenStreamer | None, voice: dict, mode: str,
                    args: argparse.Namespace, rows: list) -> None:
    tokens = random_tokens(args.tokens, args.seed)
    quality = streaming_quality(streamer, voice, tokens, first=args.first, chunk=args.chunk, seed=args.seed)
    row = {"table": "quality", "mode": mode, "snr_db": round(quality.snr_db, 2),
           "edge_jump_ratio": round(quality.edge_jump_ratio, 3), "chunks": quality.chunks}
    if reference is not None and reference is not streamer:
        mels = streamer.whole_mels(streamer.open(voice, seed=args.seed), tokens)
        reference_mels = reference.whole_mels(reference.open(voice, seed=args.seed), tokens)
        row["mel_rel_error_vs_fp32"] = round(float((mels - reference_mels).norm() / reference_mels.norm()), 5)
        whole = streamer.decode_whole(streamer.open(voice, seed=args.seed), tokens)
        reference_whole = reference.decode_whole(reference.open(voice, seed=args.seed), tokens)
        row["pcm_snr_vs_fp32_db"] = round(snr_db(reference_whole, whole), 2)
    rows.append(row)
    print_row(row)


def sweep(s3gen, voice: dict, mode: str, args: argparse.Namespace, rows: list) -> None:
    contexts, steps = integers(args.sweep_left_context), integers(args.sweep_cfm_steps)
    if not contexts or not steps:
        return
    tokens = random_tokens(args.tokens, args.seed)
    prompt = [voice["prompt_token"].shape[1]]
    whole = {}
    for n_steps in sorted(set(steps) | {10}, reverse=True):
        # left_context=0 prepares every window up to the whole utterance; each row then sets its own bound
        streamer, _ = make_streamer(s3gen, mode, args, [1], prompt, left_context=0, cfm_steps=n_steps)
        whole[n_steps] = streamer.decode_whole(streamer.open(voice, seed=args.seed), tokens)
        if n_steps not in steps:
            continue
        for context in contexts:
            streamer.left_context = context
            stream_chunks(streamer, streamer.open(voice, seed=args.seed + 1), tokens[: args.first + 6], args.first,
                          args.chunk)  # warm
            wall, parts = min((timed_stream(streamer, voice, tokens, args) for _ in range(args.repeats)),
                              key=lambda result: result[0])
            quality = StreamingQuality.compare(parts, whole[n_steps], wall)
            row = {"table": "sweep", "mode": mode, "left_context": context, "cfm_steps": n_steps,
                   "stream_rtf": round(wall / (quality.samples_streamed / 24_000), 4),
                   "snr_vs_whole_same_steps_db": round(quality.snr_db, 2),
                   "snr_vs_whole_10_steps_db": round(snr_db(whole[10], np.concatenate(parts)), 2),
                   "edge_jump_ratio": round(quality.edge_jump_ratio, 3)}
            rows.append(row)
            print_row(row)


def cost_sweep(s3gen, voice: dict, mode: str, args: argparse.Namespace, rows: list) -> None:
    """Per-chunk cost from component timings: sum over the chunks of encoder(window) + steps x CFM step(window)
    + vocoder(window), each timed once per distinct window (fastest of `--repeats`)."""
    contexts, steps = integers(args.sweep_left_context), integers(args.sweep_cfm_steps)
    streamer, _ = make_streamer(s3gen, mode, args, [1], [voice["prompt_token"].shape[1]])
    flow, device = streamer.flow, streamer.device
    prompt = voice["prompt_token"].shape[1]
    timings: dict[tuple, float] = {}

    def fastest(key: tuple, fn) -> float:
        if key not in timings:
            timings[key] = min(timed(fn, device) for _ in range(args.repeats))
        return timings[key]

    def encoder_and_step(width: int) -> tuple[float, float]:
        return (fastest(("encoder", width), encoder_call(flow, width, args.seed, device)),
                fastest(("step", width), step_call(streamer, width)))

    def vocoder(frames: int) -> float:
        return fastest(("vocoder", frames), vocoder_call(s3gen.mel2wav, frames, device))

    with torch.inference_mode():
        for context in contexts:
            chunks = planned_chunks(prompt, args.tokens, args.first, args.chunk, context, streamer.lookahead)
            parts = [(encoder_and_step(width), vocoder(frames)) for width, frames in chunks]
            for n_steps in steps:
                seconds = sum(encoder + n_steps * step + voc for (encoder, step), voc in parts)
                row = {"table": "sweep", "mode": f"{mode} (cost model)", "left_context": context,
                       "cfm_steps": n_steps, "stream_rtf": round(seconds / (args.tokens / TOKEN_RATE), 4),
                       "windows": [width for width, _ in chunks],
                       "cfm_step_s": [round(step, 4) for (_, step), _ in parts],
                       "encoder_s": [round(encoder, 4) for (encoder, _), _ in parts],
                       "vocoder_s": [round(voc, 4) for _, voc in parts]}
                rows.append(row)
                print_row(row)


def count_chunk_kernels(s3gen, voice: dict, mode: str, args: argparse.Namespace, rows: list) -> None:
    """Kernels of the first chunk (one stream, eager): the encoder, one CFM step, the vocoder, and the chunk's
    total with `--cfm-steps` steps. Small streaming windows are bound by this count, not by arithmetic."""
    streamer, _ = make_streamer(s3gen, mode, args, [1], [voice["prompt_token"].shape[1]])
    width, frames = planned_chunks(voice["prompt_token"].shape[1], args.tokens, args.first, args.chunk,
                                   args.left_context, streamer.lookahead)[0]
    counts = {"encoder": count_kernels(encoder_call(streamer.flow, width, args.seed, streamer.device)).total,
              "cfm_step": count_kernels(step_call(streamer, width)).total,
              "vocoder": count_kernels(vocoder_call(s3gen.mel2wav, frames, streamer.device)).total}
    total = counts["encoder"] + args.cfm_steps * counts["cfm_step"] + counts["vocoder"]
    row = {"table": "kernels", "mode": mode, "window_tokens": width, "vocoder_frames": frames, **counts,
           "chunk_total": total}
    rows.append(row)
    print_row(row)


def encoder_call(flow, width: int, seed: int, device: torch.device) -> Callable[[], object]:
    """The flow encoder over a window of `width` random tokens, ready to run."""
    tokens = random_tokens(width, seed).to(device)[None]
    lengths = torch.tensor([width], device=device)
    return lambda: compute.encode(flow, tokens, lengths)


def step_call(streamer: S3GenStreamer, width: int) -> Callable[[], object]:
    """One CFM step (the streamer's estimator at CFG batch 2) over a window of `width` tokens, ready to run."""
    device = streamer.device
    x = torch.randn(1, 80, 2 * width, device=device)
    mask, speaker, t = torch.ones(1, 1, 2 * width, device=device), torch.randn(1, 80, device=device), x[0, 0, :2]
    cfg = streamer.flow.decoder.inference_cfg_rate
    return lambda: compute.cfm_step(streamer.estimator, x, mask, x, speaker, x, t[:1], t[1:], cfg)


def vocoder_call(hift, frames: int, device: torch.device) -> Callable[[], object]:
    """The vocoder (f0 source left silent) over `frames` mel frames, ready to run."""
    mels = torch.randn(1, 80, frames, device=device)
    source = torch.zeros(1, 1, frames * 480, device=device)
    return lambda: compute.vocoder_waveform(hift, *compute.vocoder_spectrum(hift, mels, source))


def planned_chunks(prompt: int, tokens: int, first: int, chunk: int, left_context: int, lookahead: int
                   ) -> list[tuple[int, int]]:
    """(flow window tokens, vocoder frames) per chunk of the streamed decode, as S3GenStreamer plans them."""
    chunks, done = [], 0  # done: tokens whose frames were produced
    counts = list(range(first + lookahead, tokens, chunk)) + [tokens]
    for count in counts:
        ready = count if count == tokens else count - lookahead
        start = max(0, done - left_context) if left_context > 0 else 0
        new_frames = 2 * (ready - done)
        held = 0 if done == 0 else 8
        frames = new_frames if done == 0 else -(-(held + new_frames) // VOCODER_STEP) * VOCODER_STEP
        chunks.append((prompt + count - start, frames))
        done = ready
    return chunks


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


def timed_stream(streamer: S3GenStreamer, voice: dict, tokens: torch.Tensor, args: argparse.Namespace
                 ) -> tuple[float, list[np.ndarray]]:
    started = time.perf_counter()
    parts = stream_chunks(streamer, streamer.open(voice, seed=args.seed), tokens, args.first, args.chunk)
    return time.perf_counter() - started, parts


# ---- output ---------------------------------------------------------------------------------------------------


COLUMNS = {
    "rtf": ["mode", "streams", "rtf", "stream_rtf", "chunk_ms_mean", "chunk_ms_max", "audio_s", "wall_s",
            "warmup_s", "fallback_reason"],
    "quality": ["mode", "snr_db", "edge_jump_ratio", "mel_rel_error_vs_fp32", "pcm_snr_vs_fp32_db"],
    "kernels": ["mode", "window_tokens", "vocoder_frames", "encoder", "cfm_step", "vocoder", "chunk_total"],
    "sweep": ["mode", "left_context", "cfm_steps", "stream_rtf", "snr_vs_whole_same_steps_db",
              "snr_vs_whole_10_steps_db", "edge_jump_ratio"],
}
_printed: set[str] = set()


def print_row(row: dict) -> None:
    columns = COLUMNS[row["table"]]
    if row["table"] not in _printed:
        _printed.add(row["table"])
        print(f"\n[{row['table']}]\n" + "  ".join(f"{c:>14}" for c in columns))
    print("  ".join(f"{str(row.get(c, '')):>14}" for c in columns), flush=True)


def default_modes(device: str) -> list[str]:
    if device == "cpu":
        return ["eager:float32"]
    return ["eager:float32", "eager:bfloat16", "graphs:float32", "graphs:bfloat16"]


def main() -> None:
    args = parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device")
    modes = args.modes.split(",") if args.modes else default_modes(args.device)
    for mode in modes:
        execution, _, dtype = mode.partition(":")
        if execution not in EXECUTIONS or dtype not in ("float32", "bfloat16", "float16"):
            sys.exit(f"bad mode {mode!r}: expected execution:dtype with execution in {EXECUTIONS}")
    s3gen, voice, description = load(args)
    voices = [voice, shorter_voice(voice)]
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    config = {"model": description, "device": device_name, "tokens": args.tokens, "first": args.first,
              "chunk": args.chunk, "cfm_steps": args.cfm_steps, "left_context": args.left_context,
              "streams": integers(args.streams), "modes": modes, "torch": torch.__version__,
              "prompt_tokens": [v["prompt_token"].shape[1] for v in voices]}
    print(json.dumps(config))
    rows: list[dict] = []
    skip = set(args.skip.split(","))
    if not {"rtf", "quality"} <= skip:
        streamers = {mode: measure_rtf(s3gen, voices, mode, args, rows) if "rtf" not in skip else
                     make_streamer(s3gen, mode, args, [1], [v["prompt_token"].shape[1] for v in voices])[0]
                     for mode in modes}
        fp32 = next((s for m, s in streamers.items() if m.endswith(":float32")), None)
        for mode, streamer in streamers.items():
            if "quality" not in skip:
                measure_quality(streamer, fp32, voice, mode, args, rows)
    if "kernels" not in skip:
        count_chunk_kernels(s3gen, voice, modes[0], args, rows)
    if "sweep" not in skip:
        sweep_mode = args.sweep_mode or ("graphs:bfloat16" if "graphs:bfloat16" in modes else modes[0])
        (sweep if args.sweep_kind == "stream" else cost_sweep)(s3gen, voice, sweep_mode, args, rows)
    path = args.json or Path("var/bench") / f"s3gen-{args.device}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"config": config, "rows": rows}, indent=1))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
