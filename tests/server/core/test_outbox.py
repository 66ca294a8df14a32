"""The outbox's byte bounds on their own (what a client sees of them: tests/server/test_hardening.py)."""

from __future__ import annotations

from app.server.core.outbox import REPLY_SHARE, Outbox

LIMIT = 64 * 1024


async def test_a_context_is_over_its_share_only_when_the_queue_is_full():
    outbox = Outbox(websocket=None, max_bytes=LIMIT)  # type: ignore[arg-type]
    big, small = object(), object()
    outbox.send(b"x" * 1000, owner=small)
    assert not outbox.over_share(big, LIMIT - 1000)  # fits
    outbox.send(b"x" * (LIMIT - 1000), owner=big)
    assert outbox.over_share(big, 1)  # full, and big holds more than half
    assert not outbox.over_share(small, 1)  # small is far under its half
    outbox.purge(big)
    assert outbox.queued_bytes == 1000 and not outbox.over_share(small, LIMIT // 2)


async def test_unread_replies_past_their_share_close_the_connection():
    outbox = Outbox(websocket=None, max_bytes=LIMIT)  # type: ignore[arg-type]
    reply = "e" * 100
    for _ in range(LIMIT // REPLY_SHARE // len(reply)):
        outbox.send(reply)
    assert not outbox.closing
    outbox.send(reply)
    assert outbox.closing and outbox.queued_bytes == 0
    outbox.send(reply)  # ignored once closing
    assert outbox.queued_bytes == 0
