"""Fixtures: the parsed deployment files, the real app's route table, and a real server to probe."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Iterator

import pytest
import uvicorn
import yaml

from app.settings import Settings

from deploy_files import COMPOSE, DOCKERFILE, Dockerfile, Manifests, load_manifests, parse_dockerfile

API_KEY = "deploy-test-key"
SERVER_START_TIMEOUT_S = 30.0


@pytest.fixture(scope="session")
def manifests() -> Manifests:
    return load_manifests()


@pytest.fixture(scope="session")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="session")
def dockerfile() -> Dockerfile:
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="session")
def served_paths() -> set[str]:
    """Every path in the real app's route table."""
    from app.server.app import create_app

    return {route.path for route in create_app(Settings(engine="espeak")).routes}


@dataclass(frozen=True)
class RunningServer:
    port: int
    api_key: str

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture(scope="session")
def keyed_server(tmp_path_factory) -> Iterator[RunningServer]:
    """The real app (espeak engine) under uvicorn on a free loopback port, with an API key set."""
    from app.server.app import create_app, uvicorn_config

    settings = Settings(engine="espeak", port=0, api_key=API_KEY,
                        voices_dir=str(tmp_path_factory.mktemp("voices")))
    server = uvicorn.Server(uvicorn_config(create_app(settings), settings))
    thread = threading.Thread(target=server.run, name="deploy-test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield RunningServer(port=port, api_key=API_KEY)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
