"""One settings object for the whole server, read from command-line flags and environment variables.

Every field has an environment variable ``CBR_<FIELD>`` and a flag ``--<field-with-dashes>``; flags win.
`settings_table()` renders the README's table from the same definitions so the docs cannot drift.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from app.engine.chatterbox.model_names import MODEL_KINDS
from app.engine.types import MAX_PROMPT_TOKENS
from app.text.chunker import ChunkerConfig

ENV_PREFIX = "CBR_"


def _opt(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass(frozen=True)
class Settings:
    # transport
    host: str = _opt("127.0.0.1", "Interface to bind.")
    port: int = _opt(8000, "TCP port.")
    api_key: str = _opt("", "If set, every request needs it (header `Authorization: Bearer`, `X-API-Key`, "
                            "query `api_key`, or WebSocket subprotocol `api-key.<key>`).")
    log_level: str = _opt("info", "Log level.", ("debug", "info", "warning", "error"))
    ssl_certfile: str = _opt("", "TLS certificate chain (PEM): serve https and wss instead of http and ws.")
    ssl_keyfile: str = _opt("", "Private key (PEM) of `--ssl-certfile`; leave unset when that file holds it too.")
    header_timeout_s: float = _opt(10.0, "A connection must complete its request head within this long of opening "
                                         "(or of its previous response); else it is closed.")
    keep_alive_timeout_s: float = _opt(5.0, "Close an idle keep-alive HTTP connection after this long.")
    max_http_connections: int = _opt(512, "Open TCP connections (HTTP and WebSocket together, at least "
                                          "`--max-connections`); more get 503 and are closed at once.")

    # engine
    engine: str = _opt("auto", "Which engine serves: `chatterbox` (the models), `espeak` (light CPU engine, no "
                               "weights) or `auto`: chatterbox where a CUDA GPU is present, else espeak.",
                       ("auto", "chatterbox", "espeak"))
    models: str = _opt("standard", "Models to serve, comma-separated: `standard`, `turbo`, `multilingual`; a "
                                   "client picks one per context (the espeak engine stands in for each name).")
    default_model: str = _opt("", "The model for clients that name none (default: the first of `--models`).")
    checkpoint: str = _opt("hub", "Standard Chatterbox weights: `hub` (ResembleAI/chatterbox from the model hub) or "
                                  "a local directory in the official layout.")
    turbo_checkpoint: str = _opt("hub", "Chatterbox-Turbo weights: `hub` (ResembleAI/chatterbox-turbo) or a local "
                                        "directory in its official layout.")
    multilingual_checkpoint: str = _opt("hub", "Multilingual Chatterbox weights: `hub` (ResembleAI/chatterbox) or a "
                                               "local directory in its official layout.")
    device: str = _opt("auto", "`auto` (cuda when present, else cpu), `cuda`, `cuda:N` or `cpu`.")
    dtype: str = _opt("auto", "`auto` (bfloat16 on CUDA, float32 on CPU), `float32`, `bfloat16`, `float16`.",
                      ("auto", "float32", "bfloat16", "float16"))
    enable_optimizations: bool = _opt(True, "Compile and capture CUDA graphs at start-up (falls back to eager "
                                            "with a logged reason on failure).")
    compile_mode: str = _opt("none", "How T3 and S3Gen are optimized on CUDA, always inside our own CUDA graphs: "
                                     "`none` and `reduce-overhead` capture the eager code (fastest start-up); "
                                     "`default` and `max-autotune` capture inductor's (max-autotune) kernels.",
                             ("none", "default", "reduce-overhead", "max-autotune"))
    max_batch_size: int = _opt(64, "Most streams stepped together in one T3 decode step (at most 4 on a CPU).")
    max_new_tokens: int = _opt(1000, "Cap on speech tokens per text chunk (40 s of audio).")
    alignment_guard: str = _opt("auto", "Guard each stream's stop by the T3's aligned attention heads (upstream's "
                                        "AlignmentStreamAnalyzer, batched) and measure word times: `auto` (the "
                                        "multilingual model, as upstream), `on` (the standard model too), `off`.",
                                ("auto", "on", "off"))
    cfm_steps: int = _opt(10, "Euler steps of S3Gen's flow-matching decoder (fewer is faster, rougher).")
    s3gen_left_context: int = _opt(50, "Speech tokens of already-spoken left context each streaming S3Gen "
                                       "chunk re-decodes (0 = all of them).")
    s3gen_prompt_tokens: int = _opt(
        MAX_PROMPT_TOKENS, "Voice-prompt speech tokens S3Gen conditions on (25-250; 25 per second, upstream uses up "
                           "to 250). The prompt is re-decoded with every streaming chunk, 73-80 % of its work at "
                           "250: fewer is faster, less like the voice.")
    first_audio_tokens: int = _opt(10, "Speech tokens in a request's first S3Gen chunk (0.4 s of audio).")
    audio_chunk_tokens: int = _opt(40, "Speech tokens in later S3Gen chunks.")
    watermark: bool = _opt(False, "Apply Resemble's Perth watermark to each streamed chunk.")
    synthetic_tokens_per_char: float = _opt(0.0, "Load tests only: every chunk is exactly len(text) x this many "
                                                 "speech tokens, stop token ignored (random weights never emit it; "
                                                 "real speech runs about 1.7; espeak pads or cuts). 0 = off.")

    # streaming protocol
    chunk_size: int = _opt(50, "Default text-chunk budget in tokens (25-200), overridable per connection.")
    sentence_hold_s: float = _opt(0.35, "A sentence end followed by silence (a tool call, a slow LLM) is released "
                                        "whole after this long, or after `sentence_hold_tokens` of the stream's "
                                        "own token intervals when that is longer.")
    sentence_hold_tokens: float = _opt(2.5, "The hold in the stream's token intervals: at 2 tokens/s, \"$29.\" "
                                            "is not taken for a sentence end while \"99\" is on its way.")
    chunk_deadline_s: float = _opt(0.6, "With little audio queued, text waiting this long since it arrived may be "
                                        "cut at a clause, else at a word that splits no number, name, date, code "
                                        "or tag and is no function word...")
    deadline_min_chars: int = _opt(32, "...leaving a chunk of at least this many characters: a shorter sentence "
                                       "is always waited for whole.")
    max_connections: int = _opt(256, "Concurrent WebSocket connections; more are closed with 1013.")
    max_contexts_per_connection: int = _opt(8, "Concurrent contexts on one connection.")
    max_buffered_text: int = _opt(20000, "Characters of unspoken text a context may hold.")
    max_message_bytes: int = _opt(65536, "Largest client message; larger closes with 1009.")
    idle_timeout_s: float = _opt(180.0, "Close a connection that sends nothing, gets no audio and waits for none "
                                        "for this long (1000 + event).")
    ping_interval_s: float = _opt(20.0, "WebSocket ping interval (0 disables); a ping unanswered for this plus "
                                        "send_buffer_s closes with 1011.")
    send_buffer_s: float = _opt(30.0, "Audio seconds queued for a slow reader before its context is dropped.")
    max_send_queue_bytes: int = _opt(16 * 1024 * 1024, "Bytes one WebSocket connection may hold queued for its "
                                                       "client; a context holding more than its share is dropped "
                                                       "(`slow_consumer`), replies piling up unread close 1008.")
    auth_timeout_s: float = _opt(5.0, "With --api-key: how long an ElevenLabs socket whose handshake carried no "
                                      "key may take to send it in its first message (it holds no connection slot "
                                      "meanwhile); then 1008.")
    max_running_requests_per_connection: int = _opt(16, "Engine requests one connection may have in the engine at "
                                                        "once; its later chunks wait their turn, in order.")
    max_queued_requests_per_connection: int = _opt(1024, "Chunks one connection may have waiting for the engine "
                                                         "beyond those; more fails the context "
                                                         "(`too_many_requests`).")
    max_contexts_per_key: int = _opt(0, "With --api-key: open contexts of all connections presenting the key "
                                        "(0 = no cap beyond max_connections x max_contexts_per_connection).")
    max_requests_per_key: int = _opt(0, "With --api-key: chunks running or waiting for the engine for all "
                                        "connections presenting the key (0 = no cap).")
    drain_timeout_s: float = _opt(30.0, "On SIGTERM, how long active contexts may finish before exit.")

    # storage and caching
    voices_dir: str = _opt("var/voices", "Where uploaded voices and their cached conditionings live.")
    cache_bytes: int = _opt(256 * 1024 * 1024, "Byte budget of the response cache (0 disables).")
    max_upload_bytes: int = _opt(20 * 1024 * 1024, "Largest reference-audio upload.")

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    @property
    def resolved_engine(self) -> tuple[str, str]:
        """(the engine that serves, why)."""
        if self.engine != "auto":
            return self.engine, f"--engine {self.engine}"
        import torch

        if torch.cuda.is_available():
            return "chatterbox", "--engine auto: a CUDA GPU is present"
        return "espeak", "--engine auto: no CUDA GPU (chatterbox on a CPU is far slower than real time)"

    @property
    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    @property
    def resolved_dtype(self) -> str:
        if self.dtype != "auto":
            return self.dtype
        return "bfloat16" if self.resolved_device.startswith("cuda") else "float32"


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def _coerce(kind: type, raw: str) -> Any:
    if kind is bool:
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"not a boolean: {raw!r}")
    return kind(raw)


def _field_type(f: dataclasses.Field) -> type:
    return type(f.default)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per setting; defaults are None so unset flags fall through to the environment."""
    for f in fields(Settings):
        kind = _field_type(f)
        kwargs: dict[str, Any] = {"default": None, "help": f.metadata["help"] + f" [env {env_name(f.name)}]"}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = kind
            if f.metadata["choices"]:
                kwargs["choices"] = f.metadata["choices"]
        parser.add_argument(flag_name(f.name), dest=f.name, **kwargs)


def load_settings(args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Defaults, then environment, then flags."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in fields(Settings):
        kind = _field_type(f)
        raw = environ.get(env_name(f.name))
        if raw is not None:
            try:
                values[f.name] = _coerce(kind, raw)
            except ValueError as exc:
                raise ValueError(f"{env_name(f.name)}: {exc}") from None
        flag_value = getattr(args, f.name, None) if args is not None else None
        if flag_value is not None:
            values[f.name] = flag_value
    settings = Settings(**values)
    validate_settings(settings)
    return settings


def chunker_config(s: Settings) -> ChunkerConfig:
    """The chunker's rules for new contexts and syntheses (a context may override the chunk size)."""
    return ChunkerConfig(chunk_size=s.chunk_size, first_chunk_max_wait_s=s.chunk_deadline_s,
                         deadline_min_chars=s.deadline_min_chars, sentence_hold_s=s.sentence_hold_s,
                         sentence_hold_tokens=s.sentence_hold_tokens)


def model_list(s: Settings) -> tuple[str, ...]:
    """`--models` as names, in order, without repeats."""
    return tuple(dict.fromkeys(name.strip() for name in s.models.split(",") if name.strip()))


def default_model(s: Settings) -> str:
    return s.default_model or model_list(s)[0]


def validate_settings(s: Settings) -> None:
    models = model_list(s)
    unknown = [name for name in models if name not in MODEL_KINDS]
    if not models or unknown:
        raise ValueError(f"models must name some of {', '.join(MODEL_KINDS)}, not {s.models!r}")
    if default_model(s) not in models:
        raise ValueError(f"default_model {s.default_model!r} is not among the models {', '.join(models)}")
    for f in fields(Settings):
        choices = f.metadata["choices"]
        if choices and getattr(s, f.name) not in choices:
            raise ValueError(f"{f.name} must be one of {', '.join(choices)}, not {getattr(s, f.name)!r}")
    chunker_config(s)  # its own checks: chunk_size 25-200, no negative waits
    if not 25 <= s.s3gen_prompt_tokens <= MAX_PROMPT_TOKENS:
        raise ValueError(f"s3gen_prompt_tokens must be between 25 and {MAX_PROMPT_TOKENS}")
    if s.max_connections < 1 or s.max_contexts_per_connection < 1:
        raise ValueError("max_connections and max_contexts_per_connection must be at least 1")
    if s.max_http_connections < s.max_connections:
        raise ValueError("max_http_connections must be at least max_connections (WebSockets count against both)")
    if s.header_timeout_s <= 0 or s.keep_alive_timeout_s <= 0:
        raise ValueError("header_timeout_s and keep_alive_timeout_s must be positive")
    if s.ssl_keyfile and not s.ssl_certfile:
        raise ValueError("ssl_keyfile needs ssl_certfile")
    if s.max_running_requests_per_connection < 1 or s.max_queued_requests_per_connection < 0:
        raise ValueError("max_running_requests_per_connection must be at least 1, max_queued_requests_per_connection "
                         "at least 0")
    if s.max_send_queue_bytes < 64 * 1024 or s.auth_timeout_s <= 0:
        raise ValueError("max_send_queue_bytes must be at least 65536 and auth_timeout_s positive")


def settings_table() -> str:
    """Markdown table of every setting (flag, environment variable, default, meaning)."""
    rows = ["| flag | environment | default | meaning |", "|---|---|---|---|"]
    for f in fields(Settings):
        rows.append(f"| `{flag_name(f.name)}` | `{env_name(f.name)}` | `{f.default}` | {f.metadata['help']} |")
    return "\n".join(rows)
