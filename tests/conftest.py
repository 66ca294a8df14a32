"""Shared fixtures. Helpers for starting real servers live in tests/harness.py (`import harness`)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from app.engine.base import Engine
from harness import RunningServer, make_settings, run_server


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., RunningServer]]:
    """`server_factory(engine=None, wait_ready=True, send_buffer_bytes=None, **setting_overrides)` starts a
    server (see `harness.run_server`)."""
    with contextlib.ExitStack() as stack:
        def start(engine: Engine | None = None, wait_ready: bool = True, send_buffer_bytes: int | None = None,
                  **overrides: Any) -> RunningServer:
            return stack.enter_context(run_server(make_settings(tmp_path, **overrides), engine, wait_ready,
                                                  send_buffer_bytes))

        yield start
