"""The one failure type every client-facing layer reports: the speech core raises it, our HTTP routes turn it
into `{"error": {"code", "message"}}` (app/server/http_common.py), the WebSocket protocols into their error
messages, and the OpenAI and ElevenLabs adapters translate its `code` through their own tables."""

from __future__ import annotations

from typing import Any

BAD_REQUEST = 400


class ClientError(Exception):
    """A failure a client can act on: stable `code`, readable `message`, HTTP `status` (WebSocket protocols
    ignore the status)."""

    def __init__(self, code: str, message: str, status: int = BAD_REQUEST):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


def error_body(code: str, message: str) -> dict[str, Any]:
    """The one JSON error shape of our HTTP routes."""
    return {"error": {"code": code, "message": message}}
