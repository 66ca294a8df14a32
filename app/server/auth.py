"""Optional API key for every route but the public ones (/health, the demo page's static files).

Accepted from: `Authorization: Bearer <key>`, `X-API-Key: <key>`, query `?api_key=<key>`, or the WebSocket
subprotocol `api-key.<key>` (browsers cannot set handshake headers; see `accepted_subprotocol`). Keys are
redacted from every log line (app/server/log_redaction.py). HTTP requests without it get 401;
WebSockets are accepted and closed at once with 1008, because a browser sees only the close code, never the
HTTP status of a refused handshake.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable
from urllib.parse import parse_qsl

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from app.errors import error_body
from app.server.core.close_codes import POLICY_VIOLATION

SUBPROTOCOL_PREFIX = "api-key."


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def presented_keys(scope: Scope) -> list[str]:
    keys = []
    authorization = _header(scope, b"authorization")
    if authorization and authorization[:7].lower() == "bearer ":
        keys.append(authorization[7:].strip())
    header_key = _header(scope, b"x-api-key")
    if header_key:
        keys.append(header_key.strip())
    query = scope.get("query_string", b"").decode("latin-1")
    keys.extend(value for name, value in parse_qsl(query) if name == "api_key")
    keys.extend(p[len(SUBPROTOCOL_PREFIX):] for p in scope.get("subprotocols", []) if p.startswith(SUBPROTOCOL_PREFIX))
    return keys


def key_accepted(expected: str, presented: Iterable[str]) -> bool:
    wanted = expected.encode()
    return any(hmac.compare_digest(wanted, key.encode()) for key in presented)


def accepted_subprotocol(scope: Scope) -> str | None:
    """The first offered subprotocol that carries no key, else none: the answer is never `api-key.<key>`.

    A server may only select one of the offered subprotocols, and browsers fail a handshake that offered some
    and got none back, so a browser that sends its key this way offers a key-less name next to it
    (`["chatterbox", "api-key.<key>"]`) and gets that name back."""
    return next((p for p in scope.get("subprotocols", []) if not p.startswith(SUBPROTOCOL_PREFIX)), None)


class ApiKeyMiddleware:
    def __init__(self, app: ASGIApp, api_key: str, is_public: Callable[[str], bool]):
        self.app = app
        self.api_key = api_key
        self.is_public = is_public

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (not self.api_key or scope["type"] not in ("http", "websocket") or self.is_public(scope["path"])
                or key_accepted(self.api_key, presented_keys(scope))):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "http":
            response = JSONResponse(error_body("unauthorized", "missing or invalid API key"),
                                    status_code=401, headers={"WWW-Authenticate": "Bearer"})
            await response(scope, receive, send)
            return
        await receive()  # websocket.connect
        await send({"type": "websocket.accept", "subprotocol": accepted_subprotocol(scope)})
        await send({"type": "websocket.close", "code": POLICY_VIOLATION, "reason": "missing or invalid API key"})
