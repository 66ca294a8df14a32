"""The transport against hostile or careless clients, on the real server: a request-head deadline for slowloris
connections, a cap on open connections, TLS from the settings, and API keys that reach neither a log line nor a
handshake answer."""

from __future__ import annotations

import asyncio
import json
import select
import shutil
import signal
import socket
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from app.server.log_redaction import redact
from harness import (Deadline, RunningServer, make_settings, run_server_process, self_signed_certificate,
                     wait_until, wait_until_async)
from stream_session import open_session, refused

PARTIAL_HEAD = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n"  # no blank line: the head never ends
TRICKLE = b"X-Slow: 1\r\n"
TRICKLE_EVERY_S = 0.2
HEADER_TIMEOUT_S = 1.0
CAP = 8
KEY = "k3yNeverLogged7f3a9c"
WRONG_KEY = "wr0ngKeyNeverLogged2b"


def raw_connection(server: RunningServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.settings.port), timeout=5)


def read_until_closed(sock: socket.socket, timeout: float) -> bytes:
    """Everything the server sends until it closes the connection (a timeout if it never does)."""
    sock.settimeout(timeout)
    received = b""
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            return received
        if not data:
            return received
        received += data


def read_response(sock: socket.socket) -> bytes:
    """One HTTP/1.1 response with a content-length, leaving the connection open."""
    sock.settimeout(5)
    received = b""
    while b"\r\n\r\n" not in received:
        received += sock.recv(65536)
    head, _, body = received.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length"))
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def trickle_until_closed(socks: list[socket.socket], timeout: float) -> dict[socket.socket, bytes]:
    """Send one more header line on every open socket every TRICKLE_EVERY_S; what each received before the
    server closed it. Fails if any is still open at the timeout."""
    received = {sock: b"" for sock in socks}
    open_socks = set(socks)
    deadline = Deadline(timeout)
    while open_socks:
        assert not deadline.passed, f"{len(open_socks)} of {len(socks)} slow connections still open"
        readable, _, _ = select.select(list(open_socks), [], [], TRICKLE_EVERY_S)
        for sock in readable:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                data = b""
            received[sock] += data
            if not data:
                open_socks.discard(sock)
        for sock in list(open_socks):
            try:
                sock.sendall(TRICKLE)
            except (BrokenPipeError, ConnectionResetError):
                open_socks.discard(sock)
    return received


# ---- slowloris and the connection cap ------------------------------------------------------------------------

def test_slow_request_heads_are_closed_at_the_deadline_however_they_trickle(server_factory):
    server = server_factory(header_timeout_s=HEADER_TIMEOUT_S, keep_alive_timeout_s=30.0)
    wait_until(lambda: server.open_connections() == 0)
    slow = [raw_connection(server) for _ in range(30)]
    for sock in slow:
        sock.sendall(PARTIAL_HEAD)
    kept_alive = raw_connection(server)  # one whole request, then a second head that never ends
    kept_alive.sendall(PARTIAL_HEAD + b"\r\n")
    assert read_response(kept_alive).startswith(b"HTTP/1.1 200")
    kept_alive.sendall(PARTIAL_HEAD)
    slow.append(kept_alive)
    wait_until(lambda: server.open_connections() == len(slow))

    # Were the deadline restarted by arriving bytes, a line every 0.2 s would hold these open forever.
    received = trickle_until_closed(slow, timeout=HEADER_TIMEOUT_S + 15)
    assert all(data == b"" for data in received.values())  # no response to a head that never ended
    wait_until(lambda: server.open_connections() == 0)

    patient = raw_connection(server)  # a head in pieces that ends within the deadline is served
    for piece in (b"GET /health HTTP/1.1\r\n", b"Host: 127.0.0.1\r\n", b"\r\n"):
        patient.sendall(piece)
    assert read_response(patient).startswith(b"HTTP/1.1 200")
    assert server.get("/health").status_code == 200


async def test_connections_beyond_the_cap_get_503_at_once_and_open_ones_are_still_served(server_factory):
    header_timeout_s = 3.0
    server = server_factory(header_timeout_s=header_timeout_s, max_http_connections=CAP, max_connections=2)
    await wait_until_async(lambda: server.open_connections() == 0)
    async with open_session(server.ws_url) as session:
        await wait_until_async(lambda: server.open_connections() == 1)
        fillers = [raw_connection(server) for _ in range(CAP - 1)]
        for sock in fillers:
            sock.sendall(PARTIAL_HEAD)
        await wait_until_async(lambda: server.open_connections() == CAP)

        for _ in range(20):
            reply = await asyncio.to_thread(read_until_closed, raw_connection(server), 5.0)
            assert reply.startswith(b"HTTP/1.1 503") and b'"too_many_connections"' in reply
        await wait_until_async(lambda: server.open_connections() == CAP)
        await session.speak("full", "Still served while the server is full.")
        assert session.audio(session.events("started", "full")[0]["channel"])

        for sock in fillers:  # the fillers reach their head deadline; the WebSocket outlives it
            assert await asyncio.to_thread(read_until_closed, sock, header_timeout_s + 15) == b""
        await wait_until_async(lambda: server.open_connections() == 1)
        await session.speak("later", "And after the deadline too.")
        assert session.audio(session.events("started", "later")[0]["channel"])
    assert server.get("/health").status_code == 200


# ---- TLS from the settings -----------------------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command for a test certificate")
async def test_the_cli_serves_https_and_wss_from_its_tls_settings(tmp_path):
    cert, key = self_signed_certificate(tmp_path)
    settings = make_settings(tmp_path, ssl_certfile=str(cert), ssl_keyfile=str(key))
    with run_server_process(settings) as server:  # CBR_SSL_CERTFILE / CBR_SSL_KEYFILE
        assert server.base_url.startswith("https://") and server.get("/health").status_code == 200
        async with open_session(server.ws_url, ssl=server._verify()) as session:
            await session.speak("tls", "Over TLS.")
            assert session.audio(session.events("started", "tls")[0]["channel"])
        with pytest.raises(httpx.TransportError):  # the port speaks TLS only
            httpx.get(f"http://127.0.0.1:{server.settings.port}/health", timeout=5)


# ---- keys never leak -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("line, kept, gone", [
    ('"GET /health?api_key=SECRET HTTP/1.1" 200', "/health?api_key=***", "SECRET"),
    ("WebSocket /v1/text-to-speech/v/stream-input?output_format=pcm_16000&xi-api-key=SECRET",
     "output_format=pcm_16000&xi-api-key=***", "SECRET"),
    ("/x?authorization=Bearer%20SECRET&apiKey=SECRET2", "authorization=***&apiKey=***", "SECRET"),
    ("/x?api%5Fkey=SECRET", "api%5Fkey=***", "SECRET"),
    ("Sec-WebSocket-Protocol: chatterbox, api-key.SECRET", "chatterbox, api-key.***", "SECRET"),
    ("> Authorization: Bearer SECRET", "Authorization: ***", "SECRET"),
    ('{"text": " ", "xi_api_key": "SECRET"}', '"xi_api_key": "***"', "SECRET"),
])
def test_redact_masks_keys_and_keeps_the_rest(line, kept, gone):
    assert kept in redact(line) and gone not in redact(line)


def test_redact_leaves_lines_without_keys_alone():
    line = '127.0.0.1:5 - "GET /v1/voices?limit=3&output_format=mp3_44100_128 HTTP/1.1" 200'
    assert redact(line) == line


async def test_keys_reach_no_log_line_and_no_handshake_answer(tmp_path: Path):
    log_path = tmp_path / "server.log"
    settings = make_settings(tmp_path, api_key=KEY, log_level="debug")
    with run_server_process(settings, output=log_path) as server:
        port = server.settings.port
        base = f"http://127.0.0.1:{port}"
        for path in ("/health?api_key=" + KEY, "/optimization-status?api_key=" + KEY, "/?api_key=" + KEY,
                     f"/health?xi-api-key={KEY}&authorization=Bearer%20{KEY}"):
            assert httpx.get(base + path, timeout=10).status_code == 200
        assert httpx.get(f"{base}/optimization-status?api_key={WRONG_KEY}", timeout=10).status_code == 401
        assert httpx.get(f"{base}/optimization-status", headers={"X-API-Key": KEY}, timeout=10).status_code == 200

        ws = f"ws://127.0.0.1:{port}/v1/stream"
        async with open_session(f"{ws}?api_key={KEY}") as session:
            await session.speak("q", "Key in the query.")
        async with open_session(ws, subprotocols=["chatterbox", f"api-key.{KEY}"]) as session:
            assert session.ws.subprotocol == "chatterbox"
            assert KEY not in str(session.ws.response.headers)
            await session.speak("s", "Key in the subprotocol.")
        async with open_session(ws, subprotocols=[f"api-key.{KEY}"]) as session:  # nothing key-less to pick
            assert session.ws.subprotocol is None and "Sec-WebSocket-Protocol" not in session.ws.response.headers
        close = await refused(ws, subprotocols=["chatterbox", f"api-key.{WRONG_KEY}"])
        assert close is not None and close.code == 1008

        eleven = f"ws://127.0.0.1:{port}/v1/text-to-speech/default/stream-input?output_format=pcm_16000"
        for url, first in ((f"{eleven}&xi-api-key={KEY}", {}), (eleven, {"xi_api_key": KEY})):
            async with connect(url, open_timeout=10) as eleven_socket:
                for message in ({"text": " ", **first}, {"text": "Hello there. "}, {"text": ""}):
                    await eleven_socket.send(json.dumps(message))
                replies = [json.loads(message) async for message in eleven_socket]
            assert replies[-1]["isFinal"] and any(reply.get("audio") for reply in replies)

        server.process.send_signal(signal.SIGTERM)  # a drained exit flushes every log line
        assert await asyncio.to_thread(server.process.wait, 20) == 0
    log = log_path.read_text()
    assert "GET /health?api_key=*** HTTP/1.1" in log and "/v1/stream?api_key=***" in log  # the lines are there
    assert KEY not in log and WRONG_KEY not in log
