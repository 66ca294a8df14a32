"""Real uvicorn servers on 127.0.0.1 with a free port, for any test file (`import harness`).

- `run_server(settings, engine=None)`: context manager, the app in a uvicorn thread of this process (its
  `app.state` is inspectable from the test); waits for /health (and /ready unless `wait_ready=False`); with
  the settings' `ssl_certfile`/`ssl_keyfile` (`self_signed_certificate(folder)` makes a pair) it serves https/wss.
- `module_server(engine=None, **overrides)`: a module-scoped fixture of one such server for a test module.
- `run_server_process(settings, output=None)`: the real `python -m app.cli serve` in a subprocess (for signals;
  its stdout and stderr go to the file `output` when given).
- `make_settings(tmp_path, **overrides)`: Settings for tests (espeak engine, quiet logs, temp voices dir).
- `metric_samples(server)`: /metrics parsed; `wait_until(condition)` / `wait_until_async`: poll with a
  time limit; `Deadline`: the time left of one limit, for loops that read with timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette

from app.engine.base import Engine
from app.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]
# Warm-up includes librosa's first numba compile, which on a fresh install (no numba cache yet) on a busy 2-core
# machine took over 60 s; later servers in the same run start in seconds.
START_TIMEOUT_S = 240.0
POLL_S = 0.02


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"engine": "espeak", "log_level": "warning", "voices_dir": str(tmp_path / "voices")}
    values.update(overrides)
    return Settings(**values)


class Deadline:
    """One time limit shared by several waits."""

    def __init__(self, timeout: float):
        self.at = time.monotonic() + timeout

    @property
    def passed(self) -> bool:
        return time.monotonic() >= self.at

    def left(self) -> float:
        """Seconds left, at least a sliver, so a last read still gets its chance."""
        return max(0.01, self.at - time.monotonic())


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = Deadline(timeout)
    while not condition():
        assert not deadline.passed, "condition not reached in time"
        time.sleep(POLL_S)


async def wait_until_async(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = Deadline(timeout)
    while not condition():
        assert not deadline.passed, "condition not reached in time"
        await asyncio.sleep(POLL_S)


@dataclass
class RunningServer:
    settings: Settings
    app: Starlette | None = None  # None for a subprocess server
    process: subprocess.Popen | None = None
    uvicorn: uvicorn.Server | None = None  # its `server_state.connections` are the open connections

    def open_connections(self) -> int:
        assert self.uvicorn is not None, "only an in-process server can be inspected"
        return len(self.uvicorn.server_state.connections)

    @property
    def tls_cert(self) -> Path | None:
        """The certificate it serves TLS with (tests trust it as their only CA), if any."""
        return Path(self.settings.ssl_certfile) if self.settings.ssl_certfile else None

    @property
    def base_url(self) -> str:
        return f"{'https' if self.tls_cert else 'http'}://127.0.0.1:{self.settings.port}"

    @property
    def ws_url(self) -> str:
        return f"{'wss' if self.tls_cert else 'ws'}://127.0.0.1:{self.settings.port}/v1/stream"

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(self.base_url + path, timeout=10, verify=self._verify(), **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.post(self.base_url + path, timeout=10, verify=self._verify(), **kwargs)

    def _verify(self) -> ssl.SSLContext | bool:
        return True if self.tls_cert is None else ssl.create_default_context(cafile=str(self.tls_cert))


def metric_samples(server: RunningServer) -> dict[str, float]:
    """Every sample of /metrics by name (labels appended as `name{k=v}`), through the Prometheus parser."""
    samples = {}
    for family in text_string_to_metric_families(server.get("/metrics").text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def wait_until_up(server: RunningServer, wait_ready: bool, alive: Callable[[], bool]) -> None:
    path = "/ready" if wait_ready else "/health"
    headers = {"X-API-Key": server.settings.api_key} if server.settings.api_key else {}
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError("server exited during start-up")
        with contextlib.suppress(httpx.TransportError):
            if server.get(path, headers=headers).status_code == 200:
                return
        time.sleep(0.05)
    raise TimeoutError(f"server did not answer {path} within {START_TIMEOUT_S} s")


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A certificate and key for 127.0.0.1 (openssl makes them), for servers with `ssl_certfile`/`ssl_keyfile`."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


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
    config = uvicorn_config(app, settings)
    server = DrainingServer(config, drain=lambda: app.state.runtime.drain(settings.drain_timeout_s))
    sockets = None if send_buffer_bytes is None else [listening_socket(settings.port, send_buffer_bytes)]
    thread = threading.Thread(target=server.run, kwargs={"sockets": sockets}, name=f"uvicorn-{settings.port}",
                              daemon=True)
    thread.start()
    running = RunningServer(settings, app=app, uvicorn=server)
    try:
        wait_until_up(running, wait_ready, thread.is_alive)
        yield running
    finally:
        server.should_exit = True
        thread.join(15)
        for sock in sockets or []:
            sock.close()


def module_server(engine: Callable[[], Engine] | None = None, **overrides: Any) -> Any:
    """A module-scoped fixture: one server (espeak, or the engine `engine()` builds) with these settings,
    shared by the tests of the module that assigns it (`server = module_server()`)."""
    @pytest.fixture(scope="module")
    def fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
        settings = make_settings(tmp_path_factory.mktemp("server"), **overrides)
        with run_server(settings, engine=None if engine is None else engine()) as running:
            yield running

    return fixture


@contextlib.contextmanager
def run_server_process(settings: Settings, wait_ready: bool = True, output: Path | None = None
                       ) -> Iterator[RunningServer]:
    """`python -m app.cli serve` configured through CBR_* environment variables; killed if still running.
    Its output is a pipe nobody reads unless `output` names a file to write it to (logs that fill a pipe stall)."""
    from app.settings import env_name

    settings = settings.replace(host="127.0.0.1", port=free_port())
    env = dict(os.environ)
    for name, value in settings.__dict__.items():
        env[env_name(name)] = str(value)
    with contextlib.ExitStack() as files:
        sink = subprocess.PIPE if output is None else files.enter_context(output.open("wb"))
        process = subprocess.Popen([sys.executable, "-m", "app.cli", "serve"], cwd=REPO_ROOT, env=env,
                                   stdout=sink, stderr=subprocess.STDOUT)
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
