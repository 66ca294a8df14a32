"""Real uvicorn servers on 127.0.0.1 with a free port, for any test file (`import harness`).

- `run_server(settings, engine=None)`: context manager, the app in a uvicorn thread of this process (its
  `app.state` is inspectable from the test); waits for /health (and /ready unless `wait_ready=False`).
- `run_server_process(settings_env)`: the real `python -m app.cli serve` in a subprocess (for signals).
- `make_settings(tmp_path, **overrides)`: Settings for tests (espeak engine, quiet logs, temp voices dir).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
from starlette.applications import Starlette

from app.engine.base import Engine
from app.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"engine": "espeak", "log_level": "warning", "voices_dir": str(tmp_path / "voices")}
    values.update(overrides)
    return Settings(**values)



@dataclass
class RunningServer:
    settings: Settings
    app: Starlette | None = None  # None for a subprocess server
    process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.settings.port}/v1/stream"

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(self.base_url + path, timeout=10, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.post(self.base_url + path, timeout=10, **kwargs)


def wait_until_up(server: RunningServer, wait_ready: bool, alive: Callable[[], bool]) -> None:
    path = "/ready" if wait_ready else "/health"
    headers = {"X-API-Key": server.settings.api_key} if server.settings.api_key else {}
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError("server exited during start-up")
        try:
            if server.get(path, headers=headers).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"server did not answer {path} within {START_TIMEOUT_S} s")


def listening_socket(port: int, send_buffer_bytes: int) -> socket.socket:
    """A listener whose accepted connections inherit a small kernel send buffer, so a client that stops
    reading backs up into the server's own queue within a second rather than after megabytes."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer_bytes)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    return sock


@contextlib.contextmanager
def run_server(settings: Settings, engine: Engine | None = None, wait_ready: bool = True,
               send_buffer_bytes: int | None = None) -> Iterator[RunningServer]:
    """`send_buffer_bytes` shrinks the kernel send buffer of accepted connections (see `listening_socket`)."""
    from app.server.app import DrainingServer, create_app, uvicorn_config

    settings = settings.replace(host="127.0.0.1", port=free_port())
    app = create_app(settings, engine=engine)
    server = DrainingServer(uvicorn_config(app, settings), drain=lambda: app.state.runtime.drain(
        settings.drain_timeout_s))
    sockets = None if send_buffer_bytes is None else [listening_socket(settings.port, send_buffer_bytes)]
    thread = threading.Thread(target=server.run, kwargs={"sockets": sockets}, name=f"uvicorn-{settings.port}",
                              daemon=True)
    thread.start()
    running = RunningServer(settings, app=app)
    try:
        wait_until_up(running, wait_ready, thread.is_alive)
        yield running
    finally:
        server.should_exit = True
        thread.join(15)
        for sock in sockets or []:
            sock.close()


@contextlib.contextmanager
def run_server_process(settings: Settings, wait_ready: bool = True) -> Iterator[RunningServer]:
    """`python -m app.cli serve` configured through CBR_* environment variables; killed if still running."""
    from app.settings import env_name

    settings = settings.replace(host="127.0.0.1", port=free_port())
    env = dict(os.environ)
    for name, value in settings.__dict__.items():
        env[env_name(name)] = str(value)
    process = subprocess.Popen([sys.executable, "-m", "app.cli", "serve"], cwd=REPO_ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    running = RunningServer(settings, process=process)
    try:
        wait_until_up(running, wait_ready, lambda: process.poll() is None)
        yield running
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)
        if process.stdout is not None:
            process.stdout.close()
