"""Keys never reach a log line.

Clients may pass their key in the query (`?api_key=`, ElevenLabs' `?xi-api-key=`; the demo page does), and uvicorn
logs every request line and WebSocket handshake with its query string. `RedactSecrets` is a logging filter for
handlers: it rewrites the value of every query parameter whose name looks like a credential, every
`api-key.<key>` subprotocol and every credential header to `***`, in a record's message and its arguments alike
(uvicorn's access formatter unpacks the arguments, so they keep their places). At debug level websockets logs
every frame; a client's data frames are logged without their payload, because a long one is elided in the middle
and the elision can separate a key (ElevenLabs clients send `xi_api_key` in their first message) from its name.
"""

from __future__ import annotations

import copy
import logging
import re
from typing import Any
from urllib.parse import unquote_plus

from uvicorn.config import LOGGING_CONFIG
from websockets.frames import Frame, Opcode

MASK = "***"
# A name containing any of these is a credential, however a client spells it (`api_key`, `xi-api-key`, `apiKey`...).
_SECRET_NAME_PARTS = ("key", "token", "auth", "secret", "password")
# Every pattern is a run of one character class after a fixed prefix: linear time on any input. Masking is
# idempotent (a masked line masks to itself).
_QUERY_PAIR = re.compile(r"(?P<lead>[?&;])(?P<name>[^=&;\s\"'#?]+)=(?P<value>[^&;\s\"'#]*)")
_KEY_SUBPROTOCOL = re.compile(r"(?i)\bapi-key\.[^\s,\"']+")
_CREDENTIAL_HEADER = re.compile(r"(?i)\b(?P<name>authorization|x-api-key|xi[-_]api[-_]key|api[-_]key)"
                                r"(?P<sep>\"?\s*:\s*\"?)(?P<value>[^\r\n\"',&]+)")


def _is_secret_name(raw_name: str) -> bool:
    name = unquote_plus(raw_name).lower()
    return any(part in name for part in _SECRET_NAME_PARTS)


def _mask_pair(match: re.Match[str]) -> str:
    if not _is_secret_name(match["name"]):
        return match[0]
    return f"{match['lead']}{match['name']}={MASK}"


def redact(text: str) -> str:
    text = _QUERY_PAIR.sub(_mask_pair, text)
    text = _KEY_SUBPROTOCOL.sub("api-key." + MASK, text)
    return _CREDENTIAL_HEADER.sub(lambda m: f"{m['name']}{m['sep']}{MASK}", text)


_DATA_OPCODES = (Opcode.TEXT, Opcode.BINARY, Opcode.CONT)


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Frame) and value.opcode in _DATA_OPCODES:
        return f"{value.opcode.name} *** [{len(value.data)} bytes]"
    return value


class RedactSecrets(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = _redact_value(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_redact_value(arg) for arg in record.args)
        elif isinstance(record.args, dict):
            record.args = {name: _redact_value(arg) for name, arg in record.args.items()}
        message = record.getMessage()  # any other argument renders only here
        if redact(message) != message:
            record.msg, record.args = redact(message), ()
        return True


def uvicorn_log_config() -> dict[str, Any]:
    """uvicorn's own logging configuration with `RedactSecrets` on every handler, so records that propagate from
    child loggers (uvicorn.error) are redacted too."""
    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["redact_secrets"] = {"()": RedactSecrets}
    for handler in config["handlers"].values():
        handler.setdefault("filters", []).append("redact_secrets")
    return config


def redact_root_handlers() -> None:
    """The same filter on the root logger's handlers (the app's own records)."""
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactSecrets())
