"""Fixtures: the parsed deployment files, the real app's route table, and a real server to probe
(tests/harness.py)."""

from __future__ import annotations

from typing import Any, Iterator

import pytest
import yaml

from app.settings import Settings

from deploy_files import COMPOSE, DOCKERFILE, Dockerfile, Manifests, load_manifests, parse_dockerfile
from harness import RunningServer, make_settings, run_server

API_KEY = "deploy-test-key"


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


@pytest.fixture(scope="session")
def keyed_server(tmp_path_factory) -> Iterator[RunningServer]:
    """The real app (espeak engine) under uvicorn on a free loopback port, with an API key set, warmed up."""
    with run_server(make_settings(tmp_path_factory.mktemp("server"), api_key=API_KEY)) as server:
        yield server
