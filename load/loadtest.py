"""Ramp concurrent LLM-fed streaming sessions against /v1/stream and find the largest N that holds the
service level (p95 time to first audio, no underruns, no errors).

    python -m load.loadtest --url ws://127.0.0.1:8000/v1/stream --max-sessions 32 --out var/loadtest
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from app.audio.encode import BYTES_PER_SAMPLE
from load.metrics import TTFA_FIELDS, ServiceLevel
from load.ramp import RampConfig, doubling_steps, run_ramp, wait_until_ready
from load.replies import TokenTiming
from load.report import verdict, write_reports
from load.session import SessionConfig

log = logging.getLogger("load")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m load.loadtest", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="ws://127.0.0.1:8000/v1/stream", help="WebSocket endpoint")
    parser.add_argument("--api-key", default=os.environ.get("CBR_API_KEY") or None,
                        help="sent as `Authorization: Bearer` [env CBR_API_KEY]")
    parser.add_argument("--out", type=Path, default=Path("var/loadtest"), help="directory for the reports")

    ramp = parser.add_argument_group("ramp")
    ramp.add_argument("--sessions", type=_positive_int_list, metavar="N,N,...",
                      help="explicit list of concurrency steps (default: 1, 2, 4, ... up to --max-sessions)")
    ramp.add_argument("--max-sessions", type=int, default=64, help="last doubling step")
    length = ramp.add_mutually_exclusive_group()
    length.add_argument("--replies", type=int, default=3, help="replies each session speaks per step")
    length.add_argument("--step-seconds", type=float,
                        help="instead of --replies: keep starting replies for this long per step")
    ramp.add_argument("--slo-ttfa-ms", type=float, default=250.0,
                      help="p95 time-to-first-audio limit (250 suits a GPU; a CPU engine needs more)")
    ramp.add_argument("--slo-ttfa-from", choices=tuple(TTFA_FIELDS), default="release",
                      help="where the SLO's time to first audio starts: the first chunk's release (its "
                           "chunk_started: queueing and synthesis, what load changes), the text message that "
                           "completed it (adds the chunker's wait), or the reply's first text (adds the LLM's "
                           "typing of the first chunk)")
    ramp.add_argument("--cooldown-s", type=float, default=2.0, help="pause between steps")
    ramp.add_argument("--wait-ready-s", type=float, default=120.0, help="wait this long for GET /ready first")

    llm = parser.add_argument_group("simulated LLM and user")
    llm.add_argument("--token-rate", type=float, default=30.0, help="mean tokens per second")
    llm.add_argument("--gamma-shape", type=float, default=2.0, help="inter-token gap shape (higher: steadier)")
    llm.add_argument("--stall-probability", type=float, default=0.02, help="chance of a stall after a token")
    llm.add_argument("--stall-ms", type=float, default=300.0, help="mean stall length")
    llm.add_argument("--reply-chars", type=int, default=0, help="cap each reply's length (0: whole paragraphs)")
    llm.add_argument("--think-s", type=float, default=0.5, help="mean pause between replies of a session")
    llm.add_argument("--stagger-s", type=float, default=1.0, help="spread session starts over this window")
    llm.add_argument("--reply-timeout-s", type=float, default=60.0, help="give up on a reply after this long")
    llm.add_argument("--voice", default="default")
    llm.add_argument("--chunk-size", type=int, help="per-context chunk budget (server default if unset)")
    llm.add_argument("--encoding", choices=sorted(BYTES_PER_SAMPLE), default="pcm_s16le")
    llm.add_argument("--sample-rate", type=int, default=24_000)
    llm.add_argument("--seed", type=int, default=0, help="seeds reply choice and timing")
    return parser


def _positive_int_list(raw: str) -> list[int]:
    try:
        values = [int(part) for part in raw.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {raw!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("steps must be positive integers")
    return values


def ramp_config(args: argparse.Namespace) -> RampConfig:
    session = SessionConfig(
        url=args.url,
        api_key=args.api_key,
        timing=TokenTiming(tokens_per_s=args.token_rate, gamma_shape=args.gamma_shape,
                           stall_probability=args.stall_probability, stall_mean_s=args.stall_ms / 1000),
        replies_per_session=None if args.step_seconds is not None else args.replies,
        step_seconds=args.step_seconds,
        reply_chars=args.reply_chars,
        think_s=args.think_s,
        stagger_s=args.stagger_s,
        reply_timeout_s=args.reply_timeout_s,
        voice=args.voice,
        chunk_size=args.chunk_size,
        encoding=args.encoding,
        sample_rate=args.sample_rate,
    )
    return RampConfig(
        steps=args.sessions or doubling_steps(args.max_sessions),
        session=session,
        service_level=ServiceLevel(ttfa_p95_ms=args.slo_ttfa_ms, ttfa_from=args.slo_ttfa_from),
        cooldown_s=args.cooldown_s,
        seed=args.seed,
    )


def command_line(argv: list[str]) -> str:
    """The exact command, with the API key masked so reports can be shared."""
    shown = list(argv)
    for index, arg in enumerate(shown):
        if arg == "--api-key" and index + 1 < len(shown):
            shown[index + 1] = "***"
        elif arg.startswith("--api-key="):
            shown[index] = "--api-key=***"
    return shlex.join(["python", "-m", "load.loadtest", *shown])


def _config_for_report(config: RampConfig) -> dict[str, Any]:
    document = dataclasses.asdict(config)
    document["session"]["api_key"] = "***" if config.session.api_key else None
    return document


async def _run(config: RampConfig, args: argparse.Namespace, argv: list[str]) -> int:
    if not await wait_until_ready(args.url, args.api_key, args.wait_ready_s):
        log.error("the server at %s did not report ready within %.0f s", args.url, args.wait_ready_s)
        return 1
    result = await run_ramp(config)
    paths = write_reports(args.out, result, config.service_level, command_line(argv), _config_for_report(config))
    print(verdict(result, config.service_level).replace("**", ""))
    for path in paths:
        print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    return asyncio.run(_run(ramp_config(args), args, argv))


if __name__ == "__main__":
    sys.exit(main())
