"""Voice-agent frameworks (Pipecat, LiveKit Agents) driving the real server. They live in their own virtualenv,
.venv-frameworks (`scripts/bootstrap.sh test` makes it: Pipecat pins soundfile and soxr below our lock), so each
test runs a driver script there as a subprocess against a server of this process, and reads its JSON result."""

from __future__ import annotations

import pytest

from drivers import API_KEY, FRAMEWORKS_PYTHON
from harness import module_server


@pytest.fixture(scope="module", autouse=True)
def frameworks_installed() -> None:
    if not FRAMEWORKS_PYTHON.exists():
        pytest.skip("no .venv-frameworks: run scripts/bootstrap.sh test")


server = module_server(api_key=API_KEY)  # the frameworks send it their own way (xi-api-key, Bearer)
