"""The scripts the images run (cbr-healthcheck, cbr-cpu-entrypoint) against a real server and a fake CLI, and
the build context that .dockerignore leaves for the Dockerfile."""

from __future__ import annotations

import ast
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from deploy_files import DEPLOY, DOCKERIGNORE, REPO, Dockerfile, copy_sources, dockerignore_excludes

HEALTHCHECK = DEPLOY / "healthcheck.py"
CPU_ENTRYPOINT = DEPLOY / "cpu-entrypoint.sh"


def _env_without_cbr(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CBR_")}
    return {**env, **extra}


def _healthcheck(port: int, path: str, api_key: str = "") -> int:
    env = _env_without_cbr(CBR_PORT=str(port), CBR_API_KEY=api_key, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, str(HEALTHCHECK), path], env=env, timeout=30).returncode


# --- cbr-healthcheck ------------------------------------------------------------------------------------

def test_healthcheck_passes_on_health_without_a_key(keyed_server):
    assert _healthcheck(keyed_server.settings.port, "/health") == 0


def test_healthcheck_presents_the_api_key(keyed_server):
    assert _healthcheck(keyed_server.settings.port, "/optimization-status", keyed_server.settings.api_key) == 0
    assert _healthcheck(keyed_server.settings.port, "/optimization-status", "wrong-key") == 1


def test_healthcheck_passes_on_ready_once_warm(keyed_server):
    assert _healthcheck(keyed_server.settings.port, "/ready", keyed_server.settings.api_key) == 0


def test_healthcheck_fails_on_an_unknown_path(keyed_server):
    assert _healthcheck(keyed_server.settings.port, "/no-such-route", keyed_server.settings.api_key) == 1


def test_healthcheck_fails_when_nothing_listens():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]
    assert _healthcheck(free_port, "/health") == 1


# --- cbr-cpu-entrypoint ---------------------------------------------------------------------------------

@pytest.fixture
def fake_cli(tmp_path: Path) -> Path:
    """A `chatterbox-realtime` on PATH that prints the engine it was given and its arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    cli = bin_dir / "chatterbox-realtime"
    cli.write_text('#!/bin/sh\necho "engine=$CBR_ENGINE args=$*"\n')
    cli.chmod(0o755)
    return bin_dir


def _entrypoint(bin_dir: Path, checkpoint: Path, **env: str) -> str:
    run_env = _env_without_cbr(PATH=f"{bin_dir}:{os.environ['PATH']}", CBR_CHECKPOINT=str(checkpoint), **env)
    result = subprocess.run(["sh", str(CPU_ENTRYPOINT), "--port", "9000"], env=run_env, capture_output=True,
                            text=True, timeout=10, check=True)
    return result.stdout.strip()


def _probed_checkpoint_file() -> str:
    return re.search(r'/([\w.]+)"', CPU_ENTRYPOINT.read_text().split("if [ -f", 1)[1]).group(1)


def test_entrypoint_serves_espeak_without_a_checkpoint(fake_cli, tmp_path):
    (tmp_path / "empty").mkdir()
    assert _entrypoint(fake_cli, tmp_path / "empty") == "engine=espeak args=serve --port 9000"
    assert _entrypoint(fake_cli, tmp_path / "missing") == "engine=espeak args=serve --port 9000"


def test_entrypoint_serves_chatterbox_when_a_checkpoint_is_mounted(fake_cli, tmp_path):
    (tmp_path / _probed_checkpoint_file()).write_bytes(b"")
    assert _entrypoint(fake_cli, tmp_path) == "engine=chatterbox args=serve --port 9000"


def test_entrypoint_keeps_an_explicit_engine(fake_cli, tmp_path):
    (tmp_path / _probed_checkpoint_file()).write_bytes(b"")
    assert _entrypoint(fake_cli, tmp_path, CBR_ENGINE="espeak") == "engine=espeak args=serve --port 9000"


def test_entrypoint_probes_a_file_of_the_official_checkpoint_layout():
    # Read from the loader's source: importing it would import torch and the model code (many seconds).
    loader = ast.parse((REPO / "app" / "engine" / "chatterbox" / "loader.py").read_text())
    weight_files = next(ast.literal_eval(node.value) for node in ast.walk(loader) if isinstance(node, ast.Assign)
                        and any(getattr(t, "id", None) == "WEIGHT_FILES" for t in node.targets))
    assert _probed_checkpoint_file() in weight_files


# --- build context --------------------------------------------------------------------------------------

def _tracked_files(path: str) -> list[str]:
    listed = subprocess.run(["git", "ls-files", "--", path], cwd=REPO, capture_output=True, text=True, timeout=30,
                            check=True).stdout.split()
    return listed or [path]


def test_dockerignore_keeps_every_copied_file_in_the_build_context(dockerfile: Dockerfile):
    patterns = DOCKERIGNORE.read_text()
    for source in sorted(copy_sources(dockerfile)):
        assert (REPO / source).exists(), f"COPY {source}: not in the repository"
        left_out = [f for f in _tracked_files(source) if dockerignore_excludes(patterns, f)]
        assert not left_out, f"COPY {source}: .dockerignore leaves out {left_out}"


@pytest.mark.parametrize("path", [".venv/bin/python", ".git/HEAD", "var/voices/a.wav", "checkpoints/x",
                                  "app/__pycache__/settings.cpython-311.pyc", "tests/deploy/conftest.py"])
def test_dockerignore_leaves_out_local_state(path: str):
    assert dockerignore_excludes(DOCKERIGNORE.read_text(), path)
