"""The Starlette app and the process around it.

`create_app` composes the protocol adapters' routes around the speech core (app/server/core) with one table of
exception handlers (every `ClientError` becomes our one JSON error shape); its state (settings, engine, worker,
voices, metrics, runtime) lives on `app.state`, so route modules can be added without globals. `serve` runs it
under uvicorn with its own signal handling: SIGTERM/SIGINT start a drain (no new connections or contexts,
/ready 503, open contexts finish up to drain_timeout_s, then 1001) instead of uvicorn's immediate 1012 close;
a second signal exits at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from app.cache import ResponseCache
from app.engine.base import Engine
from app.engine.factory import build_engine
from app.engine.worker import EngineWorker
from app.metrics import Metrics
from app.server import elevenlabs, elevenlabs_http, native_ws, openai_api, ops, synthesize, voices_api
from app.server.auth import ApiKeyMiddleware
from app.server.connection_guard import guarded_h11_protocol
from app.server.core.runtime import Runtime
from app.server.elevenlabs_common import is_elevenlabs_path, is_under_their_prefix
from app.server.http_common import EXCEPTION_HANDLERS, routing_error_response
from app.server.log_redaction import redact_root_handlers, uvicorn_log_config
from app.settings import Settings, chunker_config
from app.voices.library import VoiceLibrary

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parents[2] / "static"
SHUTDOWN_GRACE_S = 3  # uvicorn's own wait after our drain; by then nothing should be left
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def create_app(settings: Settings, engine: Engine | None = None) -> Starlette:
    """`engine` is injectable for tests; by default the lifespan builds the one the settings name."""
    routes: list[BaseRoute] = [*ops.routes, *synthesize.routes, *openai_api.routes, *voices_api.routes,
                               *elevenlabs.routes, *elevenlabs_http.routes,
                               WebSocketRoute("/v1/stream", native_ws.stream_endpoint)]
    # Probes and Prometheus cannot send a key; /ready and /metrics reveal no content and must stay reachable.
    public_paths = {"/health", "/ready", "/metrics"}
    serve_page = (STATIC_DIR / "index.html").is_file()
    if serve_page:
        public_paths |= _static_paths(STATIC_DIR)
    app = Starlette(routes=routes, lifespan=_lifespan,
                    exception_handlers={**EXCEPTION_HANDLERS, HTTPException: _routing_error},
                    middleware=[Middleware(ApiKeyMiddleware, api_key=settings.api_key,
                                           is_public=lambda path: path in public_paths
                                           or is_elevenlabs_path(path))])
    if serve_page:
        _serve_unrouted_paths(app, StaticFiles(directory=STATIC_DIR, html=True))
    app.state.settings = settings
    app.state.engine = engine
    app.state.metrics = Metrics()
    app.state.response_cache = ResponseCache(settings.cache_bytes)
    app.state.runtime = Runtime(chunker_config(settings), app.state.metrics)
    return app


def _serve_unrouted_paths(app: Starlette, static: ASGIApp) -> None:
    """The demo page's files answer the GET and HEAD requests no route takes. As the router's default rather
    than a catch-all mount, so a route's path asked with the wrong method still gets 405, not the page's 404;
    other methods on unknown paths get 404."""
    not_found = app.router.not_found

    async def default(scope: Scope, receive: Receive, send: Send) -> None:
        is_read = scope["type"] == "http" and scope["method"] in ("GET", "HEAD")
        await (static if is_read else not_found)(scope, receive, send)

    app.router.default = default


async def _routing_error(request: Request, exc: Exception) -> Response:
    """Unknown routes and methods answer JSON: ElevenLabs' shape under their prefix, ours everywhere else."""
    if is_under_their_prefix(request.url.path):
        return await elevenlabs_http.routing_error_response(request, exc)
    return await routing_error_response(request, exc)


def _static_paths(directory: Path) -> set[str]:
    """URL paths of the demo page's files: public even with an API key (the page itself asks for the key)."""
    paths = {"/"}
    for file in directory.rglob("*"):
        if file.is_file():
            paths.add("/" + file.relative_to(directory).as_posix())
    return paths


@contextlib.asynccontextmanager
async def _lifespan(app: Starlette) -> AsyncIterator[None]:
    state = app.state
    settings: Settings = state.settings
    if state.engine is None:
        state.engine = await asyncio.to_thread(build_engine, settings)
    engine: Engine = state.engine
    state.engine_info = engine.info
    worker = EngineWorker(engine, on_step=state.metrics.on_step)
    worker.start()
    state.worker = worker
    state.metrics.track_queue_depth(lambda: worker.active_requests)
    warmup: asyncio.Task | None = None
    try:
        state.voices = VoiceLibrary(
            root=Path(settings.voices_dir), engine_key=engine.voice_key, max_upload_bytes=settings.max_upload_bytes,
            embed=lambda wav, sample_rate: worker.call(engine.embed_voice, wav, sample_rate),
            save=engine.save_voice, load=engine.load_voice, default_voice=await worker.call(engine.default_voice))
        warmup = asyncio.create_task(_warm_up(state))  # /health answers (and /ready says 503) meanwhile
        yield
    finally:
        if warmup is not None:
            warmup.cancel()
        await worker.stop()


async def _warm_up(state) -> None:
    started = time.monotonic()
    try:
        await state.worker.call(state.engine.warmup)
    except Exception as exc:
        log.exception("engine warm-up failed")
        state.runtime.mark_failed(f"warm-up failed: {exc}")
        return
    elapsed = time.monotonic() - started
    status = await state.worker.call(state.engine.optimization_status)
    state.metrics.compile_seconds.set(float(status.get("compile_seconds", elapsed)))
    state.runtime.mark_ready()
    log.info("engine %s ready after %.1f s warm-up", state.engine_info.name, elapsed)


def uvicorn_config(app: Starlette, settings: Settings) -> uvicorn.Config:
    ping = settings.ping_interval_s or None  # 0 disables keepalive pings
    # A pong comes back only after the client has read what was sent before the ping: a slow reader gets
    # `slow_consumer` (after send_buffer_s) before the keepalive gives up on it with 1011.
    ping_timeout = None if ping is None else ping + settings.send_buffer_s
    return uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level=settings.log_level, lifespan="on",
        log_config=uvicorn_log_config(), ssl_certfile=settings.ssl_certfile or None,
        ssl_keyfile=settings.ssl_keyfile or None,
        http=guarded_h11_protocol(settings.header_timeout_s, settings.max_http_connections),
        timeout_keep_alive=settings.keep_alive_timeout_s,  # type: ignore[arg-type]  # call_later takes a float
        ws="websockets-sansio", ws_max_size=settings.max_message_bytes, ws_per_message_deflate=False,
        ws_ping_interval=ping, ws_ping_timeout=ping_timeout, timeout_graceful_shutdown=SHUTDOWN_GRACE_S)


class DrainingServer(uvicorn.Server):
    """uvicorn.Server whose stop signals drain the app first (see the module docstring)."""

    def __init__(self, config: uvicorn.Config, drain: Callable[[], Awaitable[None]]):
        super().__init__(config)
        self._drain = drain
        self._drain_task: asyncio.Task | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # Unlike uvicorn's, this does not re-raise the signal afterwards: a drained server exits with 0.
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, self.begin_drain)
        try:
            yield
        finally:
            for sig in STOP_SIGNALS:
                loop.remove_signal_handler(sig)

    def begin_drain(self) -> None:
        if self._drain_task is None:
            log.info("stop signal: draining")
            self._drain_task = asyncio.get_running_loop().create_task(self._drain_then_exit())
        else:
            log.warning("second stop signal: exiting now")
            self.should_exit = self.force_exit = True

    async def _drain_then_exit(self) -> None:
        try:
            await self._drain()
        finally:
            self.should_exit = True


def serve(settings: Settings) -> int:
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    redact_root_handlers()
    app = create_app(settings)
    server = DrainingServer(uvicorn_config(app, settings),
                            drain=lambda: app.state.runtime.drain(settings.drain_timeout_s))
    server.run()
    return 0 if server.started else 1
